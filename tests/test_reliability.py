"""Faults and secrets: a process killed inside a warehouse write, bad settings, API keys kept out of every
record."""

import os
import signal
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer

import duckdb
import polars as pl
import pytest

from persona_platform.resources.settings import SettingsError, load_settings
from persona_platform.resources.warehouse import Warehouse
from tests.chat_api_double import FakeChatServer
from tests.conftest import PERSONA, PROJECT_ROOT, persona

# The child writes version 2 of partition A and stops inside the transaction (after the delete and the
# insert, before the commit), where the parent kills it with SIGKILL.
WRITER = """
import sys, time
import polars as pl
import persona_platform.resources.warehouse as warehouse

def stall(con):
    print("inside the transaction", flush=True)
    time.sleep(60)

if sys.argv[2] == "stall":
    warehouse.refresh_lineage_view = stall
rows = pl.DataFrame({"country": ["A"] * 50_000, "value": list(range(50_000)), "version": [2] * 50_000})
warehouse.Warehouse(sys.argv[1]).replace("faults", "rows", rows, ["country"], [("A",)])
print("committed", flush=True)
"""


def version_counts(path) -> dict:
    frame = Warehouse(path).read("faults", "rows")
    return {
        (country, version): n
        for country, version, n in frame.group_by("country", "version").len().iter_rows()
    }


def test_a_write_killed_inside_its_transaction_leaves_the_old_partition_and_a_rerun_replaces_it(tmp_path):
    path = tmp_path / "w.duckdb"
    old = pl.DataFrame(
        {"country": ["A"] * 1000 + ["B"] * 500, "value": list(range(1500)), "version": [1] * 1500}
    )
    Warehouse(path).replace("faults", "rows", old, ["country"], [("A",), ("B",)])

    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), "stall"],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "inside the transaction"
    child.kill()
    child.wait()
    assert version_counts(path) == {
        ("A", 1): 1000,
        ("B", 1): 500,
    }  # nothing of the killed write, nothing lost

    rerun = subprocess.run(
        [sys.executable, "-c", WRITER, str(path), "run"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert version_counts(path) == {("A", 2): 50_000, ("B", 1): 500}
    assert (
        Warehouse(path).read("faults", "rows").filter(pl.col("country") == "A")["value"].n_unique() == 50_000
    )


@pytest.mark.parametrize(
    "variable, value, named",
    [
        ("PERSONA_ENGINE", "gpt", "PERSONA_ENGINE: 'gpt' is not one of transformers, vllm, openai"),
        ("PERSONA_JUDGE_ENGINE", "llama", "PERSONA_JUDGE_ENGINE: 'llama'"),
        ("PERSONA_JUDGE_MAX_FAILURE_RATE", "lots", "PERSONA_JUDGE_MAX_FAILURE_RATE: 'lots'"),
        ("PERSONA_JUDGE_MAX_FAILURE_RATE", "1.5", "between 0 and 1"),
        ("PERSONA_SCHEDULE_CRON", "weekly", "PERSONA_SCHEDULE_CRON"),
        ("PERSONA_GOQA_SOURCE", "/no/such/file.csv", "PERSONA_GOQA_SOURCE: no such file"),
    ],
)
def test_bad_settings_are_refused_by_name(variable, value, named):
    with pytest.raises(SettingsError, match=named.replace("(", r"\(")):
        load_settings({variable: value})


def test_the_openai_engine_needs_its_server(tmp_path):
    with pytest.raises(SettingsError, match="PERSONA_ENGINE_BASE_URL"):
        load_settings({"PERSONA_ENGINE": "openai"})
    settings = load_settings({"PERSONA_ENGINE": "openai", "PERSONA_ENGINE_BASE_URL": "http://h:8000/v1"})
    assert (settings.judge_llm.backend, settings.judge_llm.base_url) == (
        "openai",
        "http://h:8000/v1",
    )  # the judge follows


@pytest.mark.slow
def test_no_api_key_reaches_a_log_line_metadata_entry_or_warehouse_row(tmp_path):
    keys = {
        "PERSONA_CHAT_API_KEY": "sk-chat-d41d8cd98f00",
        "PERSONA_ENGINE_API_KEY": "sk-engine-9e107d9d372b",
        "PERSONA_JUDGE_API_KEY": "sk-judge-e4d909c290d0",
    }
    FakeChatServer.calls, FakeChatServer.replies = [], ["True", "False"]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeChatServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        env = {
            **keys,
            "PERSONA_CHAT_BASE_URL": f"http://127.0.0.1:{httpd.server_address[1]}/v1",
            "PERSONA_CHAT_MODEL": "chat-7b",
        }
        result = persona(
            tmp_path,
            "run",
            "--countries",
            "Caldera",
            "--select",
            '+key:"primary/elicitation/zero_shot_chat_predictions"',
            extra_env=env,
        )
    finally:
        httpd.shutdown()
    assert result.returncode == 0, result.stderr[-3000:]
    assert FakeChatServer.calls and {c["auth"] for c in FakeChatServer.calls} == {
        f"Bearer {keys['PERSONA_CHAT_API_KEY']}"
    }
    leaks = []
    for text, where in ((result.stdout, "stdout"), (result.stderr, "stderr")):
        leaks += [f"{where}: {k}" for k, v in keys.items() if v in text]
    # Every file under the home: the warehouse, the Dagster instance (event log with every log line and
    # metadata entry, run storage with run config and tags), compute logs and artifacts.
    for root, _, files in os.walk(tmp_path):
        for name in files:
            data = open(os.path.join(root, name), "rb").read()
            leaks += [f"{os.path.join(root, name)}: {k}" for k, v in keys.items() if v.encode() in data]
    assert not leaks, leaks


ITERATIONS = 60
ICM_CONFIG = f"ops:\n  icm_search:\n    config:\n      iterations: {ITERATIONS}\n      checkpoint_every: 5\n"
ICM = ["run", "--countries", "Caldera", "--select", 'key:"primary/elicitation/icm_labels"']


def icm_rows(home):
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        labels = con.execute(
            "select row_id, icm_label from primary__elicitation.icm_labels order by row_id"
        ).fetchall()
        trace = con.execute(
            "select row_id, iteration, accepted, energy from "
            "primary__elicitation.icm_search_trace order by row_id"
        ).fetchall()
    return labels, trace


@pytest.mark.slow
def test_an_icm_search_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path):
    config = tmp_path / "icm.yaml"
    config.write_text(ICM_CONFIG)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    for home in (killed, clean):
        prepared = persona(home, "run", "--countries", "Caldera", "--select", '+key:"opinions/goqa_splits"')
        assert prepared.returncode == 0, prepared.stderr
    process = subprocess.Popen(
        [PERSONA, *ICM, "--config", str(config)],
        env={**os.environ, "PERSONA_HOME": str(killed)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoints = killed / "artifacts" / "primary" / "checkpoints" / "icm" / "Caldera"
    deadline = time.monotonic() + 300
    while not list(checkpoints.rglob("*.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the search finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    resumed = persona(killed, *ICM, "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr
    uninterrupted = persona(clean, *ICM, "--config", str(config))
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    labels, trace = icm_rows(killed)
    assert (labels, trace) == icm_rows(clean)
    assert len({r for r, _ in labels}) == len(labels) and len({r[0] for r in trace}) == len(
        trace
    )  # none twice
    assert {i for _, i, _, _ in trace} == set(
        range(ITERATIONS)
    )  # every iteration traced, the killed ones too
