import os
import tempfile
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
