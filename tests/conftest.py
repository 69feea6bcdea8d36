import ast
import fcntl
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from xdist.scheduler import LoadScopeScheduling

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"
REAL_WIDE_CSV = SHARED / "data" / "goqa" / "global_opinion_data.csv"
ARTIFACTS = PROJECT_ROOT / "tests" / "artifacts"
# The repository's experiments: the quick start and the tests about experiments run them all.
EXPERIMENTS = PROJECT_ROOT / "experiments"
SAMPLE_RUN_ENV = {"PERSONA_EXPERIMENTS": str(EXPERIMENTS)}  # what the quick start's home was made with


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Each worker and what it starts computes on one thread: two workers with a torch thread per core each
        # oversubscribe the cores, and torch's spinning threads then run several times slower.
        os.environ["OMP_NUM_THREADS"] = "1"
    # Settings are read when the code location is imported: keep tests off the user's home.
    # Nor may a developer's settings (a real model, an API, a DuckLake, k8s) leak into the tests.
    for name in [n for n in os.environ if n.startswith("PERSONA_")]:
        os.environ.pop(name)
    os.environ["PERSONA_HOME"] = tempfile.mkdtemp(prefix="persona-test-home-")
    # Tests of anything but experiments run one experiment (the primary one, on the deployment's models):
    # each model step once, not once per experiment.
    one = Path(tempfile.mkdtemp(prefix="persona-test-experiments-"))
    (one / "primary.yaml").write_bytes((EXPERIMENTS / "primary.yaml").read_bytes())
    os.environ["PERSONA_EXPERIMENTS"] = str(one)


class SharedFixtureScheduling(LoadScopeScheduling):
    """xdist's scheduling by scope, a scope being a test file, except that every test over the quick start's
    run (the `sample_run` fixture, minutes long) is in one scope: those tests share one worker, which makes
    the run once and starts on it first (the largest scope), while the other worker takes the rest.
    (pytest-xdist's own loadgroup cannot group under pytest 9.2: it renames items through an attribute
    pytest no longer reads.)"""

    def _split_scope(self, nodeid: str) -> str:
        path, _, rest = nodeid.partition("::")
        test = rest.split("::")[-1].split("[")[0]
        return QUICK_START_SCOPE if test in _tests_over_sample_run(path) else path


QUICK_START_SCOPE = "sample_run"


@functools.cache
def _tests_over_sample_run(path: str) -> frozenset[str]:
    """The tests of a file that use `sample_run`, directly or through the file's own fixtures (the controller
    sees node ids only, so it reads the file)."""
    tree = ast.parse((PROJECT_ROOT / path).read_text())
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    uses = {"sample_run"}
    for _ in functions:  # fixtures over fixtures over sample_run, to any depth
        uses |= {f.name for f in functions if uses & {a.arg for a in f.args.args}}
    return frozenset(f.name for f in functions if f.name.startswith("test_") and f.name in uses)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    return SharedFixtureScheduling(config, log)


def primary_experiment():
    """The tests' one experiment (pytest_configure), whose factories build the assets a test materializes."""
    from persona_platform.persona_assets.experiments import experiments

    (primary,) = experiments()
    return primary


