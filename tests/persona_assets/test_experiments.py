"""Experiments: the file schema and its errors, one copy of every model-dependent asset per experiment, runs
of one experiment that leave another's rows and materializations alone, staleness from the file's content."""

from pathlib import Path

import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance, load_assets_from_modules, materialize

from persona_platform.partitions import COUNTRIES
from persona_platform.persona_assets.elicitation import assets as elicitation
from persona_platform.persona_assets.elicitation.assets import IcmConfig
from persona_platform.persona_assets.experiments import ExperimentError, load_experiments, read_experiment
from persona_platform.persona_assets.opinions import assets as opinions
from persona_platform.resources.llm.resource import LLMResource
from persona_platform.resources.settings import DATA_DIR
from persona_platform.resources.warehouse import Warehouse
from tests.conftest import EXPERIMENTS, local_resources, persona

ZERO_SHOT = ("elicitation", "zero_shot_base_predictions")


def experiment_file(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def test_the_repository_ships_two_experiments_on_two_local_models():
    shipped = {x.name: x for x in load_experiments(EXPERIMENTS)}
    assert set(shipped) == {"primary", "tiny_b"}
    assert shipped["primary"].models == {}  # the deployment's models
    assert shipped["tiny_b"].models["generator"].model == "transformers:tiny-b"
    assert shipped["tiny_b"].models["judge"].model == "transformers:tiny"  # one judge for both


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("Bad-Name", "description: x\n", "the file name 'Bad-Name' is the experiment's name"),
        ("two__parts", "description: x\n", "the file name 'two__parts'"),
        ("agents", "description: x\n", "the file name 'agents' is a group of the shared assets"),
        ("broken", "description: [x\n", "broken.yaml: line 2 not YAML"),
        ("listed", "- a\n- b\n", "listed.yaml: expected a mapping"),
        ("nodesc", "models: {}\n", "nodesc.yaml: description: Field required"),
        ("extra", "description: x\nmodel: tiny\n", "extra.yaml: model: Extra inputs are not permitted"),
        ("role", "description: x\nmodels:\n  critic: tiny\n", "role.yaml: models.critic: not a role"),
        (
            "backend",
            "description: x\nmodels:\n  generator: gpt:4\n",
            "backend.yaml: models.generator.model: 'gpt:4': unknown backend",
        ),
        (
            "engine",
            "description: x\nmodels:\n  generator:\n    model: tiny\n    engine: {tensor_parallel: 2}\n",
            "engine.yaml: models.generator.engine.tensor_parallel: not an engine setting",
        ),
        (
            "enginetype",
            "description: x\nmodels:\n  generator:\n    model: vllm:m\n"
            "    engine: {tensor_parallel_size: many}\n",
            "enginetype.yaml: models.generator.engine.tensor_parallel_size: Input should be a valid integer",
        ),
    ],
)
def test_a_bad_experiment_file_is_refused_naming_the_file_and_the_field(tmp_path, name, text, message):
    path = experiment_file(tmp_path, name, text)
    with pytest.raises(ExperimentError) as raised:
        read_experiment(path)
    assert str(path) in str(raised.value) and message in str(raised.value)


def test_a_profile_sets_a_steps_defaults_and_a_wrong_one_names_its_field(tmp_path):
    good = read_experiment(
        experiment_file(tmp_path, "small", "description: x\nprofile:\n  icm_search: {iterations: 60}\n")
    )
    configured = good.configured(IcmConfig, "icm_search")
    assert configured().iterations == 60 and configured().alpha == IcmConfig().alpha
    assert configured(iterations=5).iterations == 5  # a run's own config still wins
    good.check_profile()

    unknown = read_experiment(
        experiment_file(tmp_path, "u", "description: x\nprofile:\n  icm_search: {k: 1}\n")
    )
    with pytest.raises(ExperimentError, match=r"u.yaml: profile.icm_search.k: not a setting of icm_search"):
        unknown.configured(IcmConfig, "icm_search")
    wrong = read_experiment(
        experiment_file(tmp_path, "w", "description: x\nprofile:\n  icm_search: {iterations: lots}\n")
    )
    with pytest.raises(ExperimentError, match=r"w.yaml: profile.icm_search.iterations: Input should be"):
        wrong.configured(IcmConfig, "icm_search")
    typo = read_experiment(experiment_file(tmp_path, "t", "description: x\nprofile:\n  icm_serch: {}\n"))
    typo.configured(IcmConfig, "icm_search")
    with pytest.raises(ExperimentError, match=r"t.yaml: profile.icm_serch: no step of that name"):
        typo.check_profile()


def test_an_experiment_that_names_a_model_gets_it_and_otherwise_the_deployments(tmp_llm_resource, tmp_path):
    own = read_experiment(
        experiment_file(
            tmp_path,
            "big",
            "description: x\nmodels:\n  generator:\n    model: vllm:org/m\n    engine: {max_loras: 3}\n",
        )
    )
    generator = own.role("generator", tmp_llm_resource)
    assert (generator.backend, generator.model, generator.max_loras) == ("vllm", "org/m", 3)
    assert generator.models_dir == tmp_llm_resource.models_dir  # paths stay the deployment's
    assert own.role("judge", tmp_llm_resource) is tmp_llm_resource


