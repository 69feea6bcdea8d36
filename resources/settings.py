"""Every setting the platform reads from the environment, in one place.

PERSONA_HOME         warehouse file, artifacts, built models and the Dagster instance
                     (default: ./.persona in the working directory)
PERSONA_MODEL        "tiny" (the embedded model) or a Hugging Face id or local path
PERSONA_GOQA_SOURCE  a GlobalOpinionQA file in any supported format
                     (default: the synthetic sample in data/goqa/)
PERSONA_BOARD_DIR    a board: agents.json, transcripts/*.json, votes.csv (default: data/board)
PERSONA_SCHEDULE_CRON  when each country's backfill schedule fires (default: Mondays 03:00)
PERSONA_CHAT_BASE_URL  an OpenAI-compatible API for the zero-shot chat baseline
                     (default: none, the local engine answers through its chat template)
PERSONA_CHAT_MODEL   the model name to ask that API for
PERSONA_CHAT_API_KEY the API key; read from the environment when a request is made, never stored
PERSONA_ENGINE       the engine backend: transformers (default), vllm (a CUDA GPU, the gpu extra),
                     openai (an OpenAI-compatible server; PERSONA_MODEL names the model it serves) or
                     simulated (a planted-signal learner that only scores; PERSONA_MODEL holds its world
                     settings, e.g. "seed=3,salience=2"; its survey is written by `persona world FILE`)
PERSONA_ENGINE_BASE_URL  that server, e.g. http://host:8000/v1 (openai backend)
PERSONA_ENGINE_API_KEY   its key; read from the environment at each call, never stored or logged
PERSONA_JUDGE_ENGINE, PERSONA_JUDGE_BASE_URL, PERSONA_JUDGE_API_KEY  the same for the judge
                     (default: the generator's engine and server)
PERSONA_JUDGE_MODEL  the judge model, "tiny" or a Hugging Face id or local path (default: PERSONA_MODEL;
                     a judge from another family than the generator is the sound choice)
PERSONA_JUDGE_MAX_FAILURE_RATE  the share of judgments that may fail to parse before the
                     judge_failure_rate checks fail (default: 0.05)
PERSONA_DEPLOYMENT   "local" (steps run on this machine) or "k8s" (steps run as Kubernetes jobs,
                     model-loading steps in GPU pods; see k8s/README.md) (default: local)
PERSONA_K8S_GPU_IMAGE  the image of the GPU step pods when PERSONA_DEPLOYMENT=k8s
                     (default: persona-platform-gpu:0.1.0, built from k8s/Dockerfile.gpu)
PERSONA_WAREHOUSE    where the tables live: a DuckDB file path (default: $PERSONA_HOME/warehouse.duckdb)
                     or a DuckLake for many writers, ducklake:postgres:<libpq connection string or URI>
PERSONA_WAREHOUSE_DATA_PATH  the DuckLake's data files: a directory every writer mounts, or an
                     object-store URL (required with a DuckLake, refused with a file)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from resources.inputs.errors import PersonaInputError
from resources import lake

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = PROJECT_ROOT / "data"
SAMPLE_GOQA_SOURCE = DATA_DIR / "goqa" / "sample_global_opinions.csv"
SAMPLE_BOARD_DIR = DATA_DIR / "board"
TINY_MODEL = "tiny"
DEPLOYMENTS = ("local", "k8s")
DEFAULT_GPU_IMAGE = "persona-platform-gpu:0.1.0"


class SettingsError(PersonaInputError):
    """A setting holds a value the platform cannot use."""


@dataclass(frozen=True)
class Deployment:
    """Where steps run. Read apart from the other settings because asset decorators need it at import."""

    kind: str = "local"
    gpu_image: str = DEFAULT_GPU_IMAGE

    @property
    def on_k8s(self) -> bool:
        return self.kind == "k8s"


@dataclass(frozen=True)
class Settings:
    home: Path
    model: str
    goqa_source: Path
    board_dir: Path = SAMPLE_BOARD_DIR
    chat_base_url: str = ""
    chat_model: str = ""
    schedule_cron: str = "0 3 * * 1"
    judge_model: str = TINY_MODEL
    judge_max_failure_rate: float = 0.05
    engine: str = "transformers"
    engine_base_url: str = ""
    judge_engine: str = "transformers"
    judge_base_url: str = ""
    deployment: Deployment = Deployment()
    # A DuckDB file path or a ducklake:postgres:... location (may hold a password: show it via
    # warehouse_label, never directly).
    warehouse: str = ""
    warehouse_data_path: str = ""

    @property
    def warehouse_is_lake(self) -> bool:
        return lake.is_lake(self.warehouse)

    @property
    def warehouse_path(self) -> Path:
        if self.warehouse_is_lake:
            raise SettingsError(f"PERSONA_WAREHOUSE is the DuckLake {self.warehouse_label}: there is no warehouse file")
        return Path(self.warehouse) if self.warehouse else self.home / "warehouse.duckdb"

    @property
    def warehouse_label(self) -> str:
        """The warehouse for messages: the file path, or the DuckLake with its password redacted."""
        if self.warehouse_is_lake:
            return f"{lake.redact(self.warehouse)} (data {self.warehouse_data_path})"
        return str(self.warehouse_path)

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"


def load_deployment(environ: Mapping[str, str] | None = None) -> Deployment:
    env = os.environ if environ is None else environ
    kind = (env.get("PERSONA_DEPLOYMENT") or "local").strip().lower()
    if kind not in DEPLOYMENTS:
        raise SettingsError(f"PERSONA_DEPLOYMENT: {kind!r} is not one of {', '.join(DEPLOYMENTS)}")
    gpu_image = (env.get("PERSONA_K8S_GPU_IMAGE") or DEFAULT_GPU_IMAGE).strip()
    if not gpu_image or any(c.isspace() for c in gpu_image):
        raise SettingsError(f"PERSONA_K8S_GPU_IMAGE: {gpu_image!r} is not an image reference")
    return Deployment(kind, gpu_image)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    home = Path(env.get("PERSONA_HOME") or Path.cwd() / ".persona").expanduser().resolve()
    model = (env.get("PERSONA_MODEL") or TINY_MODEL).strip()
    if not model:
        raise SettingsError("PERSONA_MODEL is empty: use 'tiny' or a Hugging Face id or local path")
    source_text = env.get("PERSONA_GOQA_SOURCE")
    goqa_source = Path(source_text).expanduser().resolve() if source_text else SAMPLE_GOQA_SOURCE
    if not goqa_source.is_file():
        raise SettingsError(f"PERSONA_GOQA_SOURCE: no such file: {goqa_source}")
    board_text = env.get("PERSONA_BOARD_DIR")
    board_dir = Path(board_text).expanduser().resolve() if board_text else SAMPLE_BOARD_DIR
    if not (board_dir / "agents.json").is_file():
        raise SettingsError(f"PERSONA_BOARD_DIR: {board_dir} has no agents.json (the agent registry)")
    chat_base_url = (env.get("PERSONA_CHAT_BASE_URL") or "").strip()
    chat_model = (env.get("PERSONA_CHAT_MODEL") or "").strip()
    if chat_base_url and not chat_model:
        raise SettingsError("PERSONA_CHAT_BASE_URL is set but PERSONA_CHAT_MODEL is not: name the chat model")
    schedule_cron = (env.get("PERSONA_SCHEDULE_CRON") or "0 3 * * 1").strip()
    if len(schedule_cron.split()) != 5:
        raise SettingsError(f"PERSONA_SCHEDULE_CRON: {schedule_cron!r} is not a five-field cron expression")
    judge_model = (env.get("PERSONA_JUDGE_MODEL") or model).strip()
    rate_text = (env.get("PERSONA_JUDGE_MAX_FAILURE_RATE") or "0.05").strip()
    try:
        judge_max_failure_rate = float(rate_text)
    except ValueError:
        judge_max_failure_rate = -1.0
    if not 0.0 <= judge_max_failure_rate <= 1.0:
        raise SettingsError(f"PERSONA_JUDGE_MAX_FAILURE_RATE: {rate_text!r} is not a number between 0 and 1")
    warehouse, warehouse_data_path = _warehouse(env, home)
    engine, engine_base_url = _engine(env, "PERSONA_ENGINE", "PERSONA_ENGINE_BASE_URL", "transformers", "")
    judge_engine, judge_base_url = _engine(env, "PERSONA_JUDGE_ENGINE", "PERSONA_JUDGE_BASE_URL", engine, engine_base_url)
    return Settings(home, model, goqa_source, board_dir, chat_base_url, chat_model, schedule_cron, judge_model,
                    judge_max_failure_rate, engine, engine_base_url, judge_engine, judge_base_url, load_deployment(env),
                    warehouse, warehouse_data_path)


ENGINES = ("transformers", "vllm", "openai", "simulated")


def _engine(env: Mapping[str, str], name: str, url_name: str, default: str, default_url: str) -> tuple[str, str]:
    engine = (env.get(name) or default).strip()
    if engine not in ENGINES:
        raise SettingsError(f"{name}: {engine!r} is not one of {', '.join(ENGINES)}")
    base_url = (env.get(url_name) or default_url).strip()
    if engine == "openai" and not base_url.startswith(("http://", "https://")):
        raise SettingsError(f"{url_name}: the openai engine needs the server's URL (http://host:port/v1), got {base_url!r}")
    return engine, base_url


def _warehouse(env: Mapping[str, str], home: Path) -> tuple[str, str]:
    text = (env.get("PERSONA_WAREHOUSE") or "").strip()
    data_path = (env.get("PERSONA_WAREHOUSE_DATA_PATH") or "").strip()
    if lake.is_lake(text):
        try:
            lake.check_location(text)
        except lake.LakeLocationError as exc:
            raise SettingsError(f"PERSONA_WAREHOUSE: {exc}") from None
        if not data_path:
            raise SettingsError(
                "PERSONA_WAREHOUSE is a DuckLake but PERSONA_WAREHOUSE_DATA_PATH is not set: name the directory "
                "(mounted by every writer) or object-store URL for its data files"
            )
        return text, data_path
    if data_path:
        raise SettingsError(
            "PERSONA_WAREHOUSE_DATA_PATH is set but PERSONA_WAREHOUSE is not a DuckLake (ducklake:postgres:...): "
            "a DuckDB file keeps its data in itself"
        )
    if "://" in text or text.lower().startswith(("postgres:", "postgresql:", "md:", "motherduck:")):
        raise SettingsError(
            f"PERSONA_WAREHOUSE: {lake.redact(text)!r} is neither a DuckDB file path nor a DuckLake; "
            "for PostgreSQL write ducklake:postgres:<connection>"
        )
    path = Path(text).expanduser().resolve() if text else home / "warehouse.duckdb"
    if path.is_dir():
        raise SettingsError(f"PERSONA_WAREHOUSE: {path} is a directory; name the DuckDB file inside it")
    return str(path), ""
