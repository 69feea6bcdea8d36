"""Experiments: named, versioned descriptions of what varies between runs of the same graph.

An experiment is one YAML file (``experiments/<name>.yaml``, or the folder PERSONA_EXPERIMENTS names): the
model of each role (generator, chat baseline, judge) with its backend and engine settings, and the steps'
settings (ICM parameters, repeats, sampling grid, LoRA settings). Each domain's asset factory builds the
model-dependent assets once per experiment (keys ``[experiment, domain, table]``, one group per experiment),
so experiments never overwrite each other; model-free assets (survey, claims, splits, corpora, votes) are
built once and feed every experiment.

A role the file does not name takes the deployment's model for it (PERSONA_MODEL, PERSONA_CHAT_MODEL,
PERSONA_JUDGE_MODEL; the embedded model unless set). The experiment's version is the hash of its file, and
every asset it builds carries it in its code version: editing one file marks that experiment's assets stale
and no other's.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from dagster import AssetKey, Config
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from persona_platform.resources.artifacts import ArtifactStore
from persona_platform.resources.inputs.errors import PersonaInputError
from persona_platform.resources.llm.backends import BACKENDS, split_backend
from persona_platform.resources.llm.resource import LLMResource
from persona_platform.resources.settings import load_settings

# Joined with "__" into op names and warehouse schemas, so a name has no double underscore.
NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
# Names an experiment cannot take: an experiment's name is its asset group, and these are the shared groups
# (the domains'), the comparison's and Dagster's own default group.
RESERVED_NAMES = frozenset(
    "opinions elicitation agents traits responses judging votes alignment reports default".split()
)
# The group of what compares experiments (it reads every experiment's assets).
COMPARISON_GROUP = "reports"
# Role -> the deployment's resource for it, which the experiment's model replaces where the file names one.
ROLES = {"generator": "llm", "chat": "chat_llm", "judge": "judge_llm"}
# What a file may set per role beyond the model: the engine's load and serving settings. Paths and the
# training base stay the deployment's.
ENGINE_SETTINGS = tuple(
    name for name in LLMResource.model_fields if name not in ("model", "backend", "models_dir", "corpus_dir")
)


# The tables (schema.table) every experiment has its own copy of, as the factories name them: the same
# for every experiment, since the same factories build them. Every key of an experiment's asset is made by
# Experiment.key, which records its table here.
EXPERIMENT_TABLES: set[str] = set()
# The tag that names an asset's experiment (its group is the experiment too, but tags select across groups).
EXPERIMENT_TAG = "persona/experiment"


class ExperimentError(PersonaInputError):
    """An experiment file the platform cannot use; the message names the file and the field."""


class RoleModel(BaseModel):
    """One role's model: ``backend:model`` (the PERSONA_MODEL syntax) and engine settings."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="backend:model, e.g. transformers:tiny-b or vllm:meta-llama/Llama-3.1-8B")
    engine: dict[str, Any] = Field(
        default_factory=dict, description=f"engine settings: any of {', '.join(ENGINE_SETTINGS)}"
    )


