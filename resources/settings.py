"""Every setting the platform reads from the environment, in one place.

PERSONA_HOME         warehouse file, artifacts, built models and the Dagster instance
                     (default: ./.persona in the working directory)
PERSONA_MODEL        the generator: "tiny" (the embedded model), a Hugging Face id or local path, or the
                     model a server serves; or backend:model, e.g. vllm:meta-llama/Llama-3.1-8B,
                     openai:served-name, simulated:seed=3,countries=2 (a prefix is a backend only when
                     it is a registered name: resources/llm/backends.py)
PERSONA_ENGINE       the generator's backend when PERSONA_MODEL has no prefix: transformers (default),
                     vllm, openai or simulated (the registry describes each)
PERSONA_ENGINE_BASE_URL  the server of the openai backend, e.g. http://host:8000/v1
PERSONA_ENGINE_API_KEY   its key; read from the environment at each call, never stored or logged
PERSONA_GOQA_SOURCE  a GlobalOpinionQA file in any supported format
                     (default: the synthetic sample in data/goqa/)
PERSONA_BOARD_DIR    a board: agents.json, transcripts/*.json, votes.csv (default: data/board)
PERSONA_SCHEDULE_CRON  when each country's backfill schedule fires (default: Mondays 03:00)
PERSONA_CHAT_MODEL   the zero-shot chat baseline's instruction model, [backend:]model (default: the
                     generator's model, and the baseline says it is the base model through a chat template)
PERSONA_CHAT_BASE_URL  an OpenAI-compatible server for it: without a backend: prefix, the chat model is
                     then the openai backend's (default: the generator's server)
PERSONA_CHAT_API_KEY its key, else PERSONA_ENGINE_API_KEY; read at each call, never stored
PERSONA_JUDGE_MODEL  the judge, [backend:]model (default: the generator's; a judge from another family
                     than the generator is the sound choice)
PERSONA_JUDGE_ENGINE, PERSONA_JUDGE_BASE_URL, PERSONA_JUDGE_API_KEY  its backend when PERSONA_JUDGE_MODEL
                     has no prefix, server and key (default: the generator's; the key falls back to
                     PERSONA_ENGINE_API_KEY)
PERSONA_JUDGE_MAX_FAILURE_RATE  the share of judgments that may fail to parse before the
                     judgments_failure_rate and pairwise_failure_rate checks fail (default: 0.05)
PERSONA_DEPLOYMENT   "local" (steps run on this machine) or "k8s" (steps run as Kubernetes jobs,
                     model-loading steps in GPU pods; see k8s/README.md) (default: local)
PERSONA_K8S_GPU_IMAGE  the image of the GPU step pods when PERSONA_DEPLOYMENT=k8s
                     (default: persona-platform-gpu:0.1.0, built from k8s/Dockerfile.gpu)
PERSONA_TENSOR_PARALLEL_SIZE  the GPUs one model is split over: the vllm backend's tensor parallelism, and
                     the GPU count (with memory and /dev/shm to match) of every GPU step pod (default: 1)
PERSONA_GPUS         the GPUs the deployment may use at once: the gpu pool's limit is PERSONA_GPUS divided by
                     PERSONA_TENSOR_PARALLEL_SIZE (model steps at once), on Kubernetes and in the local
                     instance (default: PERSONA_TENSOR_PARALLEL_SIZE, i.e. one model step at a time)
PERSONA_TRAINING_PROCESSES  the default of lora_training's `processes` (one training process per GPU), and on
                     Kubernetes the GPUs of its pod: max(this, PERSONA_TENSOR_PARALLEL_SIZE) (default: 1)
PERSONA_PARTITIONS_PER_RUN  the most partitions one run of a model step takes in a Dagster backfill
                     (BackfillPolicy.multi_run); unset: enough for one run per GPU slot, i.e. one run for
                     the whole backfill when the pool has one slot (default: unset)
PERSONA_MAX_LORAS    the vllm backend's adapters in one batch (default: 8)
PERSONA_TRAIN_MODEL  the base the agents' adapters are trained and merged on with transformers + PEFT when
                     the generator is served by vllm or an OpenAI-compatible server: a local directory, a
                     Hugging Face id in the local cache, or tiny; the weights the server serves (default:
                     the generator's model, where that is one of those)
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

from persona_platform.resources import lake
from persona_platform.resources.inputs.errors import PersonaInputError
from persona_platform.resources.llm.backends import BACKENDS, TINY, backend, split_backend

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = PROJECT_ROOT / "data"
SAMPLE_GOQA_SOURCE = DATA_DIR / "goqa" / "sample_global_opinions.csv"
SAMPLE_BOARD_DIR = DATA_DIR / "board"
EXPERIMENTS_DIR = PROJECT_ROOT / "experiments"
TINY_MODEL = TINY  # the embedded model
DEPLOYMENTS = ("local", "k8s")
DEFAULT_GPU_IMAGE = "persona-platform-gpu:0.1.0"
# A tensor-parallel group stays within one node (NVLink); GPU nodes hold at most 8.
MAX_GPUS_PER_POD = 8
MAX_GPUS = 4096
MAX_PARTITIONS_PER_RUN = 1_000_000


class SettingsError(PersonaInputError):
    """A setting holds a value the platform cannot use."""


@dataclass(frozen=True)
class Deployment:
    """Where steps run. Read apart from the other settings because asset decorators need it at import."""

    kind: str = "local"
    gpu_image: str = DEFAULT_GPU_IMAGE
    # GPUs one model is split over (vLLM's tensor parallelism): what every GPU step pod is sized by.
    tensor_parallel_size: int = 1
    # GPUs the deployment may use at once (PERSONA_GPUS).
    gpus: int = 1
    # The most partitions per run of a model step in a backfill (PERSONA_PARTITIONS_PER_RUN); None: derived.
    partitions_per_run: int | None = None
    # Training processes (PERSONA_TRAINING_PROCESSES): lora_training's default, and its pod's GPUs.
    training_processes: int = 1

    @property
    def on_k8s(self) -> bool:
        return self.kind == "k8s"

    @property
    def gpu_slots(self) -> int:
        """Model steps that may run at once, the gpu pool's limit: each holds tensor_parallel_size GPUs."""
        return self.gpus // self.tensor_parallel_size