@pytest.fixture
def tmp_llm_resource(models_dir):
    return LLMResource(models_dir=str(models_dir), corpus_dir=str(DATA_DIR), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def two_experiments(tmp_path_factory):
    """Two experiments on the embedded model (one engine for both) and the assets they build."""
    folder = tmp_path_factory.mktemp("experiments")
    for name in ("alpha", "beta"):
        experiment_file(folder, name, f"description: the {name} experiment\n")
    return folder


def elicitation_graph(folder: Path) -> list:
    xs = load_experiments(folder)
    return [*load_assets_from_modules([opinions]), *(a for x in xs for a in elicitation.experiment_assets(x))]


def test_two_experiments_on_one_country_are_both_complete_and_a_rerun_of_one_leaves_the_other(
    two_experiments, tmp_path, models_dir
):
    llm = LLMResource(models_dir=str(models_dir), corpus_dir=str(DATA_DIR), device="cpu", dtype="float32")
    resources = local_resources(tmp_path, llm)
    instance = DagsterInstance.ephemeral()
    graph = elicitation_graph(two_experiments)
    country = COUNTRIES[0]
    materialize(
        graph, resources=resources, instance=instance, selection=[AssetKey(["opinions", "goqa_questions"])]
    )
    both = 'group:opinions and not key:"opinions/goqa_questions" or key:"*/elicitation/zero_shot_base_*"'
    first = materialize(graph, resources=resources, instance=instance, selection=both, partition_key=country)
    assert first.success
    warehouse = Warehouse(tmp_path / "w.duckdb")
    alpha = warehouse.read("alpha__elicitation", "zero_shot_base_predictions")
    beta = warehouse.read("beta__elicitation", "zero_shot_base_predictions")
    assert alpha.height == beta.height > 0 and set(alpha["country"]) == set(beta["country"]) == {country}
    assert alpha.drop("run_id", "code_version").equals(beta.drop("run_id", "code_version"))  # one model
    beta_events = instance.fetch_materializations(AssetKey(["beta", *ZERO_SHOT]), limit=10).records

    again = materialize(
        graph,
        resources=resources,
        instance=instance,
        selection='key:"alpha/elicitation/zero_shot_base_predictions"',
        partition_key=country,
    )
    assert again.success and again.run_id != first.run_id
    assert set(warehouse.read("alpha__elicitation", "zero_shot_base_predictions")["run_id"]) == {again.run_id}
    untouched = warehouse.read("beta__elicitation", "zero_shot_base_predictions")
    assert untouched.sort("row_id").equals(beta.sort("row_id")) and set(untouched["run_id"]) == {first.run_id}
    assert [
        e.run_id for e in instance.fetch_materializations(AssetKey(["beta", *ZERO_SHOT]), limit=10).records
    ] == [e.run_id for e in beta_events]


def test_editing_an_experiment_file_marks_its_assets_stale_and_no_others(tmp_path, tiny_llm):
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    folder = tmp_path / "experiments"
    for name in ("alpha", "beta"):
        experiment_file(folder, name, f"description: the {name} experiment\n")
    graph = elicitation_graph(folder)
    instance = DagsterInstance.ephemeral()
    resources = local_resources(tmp_path, tiny_llm)
    questions = [AssetKey(["opinions", "goqa_questions"])]
    assert materialize(graph, resources=resources, instance=instance, selection=questions).success
    selection = 'group:opinions and not key:"opinions/goqa_questions" or key:"*/elicitation/zero_shot_*"'
    country = COUNTRIES[0]
    assert materialize(
        graph, resources=resources, instance=instance, selection=selection, partition_key=country
    )

    def status(assets, experiment: str) -> StaleStatus:
        key = AssetKey([experiment, *ZERO_SHOT])
        return get_stale_status_resolver(instance, assets).get_status(key, country)

    assert (status(graph, "alpha"), status(graph, "beta")) == (StaleStatus.FRESH, StaleStatus.FRESH)
    experiment_file(
        folder, "alpha", "description: alpha, more ICM iterations\nprofile:\n  icm_search: {iterations: 9}\n"
    )
    edited = elicitation_graph(folder)
    assert (status(edited, "alpha"), status(edited, "beta")) == (StaleStatus.STALE, StaleStatus.FRESH)


def test_qualified_input_ids_point_at_the_experiments_own_tables(two_experiments, tmp_path, models_dir):
    from persona_platform.persona_assets.steps import qualified_refs

    frame = pl.DataFrame({"input_ids": [["elicitation.icm_labels:binary/c1", "opinions.goqa_splits:x"]]})
    out = qualified_refs(frame, "beta", frozenset({"elicitation.icm_labels"}))
    assert out["input_ids"].to_list() == [
        ["beta__elicitation.icm_labels:binary/c1", "opinions.goqa_splits:x"]
    ]


def test_persona_run_refuses_an_unknown_experiment_and_an_experiments_missing_model(tmp_path):
    folder = tmp_path / "experiments"
    experiment_file(folder, "primary", "description: the deployment's models\n")
    experiment_file(folder, "local_dir", "description: x\nmodels:\n  judge: transformers:/no/such/model\n")
    env = {"PERSONA_EXPERIMENTS": str(folder)}
    unknown = persona(tmp_path / "home", "run", "--experiment", "nosuch", extra_env=env)
    assert (unknown.returncode, unknown.stdout) == (2, "")
    known = "unknown experiment nosuch; known: local_dir, primary"
    assert unknown.stderr == f"persona: {folder}, field 'experiment': {known}\n"
    missing = persona(tmp_path / "home", "run", "--experiment", "local_dir", extra_env=env)
    assert missing.returncode == 2
    model = "models.judge: transformers:/no/such/model"
    assert missing.stderr == f"persona: {folder / 'local_dir.yaml'}: {model}: no such directory\n"
    assert not (tmp_path / "home").exists()  # refused before anything is created
    fine = persona(
        tmp_path / "home", "run", "--experiment", "primary", "--select", "group:opinions", extra_env=env
    )
    assert fine.returncode == 0, fine.stderr[-2000:]
