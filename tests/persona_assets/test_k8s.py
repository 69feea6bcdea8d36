"""The Kubernetes deployment, checked without a cluster: step job manifests built by dagster-k8s's own
job construction from the GPU assets' op tags and validated against the Kubernetes schemas
(kubernetes-validate, offline); the instance config against Dagster's own config types; the Helm values
against the official chart's values schemas (from ../shared); the k8s Definitions loaded by
`dagster definitions validate`. Not checked here: helm rendering, image builds, scheduling on a real
cluster (k8s/README.md)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import kubernetes
import kubernetes_validate
import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (
    USER_DEFINED_K8S_CONFIG_KEY,
    construct_dagster_k8s_job,
    get_k8s_job_name,
    get_user_defined_k8s_config,
)
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

from persona_platform.benchmarks.planning import synthetic_survey
from persona_platform.persona_assets.common import GPU_POOL, WAREHOUSE_POOL
from persona_platform.persona_assets.deployment import (
    DEFAULT_PROFILE,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    K8S_CONFIG_TAG,
    K8S_EXECUTOR_CONFIG,
    TRAINING_PROFILE,
    GpuProfile,
    quantity,
    step_pod_config,
)
from persona_platform.persona_assets.instance import (
    apply_pool_limits,
    cluster_concurrency,
    pool_limits,
    pool_limits_sensor,
)
from persona_platform.resources.settings import DEFAULT_GPU_IMAGE, SettingsError, load_deployment
from tests.conftest import SHARED

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
# Pinned on purpose: a manifest valid for one Kubernetes release can be invalid for another.
KUBERNETES_VERSION = "1.33.0"
# The official chart's values schemas (shared/k8s/README.md: from the dagster-io/dagster repository).
CHART_SCHEMAS = SHARED / "k8s" / "dagster-chart"
# Where the chart schemas point for Kubernetes types; no network here, so these resolve to
# kubernetes-validate's bundled definitions of KUBERNETES_VERSION (strict: unknown fields fail).
CHART_K8S_REF = "https://kubernetesjsonschema.dev/v1.18.0/_definitions.json"

# Loads the code location the way a pod with PERSONA_DEPLOYMENT=k8s would, and reports every op.
DUMP_OPS = """
import json
from persona_platform.persona_assets.definitions import defs
ops = {}
for assets_def in defs.resolve_asset_graph().assets_defs:
    if assets_def.is_executable:
        op = assets_def.node_def
        ops[op.name] = {"pool": op.pool, "tags": dict(op.tags)}
print(json.dumps({"executor": defs.executor.name if defs.executor else None, "ops": ops}))
"""


# A cluster of 16 GPUs plans a backfill of 130 countries: Dagster's own run requests for the backfill (as the
# asset backfill daemon builds them from the backfill policies), `persona run --parallel 16`'s plan, and the
# code location's ops and sensors.
PLAN_BACKFILL = """
import json
from dagster import AssetKey, AssetSelection, PartitionKeyRange
from dagster._core.definitions.automation_tick_evaluation_context import (
    build_run_requests_with_backfill_policies,
)
from dagster._core.definitions.events import AssetKeyPartitionKey
from persona_platform.persona_assets.definitions import defs
from persona_platform.persona_assets.runner import RANGE_END, RANGE_START, plan_runs
from persona_platform.resources.settings import load_deployment

graph = defs.resolve_asset_graph()
key = AssetKey(["primary", "elicitation", "zero_shot_base_predictions"])
pdef = graph.get(key).partitions_def
wanted = [AssetKeyPartitionKey(key, k) for k in pdef.get_partition_keys()]
requests = build_run_requests_with_backfill_policies(wanted, graph, None)
dagster_runs = [
    pdef.get_partition_keys_in_range(PartitionKeyRange(r.tags[RANGE_START], r.tags[RANGE_END]))
    for r in requests
]
fanned = plan_runs(defs, AssetSelection.assets(key), parallel=load_deployment().gpu_slots)
ours = [r for r in fanned if r.model]
policies = {}
for k in graph.get_all_asset_keys():
    node = graph.get(k)
    if node.is_materializable and node.partitions_def is not None:
        policies[k.to_user_string()] = [GPU_POOL in node.pools, node.backfill_policy.max_partitions_per_run]
