"""The training step's pod on Kubernetes asks for a GPU per training process (PERSONA_TRAINING_PROCESSES), and
the step job dagster-k8s builds from it is a valid Kubernetes Job; lora_training's `processes` defaults to the
same number, so the launch fills the pod."""

import kubernetes_validate
import pytest

from persona_platform.persona_assets.deployment import (
    DEFAULT_PROFILE,
    GPU_RESOURCE,
    TRAINING_PROFILE,
    gpu_op_tags,
    step_gpus,
)
from persona_platform.resources.settings import SettingsError, load_deployment
from tests.persona_assets.test_k8s import KUBERNETES_VERSION, _dump_ops, _gpu_ops, step_job_manifest


def test_only_the_training_profile_grows_with_its_processes():
    assert step_gpus(TRAINING_PROFILE, 1, 4) == 4
    assert step_gpus(TRAINING_PROFILE, 8, 4) == 8  # a model split over more GPUs than processes
    assert step_gpus(DEFAULT_PROFILE, 1, 4) == 1  # inference steps keep one GPU per model
    tags = gpu_op_tags(TRAINING_PROFILE, True, "img:1", 1, 4)
    limits = next(iter(tags.values()))["container_config"]["resources"]["limits"]
    assert (limits[GPU_RESOURCE], limits["memory"]) == ("4", "512Gi")
    assert gpu_op_tags(TRAINING_PROFILE, False, "img:1", 1, 4) == {}  # local runs unchanged


def test_training_processes_are_a_whole_number_the_cluster_can_hold():
    assert load_deployment({}).training_processes == 1
    assert load_deployment({"PERSONA_TRAINING_PROCESSES": "4"}).training_processes == 4
    with pytest.raises(SettingsError, match="PERSONA_TRAINING_PROCESSES"):
        load_deployment({"PERSONA_TRAINING_PROCESSES": "two"})
    with pytest.raises(SettingsError, match="PERSONA_GPUS=2 is fewer than PERSONA_TRAINING_PROCESSES=4"):
        load_deployment({"PERSONA_DEPLOYMENT": "k8s", "PERSONA_GPUS": "2", "PERSONA_TRAINING_PROCESSES": "4"})


@pytest.mark.slow
def test_the_training_step_job_asks_for_a_gpu_per_process(tmp_path):
    ops = _gpu_ops(_dump_ops(tmp_path, PERSONA_TRAINING_PROCESSES="4", PERSONA_GPUS="4")["ops"])
    for name, op in ops.items():
        manifest = step_job_manifest(name, op["tags"])
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        (container,) = manifest["spec"]["template"]["spec"]["containers"]
        gpus = container["resources"]["limits"][GPU_RESOURCE]
        assert gpus == container["resources"]["requests"][GPU_RESOURCE], name
        assert gpus == ("4" if name.endswith("__lora_training") else "1"), name
