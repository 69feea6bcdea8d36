"""LoRA training in several processes (resources/launcher.py) on this CPU: 2 ranks over gloo under torchrun.

The reference is the one-process run in the test's own process, on an engine's loaded model, with the same
seed, examples and global batch. A 2-process run must train to the same adapter: each rank takes a disjoint
half of every batch, and the loss is normalised by the whole batch's counted tokens, so the mean of the ranks'
gradients is the gradient of the one-process loss.

Tolerance (ADAPTER_TOLERANCE = 1e-4 on any adapter weight): what differs is float32 arithmetic order (two
partial sums of the token losses instead of one, an all-reduce of the gradients), relative error ~1e-7, which
Adam's per-weight normalisation can turn into ~1e-6 absolute after a few steps of lr 1e-2 (measured: 1.9e-6
for DDP and FSDP on these examples, updates up to 0.17). The wrong objective, the plain mean of the two
ranks' per-shard mean losses (every shard weighted alike whatever its token count), ends 5.3e-2 away on the
same examples (measured once by patching the loss), so 1e-4 is 50x the noise and 500x below that mistake.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys

import psutil
import pytest
from safetensors.torch import load_file

from persona_platform.resources import training
from persona_platform.resources.launcher import train_in_processes
from persona_platform.resources.training import LoraTraining, TrainingError, rank_shard, run_fingerprint

ADAPTER_TOLERANCE = 1e-4
SETTINGS = LoraTraining(
    rank=4,
    alpha=8,
    dropout=0.0,  # dropout masks would differ between one process and two
    target_modules=("q_proj", "v_proj"),
    learning_rate=1e-2,
    epochs=2,
    batch_size=4,
    checkpoint_every=100,
)
# Twelve chats of unequal lengths, so the two halves of a batch hold different numbers of counted tokens.
CHATS = [
    [("user", f"Question {i} " * (1 + i % 5)), ("assistant", f"Answer number {i}. " * (1 + (i * 3) % 7))]
    for i in range(12)
]


@pytest.fixture(scope="module")
def engine(tiny_llm):
    from persona_platform.resources.llm.transformers_backend import load_transformers_engine

    return load_transformers_engine("tiny", tiny_llm.model_path(), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def examples(engine):
    return engine.training_examples(CHATS)


@pytest.fixture(scope="module")
def one_process(engine, examples, tmp_path_factory):
    """The reference: one process, in this one, on the engine's model."""
    out = tmp_path_factory.mktemp("one")
    return engine.train_adapter("one", examples, SETTINGS, out / "c.pt", out / "adapter")


def weights(outcome) -> dict:
    return load_file(str(outcome.adapter_dir / "adapter_model.safetensors"))


def max_difference(a, b) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def assert_disjoint_shards(outcome, examples, settings):
    """Within every epoch the ranks trained on disjoint sets of examples that together are all of them."""
    assert [s["rank"] for s in outcome.shards] == list(range(settings.processes))
    for epoch in range(settings.epochs):
        per_rank = [set(s["examples"][epoch]) for s in outcome.shards]
        assert all(per_rank), "a rank trained on nothing"
        assert sum(len(s) for s in per_rank) == len(set().union(*per_rank)) == len(examples)
    assert sum(s["tokens"] for s in outcome.shards) == outcome.tokens_trained


def test_the_shards_of_a_batch_are_disjoint_and_cover_it():
    batch = [7, 3, 9, 0, 5]
    shards = [rank_shard(batch, r, 2) for r in range(2)]
    assert shards == [[7, 9, 5], [3, 0]]
    assert rank_shard(batch, 0, 1) == batch
    assert rank_shard([4], 1, 2) == []  # the last batch of an epoch may leave a rank none


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"processes": 0}, "processes must be a whole number >= 1, got 0"),
        ({"processes": 2.5}, "processes must be a whole number"),
        ({"strategy": "zero3"}, "strategy must be one of ddp, fsdp, got 'zero3'"),
        ({"strategy": "fsdp"}, "strategy fsdp shards the base across processes; it needs processes > 1"),
        ({"processes": 2, "quantization": "4bit"}, "QLoRA .* trains in one process; set processes=1"),
        ({"processes": 8}, "batch_size 4 is smaller than processes 8"),
    ],
)
def test_bad_launch_settings_are_refused_in_one_line(fields, message, examples):
    with pytest.raises(TrainingError, match=message) as caught:
        training.prepare_run("agent", examples, dataclasses.replace(SETTINGS, **fields))
    assert "\n" not in str(caught.value)


def test_more_processes_than_gpus_is_refused_before_anything_starts(examples, tmp_path):
    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("two GPUs are visible here")
    with pytest.raises(TrainingError, match=r"processes=2 needs a GPU per process; \d+ visible here"):
        train_in_processes(
            "agent",
            examples,
            dataclasses.replace(SETTINGS, processes=2),
            model_path="unused",
            device="cuda",
            dtype="float32",
            pad_id=0,
            checkpoint_path=tmp_path / "c.pt",
            adapter_dir=tmp_path / "a",
        )
    assert not (tmp_path / "a").exists()