ops = {}
for assets_def in graph.assets_defs:
    if assets_def.is_executable:
        op = assets_def.node_def
        ops[op.name] = {"pool": op.pool, "tags": dict(op.tags)}
print(json.dumps({
    "countries": len(pdef.get_partition_keys()),
    "dagster_runs": dagster_runs,
    "our_runs": [[r.key_range, r.partition_count] for r in ours],
    "policies": policies,
    "ops": ops,
    "sensors": sorted(s.name for s in defs.sensors),
}))
""".replace("GPU_POOL", repr(GPU_POOL))


def _env(tmp_path: Path, deployment: str, **settings: str) -> dict:
    # The tests' own experiments (one) stay, so the code location has the ops of the one in this process.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_") or k == "PERSONA_EXPERIMENTS"}
    return {**env, "PERSONA_DEPLOYMENT": deployment, "PERSONA_HOME": str(tmp_path / "home"), **settings}


def _dump_ops(tmp: Path, **settings: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", DUMP_OPS],
        cwd=ROOT,
        env=_env(tmp, "k8s", **settings),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def k8s_code_location(tmp_path_factory):
    return _dump_ops(tmp_path_factory.mktemp("k8s"))


# A model split over 4 GPUs (PERSONA_TENSOR_PARALLEL_SIZE=4): every GPU step pod is sized for it.
@pytest.fixture(scope="module")
def k8s_code_location_4_gpus(tmp_path_factory):
    return _dump_ops(tmp_path_factory.mktemp("k8s-4"), PERSONA_TENSOR_PARALLEL_SIZE="4")


@pytest.fixture(scope="module")
def local_code_location():
    # Imported in this process: the test session runs with the default (local) deployment.
    assert load_deployment().kind == "local", "run the tests without PERSONA_DEPLOYMENT set"
    from persona_platform.persona_assets.definitions import defs

    ops = {a.node_def.name: a.node_def for a in defs.resolve_asset_graph().assets_defs if a.is_executable}
    return defs, ops


def _load_yaml(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def _user_deployment() -> dict:
    (deployment,) = _load_yaml("values.yaml")["dagster-user-deployments"]["deployments"]
    return deployment


def _instance_run_launcher() -> dict:
    return _load_yaml("dagster.yaml")["run_launcher"]["config"]


def step_job_manifest(op_name: str, op_tags: dict) -> dict:
    """The step job `K8sStepHandler.launch_step` would create for this op: the run launcher's context
    (k8s/dagster.yaml), merged with what the code location passes to launched pods (its env, volumes and
    mounts from k8s/values.yaml), merged with the op tags; built by dagster-k8s and serialised as the API
    server receives it."""
    launcher = _instance_run_launcher()
    deployment = _user_deployment()
    context = (
        K8sContainerContext(
            image_pull_policy=launcher["image_pull_policy"],
            namespace=launcher["job_namespace"],
            service_account_name=launcher["service_account_name"],
        )
        .merge(
            K8sContainerContext(
                env=[{"name": k, "value": v} for k, v in deployment["env"].items()],
                volumes=deployment["volumes"],
                volume_mounts=deployment["volumeMounts"],
            )
        )
        .merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(op_tags)))
    )
    code_server_image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    job_config = context.get_k8s_job_config(
        code_server_image,
        SimpleNamespace(
            job_image=None,
            **{
                k: launcher.get(k)
                for k in ("dagster_home", "instance_config_map", "postgres_password_secret")
            },
        ),
    )
    run_id = "0f8b1c7e-2d7a-4c55-9a0e-4b1f0c2e9d11"
    job_name = f"dagster-step-{get_k8s_job_name(run_id, op_name)}"
    job = construct_dagster_k8s_job(
        job_config=job_config,
        args=["dagster", "api", "execute_step"],
        job_name=job_name,
        pod_name=job_name,
        component="step_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/op": op_name, "dagster/run-id": run_id},
        env_vars=[{"name": "DAGSTER_RUN_STEP_KEY", "value": op_name}],
    )
    return kubernetes.client.ApiClient().sanitize_for_serialization(job)


def _gpu_ops(ops: dict) -> dict:
    return {name: op for name, op in ops.items() if op["pool"] == GPU_POOL}


# --- settings and profiles (pure) -------------------------------------------------------------------


def test_deployment_setting_defaults_to_local_and_rejects_unknown_values():
    assert load_deployment({}).kind == "local"
    assert load_deployment({"PERSONA_DEPLOYMENT": "K8s "}).on_k8s
    assert load_deployment({}).gpu_image == DEFAULT_GPU_IMAGE
    with pytest.raises(SettingsError, match="PERSONA_DEPLOYMENT"):
        load_deployment({"PERSONA_DEPLOYMENT": "kubernetes"})
    with pytest.raises(SettingsError, match="PERSONA_K8S_GPU_IMAGE"):
        load_deployment({"PERSONA_DEPLOYMENT": "k8s", "PERSONA_K8S_GPU_IMAGE": "my image"})


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"gpus": 0}, "gpus"),
        ({"gpus": 1.5}, "gpus"),
        ({"memory": "64 GB"}, "memory"),
        ({"shm": "64Gi"}, "shm"),
        ({"gpu_type": "A100 80GB"}, "gpu_type"),
        ({"tolerations": ({"key": GPU_RESOURCE, "operator": "Has"},)}, "tolerations"),
        (
            {"tolerations": ({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoRun"},)},
            r"tolerations\[0\]\.effect",
        ),
        ({"node_selector": {GPU_PRODUCT_LABEL: "x"}}, "node_selector"),
    ],
)
def test_bad_profile_fields_are_named(fields, field):
    with pytest.raises(SettingsError, match=rf"GpuProfile 'bad'\.{field}"):
        GpuProfile(name="bad", **fields)


def test_a_profile_per_model_size():
    assert DEFAULT_PROFILE.sized(1) is DEFAULT_PROFILE
    four = DEFAULT_PROFILE.sized(4)
    assert (four.name, four.gpus, four.cpu, four.memory, four.shm) == (
        "default-4gpu",
        4,
        "32",
        "256Gi",
        "64Gi",
    )
    eight = TRAINING_PROFILE.sized(8)
    assert (eight.name, eight.gpus, eight.memory, eight.shm) == ("training-8gpu", 8, "1024Gi", "256Gi")
    assert quantity(eight.shm, "shm") / eight.gpus == quantity(
        TRAINING_PROFILE.shm, "shm"
    )  # /dev/shm per GPU
    assert (four.gpu_type, four.tolerations) == (DEFAULT_PROFILE.gpu_type, DEFAULT_PROFILE.tolerations)
    config = step_pod_config(four, "img:1")
    assert config["container_config"]["resources"]["limits"][GPU_RESOURCE] == "4"
    assert config["pod_spec_config"]["volumes"][0]["empty_dir"]["size_limit"] == "64Gi"


def test_quantities_follow_kubernetes_suffixes():
    assert quantity("64Gi", "x") == 64 * 2**30
    assert quantity("500m", "x") == 0.5
    assert quantity("2G", "x") == 2e9
    with pytest.raises(SettingsError, match="x:"):
        quantity("2GiB", "x")


def test_the_tag_is_the_one_dagster_k8s_reads_and_its_value_parses():
    assert K8S_CONFIG_TAG == USER_DEFINED_K8S_CONFIG_KEY
    config = get_user_defined_k8s_config(
        {K8S_CONFIG_TAG: json.dumps(step_pod_config(TRAINING_PROFILE, "img:1"))}
    )
    assert config.container_config["resources"]["limits"][GPU_RESOURCE] == str(TRAINING_PROFILE.gpus)
    assert config.pod_spec_config["node_selector"][GPU_PRODUCT_LABEL] == TRAINING_PROFILE.gpu_type


def test_executor_config_is_valid_for_k8s_job_executor():
    result = validate_config(k8s_job_executor.config_schema.config_type, K8S_EXECUTOR_CONFIG)
    assert result.success, result.errors


# --- the code location in both deployments -----------------------------------------------------------


def test_local_definitions_have_no_k8s_executor_or_op_tags(local_code_location):
    defs, ops = local_code_location
    assert defs.executor is None
    assert [op.name for op in ops.values() if op.pool == GPU_POOL], "no GPU assets found"
    assert not [name for name, op in ops.items() if K8S_CONFIG_TAG in op.tags]


def test_k8s_definitions_put_every_gpu_step_and_only_those_in_a_gpu_pod(
    k8s_code_location, local_code_location
):
    ops = k8s_code_location["ops"]
    assert k8s_code_location["executor"] == k8s_job_executor.name
    # The same ops are GPU steps in both deployments: the deployment changes where they run, not which.
    assert set(_gpu_ops(ops)) == {name for name, op in local_code_location[1].items() if op.pool == GPU_POOL}
    assert set(_gpu_ops(ops))
    assert {name for name, op in ops.items() if K8S_CONFIG_TAG in op["tags"]} == set(_gpu_ops(ops))
    # LoRA training asks for the training profile; the rest for the default one.
    for name, op in _gpu_ops(ops).items():
        profile = TRAINING_PROFILE if name.endswith("__lora_training") else DEFAULT_PROFILE
        assert json.loads(op["tags"][K8S_CONFIG_TAG]) == step_pod_config(profile, DEFAULT_GPU_IMAGE), name


def test_dagster_validates_the_k8s_code_location(tmp_path):
    dagster = Path(sys.executable).with_name("dagster")
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "persona_platform.persona_assets.definitions"],
        cwd=ROOT,
        env=_env(tmp_path, "k8s"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- step job manifests --------------------------------------------------------------------------------


def test_every_gpu_step_job_is_a_valid_kubernetes_job_with_its_gpu(k8s_code_location):
    gpu_ops = _gpu_ops(k8s_code_location["ops"])
    for name, op in gpu_ops.items():
        manifest = step_job_manifest(name, op["tags"])
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)

        pod = manifest["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert container["image"] == DEFAULT_GPU_IMAGE, name
        assert int(limits[GPU_RESOURCE]) >= 1 and requests[GPU_RESOURCE] == limits[GPU_RESOURCE], name
        assert GPU_PRODUCT_LABEL in pod["nodeSelector"], name
        assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"], name
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        shm = volumes[mounts["/dev/shm"]]["emptyDir"]
        assert shm["medium"] == "Memory", name
        assert quantity(shm["sizeLimit"], "shm") < quantity(limits["memory"], "memory"), name
        # The code location's shared volume and settings reach the GPU pod along with the op tags.
        assert volumes[mounts["/persona-home"]]["persistentVolumeClaim"]["claimName"] == "persona-home", name
        assert {"name": "PERSONA_DEPLOYMENT", "value": "k8s"} in container["env"], name
    training = step_job_manifest("primary__lora_training", gpu_ops["primary__lora_training"]["tags"])
    limits = training["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["memory"] == TRAINING_PROFILE.memory


def test_a_model_on_several_gpus_gets_pods_sized_for_it(k8s_code_location_4_gpus, k8s_code_location):
    gpu_ops = _gpu_ops(k8s_code_location_4_gpus["ops"])
    assert set(gpu_ops) == set(_gpu_ops(k8s_code_location["ops"]))
    for name, op in gpu_ops.items():
        profile = (TRAINING_PROFILE if name.endswith("__lora_training") else DEFAULT_PROFILE).sized(4)
        assert json.loads(op["tags"][K8S_CONFIG_TAG]) == step_pod_config(profile, DEFAULT_GPU_IMAGE), name
        manifest = step_job_manifest(name, op["tags"])
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        pod = manifest["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        limits = container["resources"]["limits"]
        assert limits[GPU_RESOURCE] == container["resources"]["requests"][GPU_RESOURCE] == "4", name
        assert limits["memory"] == profile.memory, name
        shm = {v["name"]: v for v in pod["volumes"]}["dshm"]["emptyDir"]
        assert shm == {"medium": "Memory", "sizeLimit": profile.shm}, name
        assert quantity(shm["sizeLimit"], "shm") < quantity(limits["memory"], "memory"), name
    training = step_job_manifest("primary__lora_training", gpu_ops["primary__lora_training"]["tags"])
    labels = training["spec"]["template"]["metadata"]["labels"]
    assert labels["persona-platform/gpu-profile"] == "training-4gpu"


def test_the_manifest_validator_rejects_a_broken_gpu_pod(k8s_code_location):
    name, op = next(iter(_gpu_ops(k8s_code_location["ops"]).items()))
    manifest = step_job_manifest(name, op["tags"])
    manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] = [GPU_RESOURCE, "1"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    manifest = step_job_manifest(name, op["tags"])
    manifest["spec"]["template"]["spec"]["nodeSelectr"] = {GPU_PRODUCT_LABEL: "x"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


# --- instance, Helm values, other manifests ------------------------------------------------------------


def test_instance_config_passes_dagsters_own_schemas(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "not-a-real-password")
    shutil.copy(K8S / "dagster.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    launcher = validate_config(K8sRunLauncher.config_type(), config["run_launcher"]["config"])
    assert launcher.success, launcher.errors


@pytest.fixture(scope="module")
def cluster_of_16_gpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("k8s-16")
    survey = tmp / "survey-130.csv"
    synthetic_survey(survey, 130)
    result = subprocess.run(
        [sys.executable, "-c", PLAN_BACKFILL],
        cwd=ROOT,
        env=_env(tmp, "k8s", PERSONA_GPUS="16", PERSONA_GOQA_SOURCE=str(survey)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_16_gpu_cluster_fans_a_130_country_backfill_out_over_its_gpus(
    cluster_of_16_gpus, tmp_path, monkeypatch
):
    plan = cluster_of_16_gpus
    assert plan["countries"] == 130
    # Dagster's backfill of the model step: runs of at most 10 contiguous countries, at least 13 of them,
    # every country in exactly one.
    runs = plan["dagster_runs"]
    assert len(runs) >= 13 and max(len(r) for r in runs) <= 10, [len(r) for r in runs]
    assert sorted(k for r in runs for k in r) == sorted(f"Country {i:05d}" for i in range(130))
    # `persona run --parallel 16` plans one run per GPU, balanced (equal claims here: 8 or 9 countries).
    assert len(plan["our_runs"]) == 16 and {size for _, size in plan["our_runs"]} == {8, 9}
    # Model steps take chunks; model-free steps stay one run per backfill.
    for asset, (model, per_run) in plan["policies"].items():
        assert (per_run is not None) == model, asset
    # The instance: its run queue admits a run per GPU and more; the sensor keeps pool gpu at 16.
    deployment = load_deployment({"PERSONA_DEPLOYMENT": "k8s", "PERSONA_GPUS": "16"})
    assert "pool_limits_sensor" in plan["sensors"]
    assert pool_limits(deployment) == {GPU_POOL: 16, WAREHOUSE_POOL: 1}
    instance_config = {**_load_yaml("dagster.yaml"), "concurrency": cluster_concurrency(deployment)}
    assert instance_config["concurrency"]["runs"]["max_concurrent_runs"] >= 16
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "not-a-real-password")
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(instance_config))
    config, _ = dagster_instance_config(str(tmp_path))  # Dagster's own instance schema
    assert config["concurrency"]["runs"]["max_concurrent_runs"] >= 16
    from dagster import DagsterInstance, build_sensor_context

    local = tmp_path / "local"
    local.mkdir()
    (local / "dagster.yaml").write_text(yaml.safe_dump({"concurrency": {"pools": {"default_limit": 1}}}))
    with DagsterInstance.from_config(str(local)) as instance:  # the cluster's instance, stood in by SQLite
        pool_limits_sensor(deployment).evaluate_tick(build_sensor_context(instance=instance))
        assert instance.event_log_storage.get_concurrency_info(GPU_POOL).slot_count == 16
        assert instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL).slot_count == 1
        assert apply_pool_limits(instance, pool_limits(deployment)) == {}
    # Every GPU step's Job is as valid as with one GPU: the cluster's size changes how many, not what.
    gpu_ops = _gpu_ops(plan["ops"])
    assert gpu_ops
    for name, op in gpu_ops.items():
        kubernetes_validate.validate(step_job_manifest(name, op["tags"]), KUBERNETES_VERSION, strict=True)


def test_helm_values_agree_with_the_instance_and_the_code_location():
    values, instance = _load_yaml("values.yaml"), _load_yaml("dagster.yaml")
    assert values["runLauncher"]["type"] == instance["run_launcher"]["class"] == "K8sRunLauncher"
    helm_launcher, launcher = (
        values["runLauncher"]["config"]["k8sRunLauncher"],
        instance["run_launcher"]["config"],
    )
    assert helm_launcher["imagePullPolicy"] == launcher["image_pull_policy"]
    assert helm_launcher["loadInclusterConfig"] == launcher["load_incluster_config"]
    pg = instance["storage"]["postgres"]["postgres_db"]
    assert (values["postgresql"]["postgresqlUsername"], values["postgresql"]["postgresqlDatabase"]) == (
        pg["username"],
        pg["db_name"],
    )
    pools = values["concurrency"]["pools"]
    assert values["concurrency"]["enabled"]
    assert (pools["granularity"], pools["defaultLimit"]) == (
        instance["concurrency"]["pools"]["granularity"],
        instance["concurrency"]["pools"]["default_limit"],
    )
    # Both sized for the PERSONA_GPUS the code location gets (the run queue; the sensor keeps pool gpu).
    sized = cluster_concurrency(load_deployment(_user_deployment()["env"]))
    assert instance["concurrency"] == sized
    assert values["concurrency"]["runs"]["maxConcurrentRuns"] == sized["runs"]["max_concurrent_runs"]
    assert values["telemetry"]["enabled"] == instance["telemetry"]["enabled"]

    deployment = _user_deployment()
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())["load_from"][0]["python_module"]
    (server,) = values["dagsterWebserver"]["workspace"]["servers"]
    assert (server["host"], server["port"], server["name"]) == (
        deployment["name"],
        deployment["port"],
        workspace["location_name"],
    )
    args = deployment["dagsterApiGrpcArgs"]
    assert args[args.index("--module-name") + 1] == workspace["module_name"]
    assert args[args.index("--location-name") + 1] == workspace["location_name"]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"]
    # The env the pods get must be settings the code location accepts.
    assert load_deployment(deployment["env"]).on_k8s


def test_kubernetes_parts_of_the_values_and_the_volume_claim_are_valid():
    deployment = _user_deployment()
    # The chart copies these fields into the code server's pod spec; validate them in one.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": deployment["name"]},
        "spec": {
            "containers": [
                {
                    "name": "dagster",
                    "image": "persona-platform:0.1.0",
                    "resources": deployment["resources"],
                    "env": [{"name": k, "value": v} for k, v in deployment["env"].items()],
                    "volumeMounts": deployment["volumeMounts"],
                }
            ],
            "volumes": deployment["volumes"],
        },
    }
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    claim = _load_yaml("persona-home-pvc.yaml")
    kubernetes_validate.validate(claim, KUBERNETES_VERSION, strict=True)
    claim_names = {v["persistentVolumeClaim"]["claimName"] for v in deployment["volumes"]}
    assert claim["metadata"]["name"] in claim_names
    assert "ReadWriteMany" in claim["spec"]["accessModes"]


# --- Helm values against the chart's own values schemas ------------------------------------------------


def chart_schema_errors(values: dict) -> list[str]:
    """What the Dagster chart's values schema and its user-deployments subchart's schema reject in these
    values, as `schema: path: message` lines (Kubernetes types checked as KUBERNETES_VERSION, strict).

    Helm validates each chart's values after merging them into the chart's defaults. Maps merge, so a
    key the schema requires in a map comes from the defaults (not in ../shared) when the values leave
    it out; lists are replaced whole, so inside a list item every required key must be in the values."""
    if not CHART_SCHEMAS.is_dir():
        pytest.skip(f"the Dagster chart's values schemas are not present at {CHART_SCHEMAS}")
    k8s = schema_contents(
        f"kubernetes-json-schema/v{KUBERNETES_VERSION}-local-strict/_definitions.json", KUBERNETES_VERSION
    )
    # The chart's refs read `#/definitions/<type>`; the bundled file, and refs inside it, use `$defs`.
    definitions = {"$schema": k8s["$schema"], "$defs": k8s["$defs"], "definitions": k8s["$defs"]}
    registry = Registry().with_resource(CHART_K8S_REF, Resource.from_contents(definitions))
    checks = [
        (CHART_SCHEMAS / "values.schema.json", values),
        (
            CHART_SCHEMAS / "charts" / "dagster-user-deployments" / "values.schema.json",
            values["dagster-user-deployments"],
        ),
    ]
    errors = []
    for path, instance in checks:
        validator = jsonschema.Draft7Validator(json.loads(path.read_text()), registry=registry)
        for error in validator.iter_errors(instance):
            in_list = any(isinstance(part, int) for part in error.absolute_path)
            if error.validator == "required" and not in_list:
                continue  # the chart's defaults provide it
            where = ".".join(str(part) for part in error.absolute_path) or "(top)"
            errors.append(f"{path.relative_to(CHART_SCHEMAS)}: {where}: {error.message}")
    return errors


def test_helm_values_pass_the_charts_values_schemas():
    values = _load_yaml("values.yaml")
    assert chart_schema_errors(values) == []
    # The chart's schema lets unknown keys through at the top level only; name the ones it does not know,
    # so a misspelt section fails here. `concurrency` (pools) is not in this copy of the schema.
    schema = json.loads((CHART_SCHEMAS / "values.schema.json").read_text())
    assert set(values) - set(schema["properties"]) == {"concurrency"}


def test_the_chart_schemas_reject_broken_values():
    values = _load_yaml("values.yaml")
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    del deployment["port"]  # required in a list item: no defaults fill it
    deployment["volumes"][0]["persistentVolumeClaim"]["claimNam"] = "x"  # a Kubernetes type, via $ref
    deployment["resources"]["requests"]["cpu"] = [1]
    values["runLauncher"]["type"] = "K8sLauncher"
    values["telemetry"]["enabeld"] = False
    errors = "\n".join(chart_schema_errors(values))
    for expected in [
        "dagster-user-deployments.deployments.0: 'port' is a required property",
        "persistentVolumeClaim: Additional properties are not allowed ('claimNam' was unexpected)",
        "resources.requests.cpu: [1] is not valid",
        "runLauncher.type: 'K8sLauncher' is not one of",
        "telemetry: Additional properties are not allowed ('enabeld' was unexpected)",
    ]:
        assert expected in errors, errors


def test_an_experiment_on_a_bigger_model_gets_its_own_pods_sized_for_it(tmp_path):
    """One code location, two experiments: the one whose generator is split over 4 GPUs runs its generator
    steps in 4-GPU pods, its judge steps and the other experiment's steps in 1-GPU pods."""
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "small.yaml").write_text("description: the deployment's model\n")
    (folder / "big.yaml").write_text(
        "description: a model on four GPUs\nmodels:\n  generator:\n    model: vllm:org/big\n"
        "    engine: {tensor_parallel_size: 4}\n"
    )
    ops = _dump_ops(tmp_path, PERSONA_EXPERIMENTS=str(folder))["ops"]

    def gpus(op: str) -> str:
        manifest = step_job_manifest(op, ops[op]["tags"])
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        return manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][GPU_RESOURCE]

    assert gpus("big__icm_search") == gpus("big__elicitation__zero_shot_base_predictions") == "4"
    assert gpus("big__judging__judgments") == gpus("small__icm_search") == "1"
