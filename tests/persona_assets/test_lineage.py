"""Lineage from result rows back to source-file rows, and staleness when a prompt changes."""

import importlib

import duckdb
import pytest
from dagster import AssetKey, DagsterInstance, materialize

from persona_platform.persona_assets.lineage import lineage_graph, source_files
from tests.conftest import local_resources, persona

pytestmark = pytest.mark.slow


def reachable_files(home, table, row_id):
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        nodes = lineage_graph(con, table, row_id)
        files = source_files(con)
    refs = {i for node in nodes.values() for i in node.inputs if i.startswith("file:")}
    return nodes, {files[ref.split(":")[1]] for ref in refs}


def test_an_icm_accuracy_row_reaches_the_survey_file(sample_run):
    nodes, files = reachable_files(
        sample_run.home, "primary__elicitation.accuracy_summary", "aggregate/all/icm/-1"
    )
    assert any(f.endswith("sample_global_opinions.csv") for f in files)
    tables = {ref.split(":")[0] for ref in nodes}
    assert {
        "primary__elicitation.accuracy_summary",
        "primary__elicitation.few_shot_predictions",
        "primary__elicitation.icm_labels",
        "opinions.goqa_splits",
        "opinions.goqa_claims",
        "opinions.goqa_survey",
    } <= tables
    few_shot = next(
        n for ref, n in nodes.items() if ref.startswith("primary__elicitation.few_shot_predictions:")
    )
    assert few_shot.details["model"] == "tiny" and few_shot.details["prompt"] and few_shot.details["run"]


def test_a_comparison_row_reaches_each_experiments_rows_and_their_models(sample_run):
    with duckdb.connect(str(sample_run.home / "warehouse.duckdb"), read_only=True) as con:
        (row_id,) = con.execute(
            "select row_id from reports.experiment_comparison where measure = 'accuracy_difference' "
            "and scope = 'aggregate' and method = 'icm' and n > 0 limit 1"
        ).fetchone()
    nodes, files = reachable_files(sample_run.home, "reports.experiment_comparison", row_id)
    assert any(f.endswith("sample_global_opinions.csv") for f in files)
    models = {}
    for ref, node in nodes.items():
        table = ref.split(":")[0]
        if table.endswith("__elicitation.few_shot_predictions"):
            models.setdefault(table.split("__")[0], set()).add(node.details["model"])
    assert models == {"primary": {"tiny"}, "tiny_b": {"tiny-b"}}


def test_a_vote_prediction_row_reaches_vote_records_and_transcripts(sample_run):
    with duckdb.connect(str(sample_run.home / "warehouse.duckdb"), read_only=True) as con:
        (row_id,) = con.execute(
            "select row_id from primary__votes.vote_predictions where method = 'generate' limit 1"
        ).fetchone()
        edges = con.execute(
            "select count(*) from lineage.chain('primary__votes.vote_predictions', ?)", [row_id]
        ).fetchone()[0]
    assert edges > 10  # the same chain as a SQL table macro over the lineage.edges view
    nodes, files = reachable_files(sample_run.home, "primary__votes.vote_predictions", row_id)
    assert any(f.endswith("votes.csv") for f in files)
    assert any("/transcripts/" in f for f in files)  # through the adapter and its training conversations
    assert nodes[f"primary__votes.vote_predictions:{row_id}"].details["adapter"] == row_id.split("/")[-1]


def test_the_lineage_command_prints_the_chain(sample_run):
    result = persona(sample_run.home, "lineage", "primary__alignment.opinion_alignment", "base/Aldoria")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("primary__alignment.opinion_alignment:base/Aldoria")
    assert (
        "primary__alignment.base_opinions:" in result.stdout
        and "file " in result.stdout
        and "sha256" in result.stdout
    )
    missing = persona(sample_run.home, "lineage", "primary__votes.vote_predictions", "no-such-row")
    assert missing.returncode == 2 and "no row" in missing.stderr


def test_changing_a_prompt_template_marks_downstream_assets_stale(tmp_path, tiny_llm, monkeypatch):
    # Dagster's own test helper builds the resolver the UI uses to mark assets stale.
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from persona_platform.persona_assets.elicitation import assets as elicitation
    from persona_platform.persona_assets.elicitation import prompts
    from persona_platform.persona_assets.experiments import experiments
    from persona_platform.persona_assets.opinions import assets as opinions

    (primary,) = experiments()

    upstream = [opinions.goqa_questions, opinions.goqa_survey, opinions.goqa_claims, opinions.goqa_splits]
    target = AssetKey(["primary", "elicitation", "zero_shot_base_predictions"])
    instance = DagsterInstance.ephemeral()
    resources = local_resources(tmp_path, tiny_llm)
    graph = [*upstream, elicitation.zero_shot_base_predictions(primary)]
    assert materialize(
        graph, resources=resources, instance=instance, selection=[AssetKey(["opinions", "goqa_questions"])]
    ).success
    selection = [AssetKey(["opinions", k]) for k in ("goqa_survey", "goqa_claims", "goqa_splits")] + [target]
    assert materialize(
        graph, resources=resources, instance=instance, selection=selection, partition_key="Aldoria"
    ).success

    def status(assets):
        return get_stale_status_resolver(instance, assets).get_status(target, "Aldoria")

    assert status(graph) == StaleStatus.FRESH
    version = elicitation.ZERO_SHOT_VERSION
    monkeypatch.setattr(prompts, "ZERO_SHOT_TEMPLATE", prompts.ZERO_SHOT_TEMPLATE + " Answer truthfully:")
    monkeypatch.setattr(prompts, "ZERO_SHOT_HASH", prompts.text_hash(prompts.ZERO_SHOT_TEMPLATE))
    changed = importlib.reload(elicitation)
    try:
        assert changed.ZERO_SHOT_VERSION != version
        assert status([*upstream, changed.zero_shot_base_predictions(primary)]) == StaleStatus.STALE
    finally:
        monkeypatch.undo()
        importlib.reload(elicitation)


def test_every_table_row_carries_provenance_and_its_inputs_exist(sample_run):
    from persona_platform.persona_assets.provenance import PROVENANCE_SCHEMA

    with duckdb.connect(str(sample_run.home / "warehouse.duckdb"), read_only=True) as con:
        tables = [
            f"{s}.{t}"
            for s, t in con.execute(
                "select schema_name, table_name from duckdb_tables() where schema_name != 'lineage'"
            ).fetchall()
        ]
        assert len(tables) >= 30
        row_ids = {}
        for table in tables:
            columns = {c for (c,) in con.execute(f"select column_name from (describe {table})").fetchall()}
            assert {"row_id", *PROVENANCE_SCHEMA} <= columns, (
                f"{table} lacks {set(PROVENANCE_SCHEMA) - columns}"
            )
            ids = [r for (r,) in con.execute(f"select row_id from {table}").fetchall()]
            assert len(ids) == len(set(ids)) and None not in ids, f"{table}: row ids not unique"
            row_ids[table] = set(ids)
        for table in tables:
            for (ref,) in con.execute(f"select distinct unnest(input_ids) from {table}").fetchall():
                if ref.startswith("file:"):
                    continue
                source, _, row_id = ref.partition(":")
                assert row_id in row_ids.get(source, set()), f"{table} names {ref}, which does not exist"
