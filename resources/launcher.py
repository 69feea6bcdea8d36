"""LoRA training in several processes: torchrun launched from the step, one rank per process.

``train_in_processes`` (the step's side) writes the run (examples, settings, where the base is) to a job file
and starts ``python -m torch.distributed.run --standalone --nproc-per-node N -m <this module> worker JOB``
(gloo on CPU, NCCL on GPUs: one process per GPU). Each rank loads the base once, adds the adapter from the
same seed, and runs ``training.train_lora``, which shards every batch across the ranks; rank 0 writes the
checkpoints and the adapter, and the outcome. Nothing of the parent's loaded model is shared: a process
holds its own load.

What the step sees:

- the ranks' log lines, streamed into ``log`` as they come (``rank R: ...``), and rank 0's progress into
  ``progress`` (a marked JSON line per optimizer step);
- a failure in any rank as one ``TrainingError`` line naming the rank and its error (the first rank to fail;
  the others are then stopped by torchrun), the full traceback in the log before it;
- no process left behind: torchrun and every rank die with their parent (``PR_SET_PDEATHSIG`` on Linux, and
  a watchdog thread that notices the parent gone elsewhere), the step's process SIGKILLed included; a step
  that stops otherwise (an exception, Dagster terminating the run) stops torchrun, which stops its ranks.

Run as a module it is torchrun's agent (``agent``) or one rank (``worker JOB``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from persona_platform.resources import training

MODULE = "persona_platform.resources.launcher"
# A line a rank prints that is progress, not a message: the marker, then JSON.
PROGRESS = "@persona-training-progress "
# Set by the agent for its ranks: the pid they must outlive no longer than.
AGENT_PID = "PERSONA_TRAINING_AGENT_PID"
PARENT_PID = "PERSONA_TRAINING_PARENT_PID"
# How long a stopped torchrun has to stop its ranks before the whole group is killed.
STOP_GRACE_S = 15


def train_in_processes(
    name: str,
    examples: Sequence[training.Example],
    settings: training.LoraTraining,
    *,
    model_path: str,
    device: str,
    dtype: str,
    pad_id: int,
    checkpoint_path: Path,
    adapter_dir: Path,
    log: Callable[[str], None] = lambda message: None,
    progress: Callable[[int, int, dict], None] | None = None,
) -> training.TrainingOutcome:
    """Train adapter ``name`` in ``settings.processes`` processes on the base at ``model_path`` (``device``:
    cpu or cuda, already resolved; ``dtype``: float32, bfloat16 or float16); the outcome as one process
    would report it, with ``model_loads`` = the processes and ``shards`` = what each rank trained on."""
    training.prepare_run(name, examples, settings)
    processes = settings.processes
    if device.startswith("cuda"):
        import torch

        visible = torch.cuda.device_count()
        if visible < processes:
            raise training.TrainingError(
                f"{name}: processes={processes} needs a GPU per process; {visible} visible here"
            )
    elif device != "cpu":
        raise training.TrainingError(f"{name}: processes > 1 trains on cpu or cuda, not {device!r}")
    job_dir = Path(tempfile.mkdtemp(prefix="persona-training-"))
    try:
        job = job_dir / "job.json"
        job.write_text(
            json.dumps(
                {
                    "name": name,
                    "settings": asdict(settings),
                    "examples": [[list(ids), [bool(m) for m in mask]] for ids, mask in examples],
                    "model_path": model_path,
                    "device": device,
                    "dtype": dtype,
                    "pad_id": pad_id,
                    "checkpoint_path": str(checkpoint_path),
                    "adapter_dir": str(adapter_dir),
                }
            )
        )
        log(f"{name}: training in {processes} processes ({settings.strategy}, {device}) under torchrun")
        _run_agent(name, job, processes, device, log, progress)
        outcome = json.loads((job_dir / "outcome.json").read_text())
        shards = [json.loads(p.read_text()) for p in sorted(job_dir.glob("shard-*.json"))]
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)
    return training.TrainingOutcome(
        adapter_dir=adapter_dir,
        fingerprint=training.files_fingerprint(adapter_dir),
        steps=outcome["steps"],
        tokens_trained=outcome["tokens_trained"],
        seconds=outcome["seconds"],
        resumed_from_step=outcome["resumed_from_step"],
        losses=outcome["losses"],
        model_loads=processes,
        shards=sorted(shards, key=lambda s: s["rank"]),
    )


def _run_agent(name: str, job: Path, processes: int, device: str, log, progress) -> None:
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = {
        **os.environ,
        PARENT_PID: str(os.getpid()),
        # torchrun would set 1 with a banner; on CPU the cores are shared out instead.
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        sys.executable,
        "-m",
        MODULE,
        "agent",
        "--standalone",  # a rendezvous on a free local port
        f"--nproc-per-node={processes}",
        "--max-restarts=0",
        "-m",
        MODULE,
        "worker",
        str(job),
    ]
    agent = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        bufsize=1,
        start_new_session=True,  # its own process group: stopped as one, apart from the step's
    )
    last = ""
    try:
        for line in agent.stdout:
            line = line.rstrip("\n")
            if line.startswith(PROGRESS):
                if progress is not None:
                    step, total, numbers = json.loads(line[len(PROGRESS) :])
                    progress(step, total, numbers)
            elif line.strip():
                last = line
                log(line)
        code = agent.wait()
    finally:
        _stop(agent)
    if code != 0:
        raise training.TrainingError(_failure(name, job.parent, processes, code, last))


def _stop(agent: subprocess.Popen) -> None:
    """torchrun stopped with its ranks (SIGTERM: it forwards it), then its group killed if it hangs."""
    if agent.poll() is None:
        agent.terminate()
        try:
            agent.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
    if agent.stdout is not None:
        agent.stdout.close()


def _failure(name: str, job_dir: Path, processes: int, code: int, last: str) -> str:
    """One line: the first rank to fail and its error (the others fail after it, on a broken connection),
    or how the processes ended when no rank could say."""
    errors = [json.loads(p.read_text()) for p in job_dir.glob("error-*.json")]
    if errors:
        first = min(errors, key=lambda e: e["time"])
        return f"{name}: training rank {first['rank']} of {processes} failed: {first['error']}"
    how = f"signal {-code}" if code < 0 else f"exit code {code}"
    return f"{name}: the {processes} training processes ended with {how}; last output: {last[-300:]}"


# -- in the launched processes ---------------------------------------------------------------------------


def die_with_parent(parent: int) -> None:
    """End this process when ``parent`` (the pid that started it) dies: SIGKILL from the kernel on Linux,
    and a watchdog thread anywhere (it also covers a parent gone before the kernel was asked)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.5)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def agent_main(argv: list[str]) -> None:
    """torchrun, dying with the step that started it; its ranks die with it."""
    die_with_parent(int(os.environ[PARENT_PID]))
    os.environ[AGENT_PID] = str(os.getpid())
    from torch.distributed.run import main

    main(argv)


