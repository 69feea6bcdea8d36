"""Progress: throttled log lines, pieces of long engine calls, the run log a user reads, the live terminal."""

import os
import pty
import select
import subprocess

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from persona_platform.persona_assets.progress import Tracker
from persona_platform.persona_assets.steps import ReportingEngine
from tests.conftest import PERSONA


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_tracker_logs_first_then_at_intervals_then_last_with_an_eta():
    clock, lines = Clock(), []
    track = Tracker(lines.append, "ICM Aldoria (A)", 100, every_s=10, clock=clock)
    for done in range(1, 101):
        clock.now = done * 0.5  # 2 iterations a second
        track(done, fields={"energy": -1.23456, "accepted": done // 2})
    # first, at 10.5 s, 20.5 s, ... (every 10 s), and the last
    assert len(lines) == 1 + 4 + 1, lines
    assert lines[0].startswith("ICM Aldoria (A): 1/100 (1%), energy -1.235, accepted 0")
    # at 41/100 after 20.5 s: 40 iterations since the first update took 20.5 s; 59 to go take 30 s
    assert lines[2].startswith("ICM Aldoria (A): 41/100") and lines[2].endswith("ETA 0m30s")
    assert lines[-1].startswith("ICM Aldoria (A): 100/100 (100%)") and "ETA" not in lines[-1]


def test_a_growing_total_does_not_log_every_call_end():
    clock, lines = Clock(), []
    track = Tracker(lines.append, "generate requests", 0, every_s=10, clock=clock, log_last=False)
    for call in range(1, 6):
        track.total += 3
        track(3 * call)
    assert lines == ["generate requests: 3/3 (100%), elapsed 0m00s"]


class BatchingEngine:
    """Finishes requests in batches of ``batch`` and says so, as the transformers backend does; with
    ``batch=None`` it says nothing on the way, as vLLM's one call does."""

    model_id = "batching"

    def __init__(self, batch: int | None):
        self.batch, self.progress, self.calls = batch, None, []

    def finished(self, requests: int) -> None:
        if self.progress is not None:
            self.progress(requests)

    def generate(self, requests):
        self.calls.append(len(requests))
        if self.batch:
            for start in range(0, len(requests), self.batch):
                self.finished(len(requests[start : start + self.batch]))
        return [f"reply {r}" for r in requests]


def test_a_long_generate_call_goes_whole_and_reports_each_batch(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("persona_platform.persona_assets.progress.time.monotonic", clock)
    inner, lines = BatchingEngine(batch=100), []
    engine = ReportingEngine(inner, lines.append)
    assert engine.generate(list(range(1000))) == [f"reply {i}" for i in range(1000)]
    assert inner.calls == [1000] and engine.model_id == "batching" and inner.progress is None
    assert lines == ["generate requests: 100/1000 (10%), elapsed 0m00s"]  # the first batch; then every 10 s


def test_a_backend_silent_on_the_way_is_counted_at_the_end_of_each_call():
    inner, lines = BatchingEngine(batch=None), []
    engine = ReportingEngine(inner, lines.append)
    engine.generate(list(range(40)))
    engine.generate(list(range(60)))
    assert engine._done["generate"] == 100 and engine._trackers["generate"].total == 100
    assert lines[0].startswith("generate requests: 40/40")


def test_the_run_log_shows_icm_progress_and_runs_carry_their_jobs(sample_run):
    """The quick start's runs: each under a named job (the UI's partition panel shows it), and the ICM
    step's log has progress lines with iteration, energy, acceptance and temperature."""
    assert sample_run.returncode == 0, sample_run.stderr
    instance = DagsterInstance.from_config(str(sample_run.home / "dagster"))
    runs = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))
    assert runs and all(r.job_name != "__ASSET_JOB" for r in runs), {r.job_name for r in runs}
    messages = [e.message for r in runs for e in instance.all_logs(r.run_id)]
    progress = [m for m in messages if m.startswith("ICM ") and "/" in m and "energy" in m]
    assert progress and all(" T " in m and "accepted" in m for m in progress)
    assert any("(100%)" in m for m in progress)
    # A warning transformers (or anything) repeats per call would drown the terminal.
    warnings = [line for line in sample_run.stderr.splitlines() if "Warning" in line]
    assert len(warnings) == len(set(warnings)), warnings


def _read_all(fd: int, timeout: float) -> bytes:
    output = b""
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return output
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            return output
        if not chunk:
            return output
        output += chunk


@pytest.mark.slow
def test_persona_run_in_a_terminal_shows_a_live_line(tmp_path):
    """In a terminal (a pty), `persona run` draws a live progress line; piped, it prints plain lines only."""
    args = [PERSONA, "run", "--countries", "Aldoria", "--select", "group:opinions"]
    env = {**os.environ, "PERSONA_HOME": str(tmp_path / "tty"), "COLUMNS": "160"}
    leader, follower = pty.openpty()
    process = subprocess.Popen(args, stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    output = _read_all(leader, timeout=240).decode(errors="replace")
    assert process.wait(timeout=60) == 0, output
    assert "run 1/" in output and "\x1b[" in output  # the live line, drawn with terminal control codes
    piped = subprocess.run(
        args, env={**env, "PERSONA_HOME": str(tmp_path / "pipe")}, capture_output=True, text=True
    )
    assert piped.returncode == 0, piped.stderr
    assert "run 1/" not in piped.stdout + piped.stderr and "\x1b[" not in piped.stdout + piped.stderr