@dataclass(frozen=True)
class ModelRole:
    """The model that answers one role (generator, chat baseline, judge) and the backend that serves it."""

    backend: str
    model: str
    base_url: str = ""
    # Environment variables that may hold the server's key, first set one wins (read at each call, never
    # stored).
    api_key_variables: tuple[str, ...] = ("PERSONA_ENGINE_API_KEY",)

    def __str__(self) -> str:
        return f"{self.backend}:{self.model}"


@dataclass(frozen=True)
class RoleVariables:
    """The environment variables of one role."""

    model: str
    backend: str | None  # None: no variable of its own (the chat role: a prefix or its base URL chooses)
    base_url: str
    api_keys: tuple[str, ...]


GENERATOR = RoleVariables(
    "PERSONA_MODEL", "PERSONA_ENGINE", "PERSONA_ENGINE_BASE_URL", ("PERSONA_ENGINE_API_KEY",)
)
CHAT = RoleVariables(
    "PERSONA_CHAT_MODEL", None, "PERSONA_CHAT_BASE_URL", ("PERSONA_CHAT_API_KEY", "PERSONA_ENGINE_API_KEY")
)
JUDGE = RoleVariables(
    "PERSONA_JUDGE_MODEL",
    "PERSONA_JUDGE_ENGINE",
    "PERSONA_JUDGE_BASE_URL",
    ("PERSONA_JUDGE_API_KEY", "PERSONA_ENGINE_API_KEY"),
)


