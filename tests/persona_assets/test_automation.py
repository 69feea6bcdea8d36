import json
import shutil

import pytest
from dagster import (
    DagsterInstance,
    PartitionKeyRange,
    build_schedule_context,
    build_sensor_context,
)

from persona_platform.partitions import AGENTS, COUNTRIES, agent_country_partitions
from persona_platform.persona_assets.automation import (
    AGENT_COUNTRY_JOB,
    COUNTRY_JOB,
    input_sensors,
)
from persona_platform.persona_assets.definitions import PARTITION_JOBS, defs
from persona_platform.persona_assets.opinions.checks import (
    groups_without_one_positive,
    questions_in_train_and_test,
)
from persona_platform.persona_assets.runner import RANGE_END, RANGE_START
from persona_platform.resources.settings import SAMPLE_BOARD_DIR, SAMPLE_GOQA_SOURCE


def covered(run_request) -> set[tuple[str, str]]:
    """(asset, partition) pairs one run request materializes."""
    job = defs.resolve_job_def(run_request.job_name)
    keys = [k.to_user_string() for k in job.asset_layer.executable_asset_keys]
    if run_request.partition_key:
        partitions = [run_request.partition_key]
    else:
        span = PartitionKeyRange(run_request.tags[RANGE_START], run_request.tags[RANGE_END])
        partitions = agent_country_partitions.get_partition_keys_in_range(span)
    return {(k, str(p)) for k in keys for p in partitions}


def test_a_country_schedule_backfills_exactly_that_country():
    country = COUNTRIES[1]
    requests = []
    for schedule in defs.schedules:
        if schedule.name.startswith(f"{country.lower()}_"):
            with DagsterInstance.ephemeral() as instance:
                data = schedule.evaluate_tick(
                    build_schedule_context(instance=instance, repository_def=defs.get_repository_def())
                )
            requests += data.run_requests
    assert sorted(r.job_name for r in requests) == sorted([AGENT_COUNTRY_JOB, COUNTRY_JOB])
    pairs = set().union(*(covered(r) for r in requests))
    country_assets = {
        k.to_user_string() for k in defs.resolve_job_def(COUNTRY_JOB).asset_layer.executable_asset_keys
    }
    multi_assets = {
        k.to_user_string() for k in defs.resolve_job_def(AGENT_COUNTRY_JOB).asset_layer.executable_asset_keys
    }
    expected = {(k, country) for k in country_assets} | {
        (k, f"{a.key}|{country}") for k in multi_assets for a in AGENTS
    }
    assert pairs == expected
    assert "opinions/goqa_survey" in country_assets and "primary/alignment/agent_opinions" in multi_assets


def test_every_country_has_its_schedules():
    names = {s.name for s in defs.schedules}
    assert len(names) == 2 * len(COUNTRIES)


def evaluate(sensor, cursor):
    data = sensor.evaluate_tick(build_sensor_context(cursor=cursor, repository_def=defs.get_repository_def()))
    return data.run_requests, data.skip_message, data.cursor


def test_the_survey_sensor_asks_only_for_changed_countries(tmp_path):
    source = tmp_path / "survey.csv"
    shutil.copy(SAMPLE_GOQA_SOURCE, source)
    goqa_sensor, _ = input_sensors(str(source), str(SAMPLE_BOARD_DIR), PARTITION_JOBS)
    requests, _, cursor = evaluate(goqa_sensor, None)
    assert {r.tags["persona/country"] for r in requests} == set(COUNTRIES)
    requests, skipped, cursor = evaluate(goqa_sensor, cursor)
    assert requests == [] and "unchanged" in skipped
    text = source.read_text().replace("'Caldera': [0.5897, 0.4103]", "'Caldera': [0.4103, 0.5897]")
    assert text != source.read_text()
    source.write_text(text)
    requests, _, _ = evaluate(goqa_sensor, cursor)
    assert {r.tags["persona/country"] for r in requests} == {"Caldera"}
    assert sorted(r.job_name for r in requests) == sorted([COUNTRY_JOB, AGENT_COUNTRY_JOB])


def test_the_board_sensor_asks_for_the_agents_of_a_changed_meeting(tmp_path):
    board = tmp_path / "board"
    shutil.copytree(SAMPLE_BOARD_DIR, board)
    _, board_sensor = input_sensors(str(SAMPLE_GOQA_SOURCE), str(board), PARTITION_JOBS)
    requests, _, cursor = evaluate(board_sensor, None)
    assert requests
    assert evaluate(board_sensor, cursor)[0] == []
    meeting = sorted((board / "transcripts").glob("*.json"))[0]
    turns = json.loads(meeting.read_text())
    turns = [t for t in turns if t["speaker"] in ("Theodore Quist", "Public speaker")]
    meeting.write_text(json.dumps(turns))
    requests, _, _ = evaluate(board_sensor, cursor)
    assert [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in requests] == [
        ("theodorequist", "theodorequist")
    ]


def test_check_logic_finds_broken_groups_and_leaks():
    import polars as pl

    claims = pl.DataFrame(
        {"question_id": ["q1", "q1", "q2", "q2"], "country": ["X"] * 4, "label": [1, 1, 1, 0]}
    )
    assert groups_without_one_positive(claims)["question_id"].to_list() == ["q1"]
    splits = pl.DataFrame(
        {"variant": ["all"] * 3, "question_id": ["q1", "q1", "q2"], "split": ["train", "test", "train"]}
    )
    assert questions_in_train_and_test(splits)["question_id"].to_list() == ["q1"]


def test_key_tables_have_checks():
    checked = {k.asset_key.to_user_string() for k in defs.resolve_asset_graph().asset_check_keys}
    assert {
        "opinions/goqa_claims",
        "opinions/goqa_splits",
        "votes/vote_records",
        "primary/agents/perplexity_matrix",
    } <= checked


@pytest.mark.parametrize("cron", ["every monday", "0 3 * *"])
def test_a_bad_schedule_setting_is_refused(cron):
    from persona_platform.resources.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="PERSONA_SCHEDULE_CRON"):
        load_settings({"PERSONA_SCHEDULE_CRON": cron})