class ExperimentFile(BaseModel):
    """The schema of an experiment file."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field(description="What the experiment varies and why.")
    models: dict[str, RoleModel | str] = Field(
        default_factory=dict,
        description=f"Per role ({', '.join(ROLES)}): its model; a role left out takes the deployment's.",
    )
    profile: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per step (its name without the experiment prefix, e.g. icm_search): config defaults.",
    )


@dataclass
class Experiment:
    name: str
    path: Path
    version: str
    description: str
    models: dict[str, RoleModel] = field(default_factory=dict)
    profile: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The profile's steps some factory asked for; a step no factory asks for is a typo (check_profile).
    configured_steps: set[str] = field(default_factory=set)

    def key(self, domain: str, table: str) -> AssetKey:
        """The asset key of one of this experiment's tables: [experiment, domain, table]."""
        EXPERIMENT_TABLES.add(f"{domain}.{table}")
        return AssetKey([self.name, domain, table])

    def op_name(self, step: str) -> str:
        return f"{self.name}__{step}"

    def code_version(self, base: str) -> str:
        """``base`` (the code's own version) with the experiment's file version."""
        return f"{base}+{self.name}-{self.version}"

    def tags(self, domain: str) -> dict[str, str]:
        return {EXPERIMENT_TAG: self.name, "persona/domain": domain}

    def role(self, role: str, deployment: LLMResource) -> LLMResource:
        """The resource answering ``role`` here: the deployment's own, or one for the file's model (engines
        are cached by their load settings, so experiments on one model share one load)."""
        spec = self.models.get(role)
        if spec is None:
            return deployment
        backend, model = split_backend(spec.model)
        values = {name: getattr(deployment, name) for name in LLMResource.model_fields}
        values |= {"backend": backend or "transformers", "model": model, "train_model": ""} | spec.engine
        return LLMResource(**values)

    def artifacts(self, store: ArtifactStore) -> ArtifactStore:
        """The experiment's own artifacts folder (plots, checkpoints, adapters), beside the others'."""
        return store.within(self.name)

    def gpus(self, role: str = "generator") -> int | None:
        """GPUs the role's model is split over, where the file says (its tensor_parallel_size)."""
        spec = self.models.get(role)
        return spec.engine.get("tensor_parallel_size") if spec else None

    def model_label(self, role: str, deployment: str) -> str:
        """``backend:model`` answering ``role``: the file's, else ``deployment`` (the deployment's label)."""
        spec = self.models.get(role)
        if spec is None:
            return deployment
        backend, model = split_backend(spec.model)
        return f"{backend or 'transformers'}:{model}"

    def configured(self, config: type[Config], step: str) -> type[Config]:
        """``config`` with this experiment's profile for ``step`` as its defaults: the UI's launchpad shows
        them and a run's own config still overrides them."""
        self.configured_steps.add(step)
        values = self.profile.get(step, {})
        unknown = sorted(set(values) - set(config.model_fields))
        if unknown:
            raise ExperimentError(
                f"{self.path}: profile.{step}.{unknown[0]}: not a setting of {step} "
                f"(its settings: {', '.join(config.model_fields)})"
            )
        try:
            config(**values)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            raise ExperimentError(f"{self.path}: profile.{step}.{where}: {error['msg']}") from None
        fields = {
            name: (info.annotation, Field(default=values[name], description=info.description))
            for name, info in config.model_fields.items()
            if name in values
        }
        return create_model(f"{config.__name__}_{self.name}", __base__=config, **fields) if fields else config

    def check_profile(self) -> None:
        """Every step the profile names was configured by some factory."""
        unknown = sorted(set(self.profile) - self.configured_steps)
        if unknown:
            raise ExperimentError(
                f"{self.path}: profile.{unknown[0]}: no step of that name takes settings "
                f"(steps: {', '.join(sorted(self.configured_steps))})"
            )


def read_experiment(path: Path) -> Experiment:
    name = path.stem
    if not NAME.match(name):
        raise ExperimentError(
            f"{path}: the file name {name!r} is the experiment's name: lowercase letters, digits and single "
            "underscores, starting with a letter"
        )
    if name in RESERVED_NAMES:
        raise ExperimentError(
            f"{path}: the file name {name!r} is a group of the shared assets; name it otherwise"
        )
    content = path.read_bytes()
    try:
        raw = yaml.safe_load(content)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ExperimentError(f"{path}:{where} not YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ExperimentError(f"{path}: expected a mapping with description, models and profile")
    try:
        parsed = ExperimentFile(**raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"] if not str(part).startswith(("RoleModel", "str")))
        raise ExperimentError(f"{path}: {where}: {error['msg']}") from None
    return Experiment(
        name=name,
        path=path,
        version=hashlib.sha256(content).hexdigest()[:10],
        description=parsed.description.strip(),
        models={role: _role_model(path, role, spec) for role, spec in parsed.models.items()},
        profile=parsed.profile,
    )


def _role_model(path: Path, role: str, spec: RoleModel | str) -> RoleModel:
    if role not in ROLES:
        raise ExperimentError(f"{path}: models.{role}: not a role (roles: {', '.join(ROLES)})")
    spec = RoleModel(model=spec) if isinstance(spec, str) else spec
    backend, model = split_backend(spec.model)
    if not model.strip():
        raise ExperimentError(f"{path}: models.{role}.model: {spec.model!r} names no model")
    if backend is None and ":" in spec.model.split("/")[0]:
        raise ExperimentError(
            f"{path}: models.{role}.model: {spec.model!r}: unknown backend (backends: {', '.join(BACKENDS)})"
        )
    unknown = sorted(set(spec.engine) - set(ENGINE_SETTINGS))
    if unknown:
        raise ExperimentError(
            f"{path}: models.{role}.engine.{unknown[0]}: not an engine setting "
            f"(settings: {', '.join(ENGINE_SETTINGS)})"
        )
    try:
        LLMResource(
            model=model, backend=backend or "transformers", models_dir="", corpus_dir="", **spec.engine
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ExperimentError(f"{path}: models.{role}.engine.{error['loc'][0]}: {error['msg']}") from None
    return spec


def load_experiments(folder: Path) -> list[Experiment]:
    """Every experiment in ``folder``, by name."""
    files = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    if not files:
        raise ExperimentError(f"{folder}: no experiment files (*.yaml); PERSONA_EXPERIMENTS names the folder")
    return [read_experiment(path) for path in files]


@functools.cache
def _experiments_in(folder: Path) -> tuple[Experiment, ...]:
    return tuple(load_experiments(folder))


def experiments() -> list[Experiment]:
    """The experiments of this code location (PERSONA_EXPERIMENTS, the repository's experiments/ by
    default), read once per process."""
    return list(_experiments_in(load_settings().experiments_dir))