@dataclass(frozen=True)
class Settings:
    home: Path
    goqa_source: Path
    # The model roles, each named in one place (see load_roles); resources named after them (role_resources).
    llm: ModelRole
    chat_llm: ModelRole
    judge_llm: ModelRole
    board_dir: Path = SAMPLE_BOARD_DIR
    schedule_cron: str = "0 3 * * 1"
    judge_max_failure_rate: float = 0.05
    deployment: Deployment = Deployment()
    # A DuckDB file path or a ducklake:postgres:... location (may hold a password: show it via
    # warehouse_label, never directly).
    warehouse: str = ""
    warehouse_data_path: str = ""
    # The base adapters are trained on when the generator's engine cannot train (vllm, openai); empty: the
    # generator's model.
    train_model: str = ""
    max_loras: int = 8
    # The experiment files (persona_assets.experiments), one YAML file per experiment.
    experiments_dir: Path = EXPERIMENTS_DIR

    def roles(self) -> dict[str, ModelRole]:
        """Resource name -> the role's model."""
        return {"llm": self.llm, "chat_llm": self.chat_llm, "judge_llm": self.judge_llm}

    @property
    def warehouse_is_lake(self) -> bool:
        return lake.is_lake(self.warehouse)

    @property
    def warehouse_path(self) -> Path:
        if self.warehouse_is_lake:
            raise SettingsError(
                f"PERSONA_WAREHOUSE is the DuckLake {self.warehouse_label}: there is no warehouse file"
            )
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
    tensor_parallel_size = _whole_number(env, "PERSONA_TENSOR_PARALLEL_SIZE", 1, MAX_GPUS_PER_POD)
    # Unset: the GPUs of one model step, one step at a time.
    gpus = _whole_number(env, "PERSONA_GPUS", tensor_parallel_size, MAX_GPUS)
    if gpus < tensor_parallel_size:
        raise SettingsError(
            f"PERSONA_GPUS={gpus} is fewer than PERSONA_TENSOR_PARALLEL_SIZE={tensor_parallel_size}, "
            "the GPUs one model step needs: no model step could run"
        )
    per_run = (
        _whole_number(env, "PERSONA_PARTITIONS_PER_RUN", 1, MAX_PARTITIONS_PER_RUN)
        if (env.get("PERSONA_PARTITIONS_PER_RUN") or "").strip()
        else None
    )
    training_processes = _whole_number(env, "PERSONA_TRAINING_PROCESSES", 1, MAX_GPUS_PER_POD)
    if kind == "k8s" and gpus < training_processes:
        raise SettingsError(
            f"PERSONA_GPUS={gpus} is fewer than PERSONA_TRAINING_PROCESSES={training_processes}, "
            "the GPUs the training step's pod asks for: it could never be scheduled"
        )
    return Deployment(kind, gpu_image, tensor_parallel_size, gpus, per_run, training_processes)


def _whole_number(env: Mapping[str, str], name: str, default: int, most: int) -> int:
    text = (env.get(name) or str(default)).strip()
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= most:
        raise SettingsError(f"{name}: {text!r} is not a whole number from 1 to {most}")
    return value


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    home = Path(env.get("PERSONA_HOME") or Path.cwd() / ".persona").expanduser().resolve()
    source_text = env.get("PERSONA_GOQA_SOURCE")
    goqa_source = Path(source_text).expanduser().resolve() if source_text else SAMPLE_GOQA_SOURCE
    if not goqa_source.is_file():
        raise SettingsError(f"PERSONA_GOQA_SOURCE: no such file: {goqa_source}")
    board_text = env.get("PERSONA_BOARD_DIR")
    board_dir = Path(board_text).expanduser().resolve() if board_text else SAMPLE_BOARD_DIR
    if not (board_dir / "agents.json").is_file():
        raise SettingsError(f"PERSONA_BOARD_DIR: {board_dir} has no agents.json (the agent registry)")
    schedule_cron = (env.get("PERSONA_SCHEDULE_CRON") or "0 3 * * 1").strip()
    if len(schedule_cron.split()) != 5:
        raise SettingsError(f"PERSONA_SCHEDULE_CRON: {schedule_cron!r} is not a five-field cron expression")
    rate_text = (env.get("PERSONA_JUDGE_MAX_FAILURE_RATE") or "0.05").strip()
    try:
        judge_max_failure_rate = float(rate_text)
    except ValueError:
        judge_max_failure_rate = -1.0
    if not 0.0 <= judge_max_failure_rate <= 1.0:
        raise SettingsError(f"PERSONA_JUDGE_MAX_FAILURE_RATE: {rate_text!r} is not a number between 0 and 1")
    warehouse, warehouse_data_path = _warehouse(env, home)
    llm, chat_llm, judge_llm = load_roles(env)
    train_model = (env.get("PERSONA_TRAIN_MODEL") or "").strip()
    if train_model and split_backend(train_model)[0]:
        raise SettingsError(
            f"PERSONA_TRAIN_MODEL={train_model!r}: name the weights alone (training is always transformers + "
            "PEFT), without a backend: prefix"
        )
    return Settings(
        home=home,
        goqa_source=goqa_source,
        llm=llm,
        chat_llm=chat_llm,
        judge_llm=judge_llm,
        board_dir=board_dir,
        schedule_cron=schedule_cron,
        judge_max_failure_rate=judge_max_failure_rate,
        deployment=load_deployment(env),
        warehouse=warehouse,
        warehouse_data_path=warehouse_data_path,
        train_model=train_model,
        max_loras=_whole_number(env, "PERSONA_MAX_LORAS", 8, 1024),
        experiments_dir=_folder(env, "PERSONA_EXPERIMENTS", EXPERIMENTS_DIR),
    )