def line(text: str) -> None:
    """One line on the output every rank shares, in one write: print() writes the text and its newline
    apart, and another rank's line could land between them (two lines run together, one of them lost to
    the reader)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def worker_main(job_path: str) -> None:
    """One rank: load the base, add the adapter, train its shards; errors recorded for the step."""
    die_with_parent(int(os.environ[AGENT_PID]))
    rank = int(os.environ["RANK"])
    job_dir = Path(job_path).parent

    def say(message: str) -> None:
        line(f"rank {rank}: {message}")

    try:
        _train_rank(json.loads(Path(job_path).read_text()), rank, job_dir, say)
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
        (job_dir / f"error-{rank}.json").write_text(
            json.dumps({"rank": rank, "time": time.time(), "error": error})
        )
        traceback.print_exc()
        sys.stdout.flush()
        raise SystemExit(1) from None


def _train_rank(job: dict, rank: int, job_dir: Path, say) -> None:
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    settings = training.LoraTraining(
        **{**job["settings"], "target_modules": tuple(job["settings"]["target_modules"])}
    )
    name = job["name"]
    examples = [(ids, mask) for ids, mask in job["examples"]]
    training.prepare_run(name, examples, settings)
    dtype = training.resolve_dtype(job["dtype"], job["device"])
    if job["device"].startswith("cuda"):
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    base = AutoModelForCausalLM.from_pretrained(job["model_path"], dtype=dtype)
    torch.manual_seed(settings.seed)  # the LoRA initialisation: the same in every rank and in one process
    model = get_peft_model(base, settings.lora_config(), adapter_name=name)
    del base

    def progress(step: int, total: int, numbers: dict) -> None:
        line(PROGRESS + json.dumps([step, total, numbers]))

    outcome = training.train_lora(
        model,
        name,
        name,
        examples,
        settings,
        pad_id=job["pad_id"],
        cpu=job["device"] == "cpu",
        checkpoint_path=Path(job["checkpoint_path"]),
        adapter_dir=Path(job["adapter_dir"]),
        log=say,
        progress=progress,
    )
    (job_dir / f"shard-{rank}.json").write_text(json.dumps(outcome.shards[0]))
    if rank == 0:
        fields = ("steps", "tokens_trained", "seconds", "resumed_from_step", "losses")
        (job_dir / "outcome.json").write_text(json.dumps({f: getattr(outcome, f) for f in fields}))
        say(f"{name}: {outcome.steps} steps, {outcome.tokens_trained} tokens in {outcome.seconds:.1f} s")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1:2] == ["agent"]:
        agent_main(sys.argv[2:])
    elif sys.argv[1:2] == ["worker"] and len(sys.argv) == 3:
        worker_main(sys.argv[2])
    else:
        raise SystemExit(f"usage: python -m {MODULE} agent TORCHRUN-ARGS | worker JOB")
