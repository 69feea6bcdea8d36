"""GPU pod profiles for the Kubernetes deployment, and the dagster-k8s step config they become.

Pure logic, no Dagster import: `common.gpu_step` attaches the result to the GPU assets as op tags,
which is where `k8s_job_executor` reads per-step pod config (run tags never reach step pods).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from persona_platform.resources.settings import SettingsError

# The op tag dagster-k8s reads (dagster_k8s.job.USER_DEFINED_K8S_CONFIG_KEY; a test keeps them equal).
K8S_CONFIG_TAG = "dagster-k8s/config"
GPU_RESOURCE = "nvidia.com/gpu"
# Set on every GPU node by NVIDIA GPU Feature Discovery (part of the NVIDIA GPU operator).
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
PROFILE_LABEL = "persona-platform/gpu-profile"
SHM_VOLUME = "dshm"
# GPU node pools are commonly tainted so that only pods asking for GPUs land there; any value of the taint.
GPU_TOLERATION = MappingProxyType({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T|m)?$")
_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "toleration_seconds"}
_EFFECTS = {"NoSchedule", "PreferNoSchedule", "NoExecute"}


def quantity(text: str, where: str) -> float:
    """A Kubernetes quantity ("64Gi", "500m", "8") as a number; `where` names the field in errors."""
    match = _QUANTITY.match(str(text))
    if not match:
        raise SettingsError(f"{where}: {text!r} is not a Kubernetes quantity (e.g. 64Gi, 500m, 8)")
    number, suffix = float(match.group(1)), match.group(2)
    if suffix == "m":
        return number / 1000
    return number * (_BINARY.get(suffix) or _DECIMAL.get(suffix) or 1)


@dataclass(frozen=True)
class GpuProfile:
    """What one step pod asks for. Requests equal limits: GPUs cannot be overcommitted anyway, and a
    model step evicted for memory loses its whole load."""

    name: str
    gpus: int = 1
    gpu_type: str = "NVIDIA-A100-SXM4-80GB"
    cpu: str = "8"
    memory: str = "64Gi"
    # /dev/shm for PyTorch DataLoader workers and NCCL/vLLM worker processes; the 64Mi container default
    # makes them crash. Memory-backed, so it counts against `memory`.
    shm: str = "16Gi"
    tolerations: tuple[Mapping[str, Any], ...] = (GPU_TOLERATION,)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    # A step that runs one process per GPU (LoRA training with processes > 1): sized for the larger of its
    # processes and the model's tensor-parallel size.
    gpu_per_process: bool = False

    def __post_init__(self) -> None:
        where = f"GpuProfile {self.name!r}"
        if not _LABEL_VALUE.match(self.name):
            raise SettingsError(f"{where}.name: must be a Kubernetes label value (letters, digits, -_.)")
        if not isinstance(self.gpus, int) or isinstance(self.gpus, bool) or self.gpus < 1:
            raise SettingsError(f"{where}.gpus: {self.gpus!r} is not a whole number of GPUs >= 1")
        if not _LABEL_VALUE.match(self.gpu_type):
            raise SettingsError(
                f"{where}.gpu_type: {self.gpu_type!r} is not a node label value "
                f"(the {GPU_PRODUCT_LABEL} label of the GPU nodes)"
            )
        if quantity(self.cpu, f"{where}.cpu") <= 0:
            raise SettingsError(f"{where}.cpu: must be more than 0")
        memory = quantity(self.memory, f"{where}.memory")
        shm = quantity(self.shm, f"{where}.shm")
        if not 0 < shm < memory:
            raise SettingsError(
                f"{where}.shm: {self.shm} must be more than 0 and less than memory ({self.memory}),"
                " since the memory-backed /dev/shm counts against the pod's memory limit"
            )
        for i, toleration in enumerate(self.tolerations):
            unknown = set(toleration) - _TOLERATION_KEYS
            if unknown or toleration.get("operator") not in ("Exists", "Equal"):
                raise SettingsError(
                    f"{where}.tolerations[{i}]: {dict(toleration)!r} needs operator Exists or Equal"
                    f" and only the keys {sorted(_TOLERATION_KEYS)}"
                )
            if toleration.get("effect") not in (None, *_EFFECTS):
                raise SettingsError(
                    f"{where}.tolerations[{i}].effect: {toleration['effect']!r} is not one of "
                    f"{sorted(_EFFECTS)}"
                )
        if GPU_PRODUCT_LABEL in self.node_selector:
            raise SettingsError(
                f"{where}.node_selector: set the GPU type with gpu_type, not {GPU_PRODUCT_LABEL}"
            )

    def sized(self, gpus: int) -> GpuProfile:
        """This profile for a model split over ``gpus`` GPUs (its tensor-parallel size): that many GPUs, and
        CPU, memory and /dev/shm grown in proportion. One process per GPU (vLLM's tensor-parallel workers)
        loads its shard through host memory, and NCCL and vLLM's workers exchange through /dev/shm (NCCL's
        shared-memory transport where GPUs lack peer access; vLLM's broadcast queue always), both
        per worker. The name carries the size, so pods of different sizes are told apart by label."""
        if gpus == self.gpus:
            return self
        return replace(
            self,
            name=f"{self.name}-{gpus}gpu",
            gpus=gpus,
            cpu=_scaled(self.cpu, gpus / self.gpus),
            memory=_scaled(self.memory, gpus / self.gpus),
            shm=_scaled(self.shm, gpus / self.gpus),
        )


def _scaled(text: str, factor: float) -> str:
    """A quantity times ``factor``, in its own unit ("64Gi" x 2 = "128Gi")."""
    match = _QUANTITY.match(text)
    number = float(match.group(1)) * factor
    return f"{int(number) if number == int(number) else round(number, 3)}{match.group(2) or ''}"


# Inference and scoring: one model in bfloat16 on one GPU (a model on N GPUs: DEFAULT_PROFILE.sized(N)).
DEFAULT_PROFILE = GpuProfile(name="default")
# LoRA training holds the model, optimizer state and activations, and Accelerate's workers share /dev/shm;
# beside vLLM the trainer's base load and vLLM's weights swapped to host memory (sleep mode) share the
# memory limit. In N processes (PERSONA_TRAINING_PROCESSES) it asks for N GPUs, with CPU, memory and /dev/shm
# grown in proportion: each process loads the base through host memory once, and gloo/NCCL exchange through
# /dev/shm.
TRAINING_PROFILE = replace(
    DEFAULT_PROFILE, name="training", cpu="16", memory="128Gi", shm="32Gi", gpu_per_process=True
)


def step_pod_config(profile: GpuProfile, image: str) -> dict[str, Any]:
    """The `dagster-k8s/config` value for a step that runs with `profile` in `image` (snake_case keys,
    as dagster-k8s writes them)."""
    amounts = {GPU_RESOURCE: str(profile.gpus), "cpu": profile.cpu, "memory": profile.memory}
    return {
        "container_config": {
            "image": image,
            "resources": {"limits": dict(amounts), "requests": dict(amounts)},
            "volume_mounts": [{"name": SHM_VOLUME, "mount_path": "/dev/shm"}],
        },
        "pod_template_spec_metadata": {"labels": {PROFILE_LABEL: profile.name}},
        "pod_spec_config": {
            "node_selector": {**profile.node_selector, GPU_PRODUCT_LABEL: profile.gpu_type},
            "tolerations": [dict(t) for t in profile.tolerations],
            "volumes": [{"name": SHM_VOLUME, "empty_dir": {"medium": "Memory", "size_limit": profile.shm}}],
        },
    }


def step_gpus(profile: GpuProfile, tensor_parallel_size: int = 1, processes: int = 1) -> int:
    """The GPUs a step's pod asks for: the model's tensor-parallel size, or, for a step that runs a process
    per GPU (``profile.gpu_per_process``), its processes where they are more."""
    return max(tensor_parallel_size, processes) if profile.gpu_per_process else tensor_parallel_size


def gpu_op_tags(
    profile: GpuProfile, on_k8s: bool, image: str, tensor_parallel_size: int = 1, processes: int = 1
) -> dict[str, Any]:
    """Op tags for a GPU step: on Kubernetes, the config of a pod sized for a model on
    ``tensor_parallel_size`` GPUs (or ``processes`` GPUs, see ``step_gpus``); nothing locally (so local runs
    are unchanged)."""
    if not on_k8s:
        return {}
    gpus = step_gpus(profile, tensor_parallel_size, processes)
    return {K8S_CONFIG_TAG: step_pod_config(profile.sized(gpus), image)}


# k8s_job_executor's config (its job namespace, image pull policy and kubeconfig come from the K8sRunLauncher,
# env and volumes from the code location's container context). Owner references let Kubernetes delete a run's
# step jobs together with its run pod.
K8S_EXECUTOR_CONFIG: dict[str, Any] = {"enable_owner_references": True}