def _folder(env: Mapping[str, str], name: str, default: Path) -> Path:
    text = (env.get(name) or "").strip()
    folder = Path(text).expanduser().resolve() if text else default
    if not folder.is_dir():
        raise SettingsError(f"{name}: no such folder: {folder}")
    return folder


def load_roles(env: Mapping[str, str]) -> tuple[ModelRole, ModelRole, ModelRole]:
    """The generator, the chat baseline's model and the judge. The chat model and the judge default to the
    generator's model, backend and server (then one loaded engine serves them all)."""
    generator = _role(env, GENERATOR, ModelRole("transformers", TINY_MODEL))
    if (env.get(CHAT.base_url) or "").strip() and not (env.get(CHAT.model) or "").strip():
        raise SettingsError(f"{CHAT.base_url} is set but {CHAT.model} is not: name the chat model")
    # A chat server without a backend prefix is an OpenAI-compatible API (what PERSONA_CHAT_BASE_URL has
    # always meant).
    chat = _role(env, CHAT, generator, url_backend="openai")
    return generator, chat, _role(env, JUDGE, generator)


def _role(
    env: Mapping[str, str], names: RoleVariables, default: ModelRole, url_backend: str | None = None
) -> ModelRole:
    text = (env.get(names.model) or "").strip()
    named = (env.get(names.backend) or "").strip() if names.backend else ""
    base_url = (env.get(names.base_url) or "").strip()
    prefix, model = split_backend(text)
    if named and named not in BACKENDS:
        raise SettingsError(f"{names.backend}: {named!r} is not one of {', '.join(BACKENDS)}")
    if prefix and named and prefix != named:
        raise SettingsError(
            f"{names.model}={text!r} names the {prefix} backend but {names.backend}={named!r}: "
            "name the backend in one place"
        )
    if text and not model:
        raise SettingsError(f"{names.model}: {text!r} names a backend but no model")
    chosen = prefix or named or (url_backend if base_url else None) or default.backend
    role = ModelRole(chosen, model or default.model, base_url or default.base_url, names.api_keys)
    if backend(chosen).reads_base_url and not role.base_url.startswith(("http://", "https://")):
        raise SettingsError(
            f"{names.base_url}: the {chosen} backend needs the server's URL (http://host:port/v1), "
            f"got {role.base_url!r}"
        )
    if url_backend and base_url and not backend(chosen).reads_base_url:
        raise SettingsError(
            f"{names.base_url} is set but {names.model}={text!r} names the {chosen} backend, "
            "which reads no server URL"
        )
    return role


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
                "PERSONA_WAREHOUSE is a DuckLake but PERSONA_WAREHOUSE_DATA_PATH is not set: "
                "name the directory (mounted by every writer) or object-store URL for its data files"
            )
        return text, data_path
    if data_path:
        raise SettingsError(
            "PERSONA_WAREHOUSE_DATA_PATH is set but PERSONA_WAREHOUSE is not a DuckLake "
            "(ducklake:postgres:...): a DuckDB file keeps its data in itself"
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
