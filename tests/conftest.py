import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"
REAL_WIDE_CSV = SHARED / "data" / "goqa" / "global_opinion_data.csv"
ARTIFACTS = PROJECT_ROOT / "tests" / "artifacts"


def pytest_configure(config):
    # Settings are read when the code location is imported: keep tests off the user's home.
    os.environ["PERSONA_HOME"] = tempfile.mkdtemp(prefix="persona-test-home-")
    for name in ("PERSONA_MODEL", "PERSONA_GOQA_SOURCE"):
        os.environ.pop(name, None)


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
    from persona_assets.settings import DATA_DIR
    from resources.llm import LLMResource

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
    """The quick start's `persona run`, once per test session: every asset, every partition of the sample."""
    home = tmp_path_factory.mktemp("sample-run")
    result = persona(home, "run")
    return SampleRun(home, result.stdout, result.stderr, result.returncode)


def local_resources(home: Path, llm, **overrides) -> dict:
    """Every resource the code location needs, on the sample data, under ``home``."""
    from persona_assets.settings import SAMPLE_BOARD_DIR, SAMPLE_GOQA_SOURCE
    from resources.artifacts import ArtifactStore
    from resources.llm.chat_api import ChatApiResource
    from resources.sources import BoardSource, GoqaSource
    from resources.warehouse import WarehouseIOManager, WarehouseResource

    return {
        "io_manager": WarehouseIOManager(database=str(home / "w.duckdb")),
        "warehouse": WarehouseResource(database=str(home / "w.duckdb")),
        "llm": llm,
        "judge_llm": llm,
        "goqa_source": GoqaSource(path=str(SAMPLE_GOQA_SOURCE)),
        "board": BoardSource(path=str(SAMPLE_BOARD_DIR)),
        "artifacts": ArtifactStore(root=str(home / "artifacts")),
        "chat_api": ChatApiResource(),
        **overrides,
    }