def test_a_one_process_run_keeps_its_fingerprint_and_more_processes_change_it(examples):
    fields = dataclasses.asdict(SETTINGS)
    del fields["processes"], fields["strategy"]
    before = json.dumps([fields, "tiny"])  # what run_fingerprint hashed before processes existed
    digest = hashlib.sha256(before.encode())
    for ids, mask in examples:
        digest.update(json.dumps([ids, mask]).encode())
    assert run_fingerprint(SETTINGS, examples, "tiny") == digest.hexdigest()[:16]
    two = run_fingerprint(dataclasses.replace(SETTINGS, processes=2), examples, "tiny")
    fsdp = run_fingerprint(dataclasses.replace(SETTINGS, processes=2, strategy="fsdp"), examples, "tiny")
    assert len({two, fsdp, digest.hexdigest()[:16]}) == 3


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_train_the_adapter_one_process_trains(
    strategy, engine, examples, one_process, tmp_path
):
    settings = dataclasses.replace(SETTINGS, processes=2, strategy=strategy)
    lines, steps = [], []
    loads = engine.usage.model_loads
    two = engine.train_adapter(
        f"two-{strategy}",
        examples,
        settings,
        tmp_path / "c.pt",
        tmp_path / "adapter",
        log=lines.append,
        progress=lambda step, total, numbers: steps.append((step, total)),
    )
    assert max_difference(one_process, two) <= ADAPTER_TOLERANCE
    assert [p["loss"] for p in two.losses] == pytest.approx([p["loss"] for p in one_process.losses], abs=1e-5)
    assert (two.steps, two.tokens_trained) == (one_process.steps, one_process.tokens_trained)
    assert_disjoint_shards(two, examples, settings)
    # A load of the base in each process; the step's own model untouched and serving the adapter.
    assert engine.usage.model_loads == loads + 2 and two.model_loads == 2
    assert f"two-{strategy}" in engine.adapters
    assert steps == [(s, two.steps) for s in range(1, two.steps + 1)]  # rank 0's progress, streamed
    assert any(line.startswith("rank 1: ") for line in lines)  # every rank's log, streamed
    assert (tmp_path / "c.pt").exists()  # rank 0's checkpoint
    if strategy == "fsdp":
        held = [line for line in lines if "parameters (fsdp)" in line]
        assert len(held) == 2
        for line in held:  # each rank holds about half of the model
            local, whole = (int(n.replace(",", "")) for n in line.split("holds ")[1].split()[:5:4])
            assert 0.4 < local / whole < 0.6


@pytest.mark.slow
def test_two_processes_resume_a_checkpoint_and_end_where_one_uninterrupted_process_does(
    engine, examples, one_process, tmp_path
):
    # One epoch in this process: its checkpoint at the end of the epoch is the one an uninterrupted
    # two-epoch run writes at that step.
    checkpoint = tmp_path / "c.pt"
    first = engine.train_adapter(
        "first", examples, dataclasses.replace(SETTINGS, epochs=1), checkpoint, tmp_path / "first"
    )
    lines = []
    resumed = engine.train_adapter(
        "resumed",
        examples,
        dataclasses.replace(SETTINGS, processes=2),
        checkpoint,
        tmp_path / "resumed",
        log=lines.append,
    )
    assert resumed.resumed_from_step == first.steps == one_process.steps // 2
    assert any("resuming from step 3 of 6" in line for line in lines)
    assert max_difference(one_process, resumed) <= ADAPTER_TOLERANCE
    assert len(resumed.losses) == resumed.steps  # the loss curve of the whole run, from the checkpoint on
    assert all(len(epochs) == 1 for epochs in (s["examples"] for s in resumed.shards))  # only the 2nd epoch


@pytest.mark.slow
def test_a_failing_rank_fails_the_training_with_its_error_in_one_line(engine, examples, tmp_path):
    # Only rank 0 writes checkpoints: with a file where the checkpoint's directory should be, it alone fails.
    (tmp_path / "not-a-directory").write_text("")
    with pytest.raises(TrainingError) as caught:
        engine.train_adapter(
            "failing",
            examples,
            dataclasses.replace(SETTINGS, processes=2, checkpoint_every=1),
            tmp_path / "not-a-directory" / "c.pt",
            tmp_path / "adapter",
        )
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("failing: training rank 0 of 2 failed: ")
    assert "Error" in message and "not-a-directory" in message
    assert "failing" not in engine.adapters


KILLED_STEP = """
import dataclasses, sys
from pathlib import Path
from persona_platform.resources.llm.transformers_backend import load_transformers_engine
from persona_platform.resources.training import LoraTraining
from tests.resources.test_multiprocess_training import CHATS, SETTINGS

engine = load_transformers_engine("tiny", sys.argv[1], device="cpu", dtype="float32")
out = Path(sys.argv[2])

def progress(step, total, numbers):
    print("step", step, flush=True)

engine.train_adapter("killed", engine.training_examples(CHATS), dataclasses.replace(SETTINGS, processes=2,
    epochs=1000), out / "c.pt", out / "adapter", progress=progress)
"""


@pytest.mark.slow
def test_no_training_process_outlives_a_step_killed_with_sigkill(tiny_llm, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    children = []
    step = subprocess.Popen(
        [sys.executable, "-c", KILLED_STEP, tiny_llm.model_path(), str(tmp_path)],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in step.stdout:  # training under way: torchrun and both ranks are up
            if line.startswith("step"):
                break
        children = psutil.Process(step.pid).children(recursive=True)
        assert len(children) >= 3, children  # torchrun and two ranks
        step.kill()
        step.wait()
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"left behind: {[p.cmdline()[-3:] for p in alive]}"
    finally:  # whatever happened above, nothing this test started is left running
        if step.poll() is None:
            step.kill()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.send_signal(signal.SIGKILL)