@pytest.fixture(scope="session")
def real_wide_csv() -> Path:
    if not REAL_WIDE_CSV.is_file():
        pytest.skip(f"real GlobalOpinionQA data not present at {REAL_WIDE_CSV}")
    return REAL_WIDE_CSV


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_llm(models_dir):
    from persona_platform.resources.llm.resource import LLMResource
    from persona_platform.resources.settings import DATA_DIR

    return LLMResource(models_dir=str(models_dir), corpus_dir=str(DATA_DIR), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_engine(tiny_llm):
    return tiny_llm.engine()


PERSONA = str(Path(sys.executable).with_name("persona"))


def persona(home, *args, source=None, extra_env=None, timeout=900):
    """Run the ``persona`` command as a user would, in its own process with its own home."""
    env = {**os.environ, "PERSONA_HOME": str(home), **(extra_env or {})}
    if source:
        env["PERSONA_GOQA_SOURCE"] = str(source)
    return subprocess.run([PERSONA, *args], env=env, capture_output=True, text=True, timeout=timeout)


@dataclass
class SampleRun:
    home: Path
    stdout: str
    stderr: str
    returncode: int


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory) -> SampleRun:
    """The quick start's `persona run`, once per test session: every asset, every partition of the sample.
    Under xdist the first worker to need it makes it and records the outcome; another waits on the lock and
    reads it (the scheduler keeps its tests on one worker; this keeps a stray one from running it again)."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the session's own folder
    record = shared / "sample-run.json"
    with (shared / "sample-run.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            home = shared / "sample-run"
            home.mkdir()
            result = persona(home, "run", extra_env=SAMPLE_RUN_ENV)
            outcome = {"home": str(home), "stdout": result.stdout, "stderr": result.stderr}
            record.write_text(json.dumps({**outcome, "returncode": result.returncode}))
        saved = json.loads(record.read_text())
    return SampleRun(Path(saved["home"]), saved["stdout"], saved["stderr"], saved["returncode"])


def local_resources(home: Path, llm, **overrides) -> dict:
    """Every resource the code location needs, on the sample data, under ``home``."""
    from persona_platform.resources.artifacts import ArtifactStore
    from persona_platform.resources.settings import SAMPLE_BOARD_DIR, SAMPLE_GOQA_SOURCE
    from persona_platform.resources.sources import BoardSource, GoqaSource
    from persona_platform.resources.warehouse import WarehouseIOManager, WarehouseResource

    return {
        "io_manager": WarehouseIOManager(database=str(home / "w.duckdb")),
        "warehouse": WarehouseResource(database=str(home / "w.duckdb")),
        "llm": llm,
        "judge_llm": llm,
        "chat_llm": llm,
        "goqa_source": GoqaSource(path=str(SAMPLE_GOQA_SOURCE)),
        "board": BoardSource(path=str(SAMPLE_BOARD_DIR)),
        "artifacts": ArtifactStore(root=str(home / "artifacts")),
        **overrides,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_materialization(port: int, path: list[str], partition: str, timeout: float = 300) -> dict:
    """Poll the webserver until the asset has a materialization of that partition; returns it."""
    query = """query($key: AssetKeyInput!) { assetOrError(assetKey: $key) { ... on Asset {
                 assetMaterializations(partitions: [$partition], limit: 1) { runId partition } } } }"""
    query = query.replace("$partition", json.dumps(partition))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = graphql(port, query, {"key": {"path": path}})["assetOrError"]["assetMaterializations"]
        if found:
            return found[0]
        time.sleep(2)
    raise AssertionError(f"no materialization of {'/'.join(path)} [{partition}] within {timeout} s")


def wait_for_run(port: int, run_id: str, timeout: float = 300) -> str:
    """Poll the webserver until the run ends; returns its final status."""
    deadline, status = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        status = graphql(
            port, "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id}
        )["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(2)
    raise AssertionError(f"run {run_id} still {status} after {timeout} s")


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = json.loads(response.read())
    assert "errors" not in payload, payload
    return payload["data"]


@contextmanager
def running_ui(home: Path, log_path: Path, extra_env: dict | None = None) -> Iterator[int]:
    """`persona ui` (webserver and daemon) on a free loopback port over ``home``; yields the port."""
    port = free_port()
    log = log_path.open("w")
    process = subprocess.Popen(
        [PERSONA, "ui", "--port", str(port)],
        env={**os.environ, "PERSONA_HOME": str(home), **(extra_env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5):
                break
        except OSError:
            assert process.poll() is None, log_path.read_text()
            time.sleep(1)
    else:
        pytest.fail("the webserver did not start: " + log_path.read_text()[-2000:])
    try:
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def ui(tmp_path):
    """`persona ui` with its own empty home; yields the port."""
    with running_ui(tmp_path, tmp_path / "ui.log") as port:
        yield port


def materialize_report(
    report, inputs: dict[tuple[str, ...], object], artifacts_dir: Path
) -> tuple[object, dict]:
    """A report asset materialized by Dagster on prepared upstream tables (no upstream run): its table and
    metadata."""
    from dagster import AssetSpec, IOManager, materialize

    from persona_platform.resources.artifacts import ArtifactStore

    outputs = {}

    class Prepared(IOManager):
        def handle_output(self, context, obj):
            outputs["table"] = obj

        def load_input(self, context):
            return inputs[tuple(context.asset_key.path)]

    result = materialize(
        [AssetSpec(list(key)) for key in inputs] + [report],
        selection=[report],
        resources={"io_manager": Prepared(), "artifacts": ArtifactStore(root=str(artifacts_dir))},
    )
    (event,) = result.get_asset_materialization_events()
    return outputs["table"], {key: value.value for key, value in event.materialization.metadata.items()}
