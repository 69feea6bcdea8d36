"""The agent chain as `persona run` leaves it, checked independently; and a training killed mid-way."""

import hashlib
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import duckdb
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from persona_platform.persona_assets.agents.tables import perplexity
from persona_platform.resources.llm.tiny import tiny_model_dir
from persona_platform.resources.settings import DATA_DIR
from persona_platform.resources.training import files_fingerprint
from tests.conftest import ARTIFACTS, PERSONA, persona

pytestmark = pytest.mark.slow


def query(home, sql):
    with duckdb.connect(str(Path(home) / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_each_adapter_is_best_on_its_own_held_out_set(sample_run):
    assert sample_run.returncode == 0, sample_run.stderr
    cells = {
        (m, a): p
        for m, a, p in query(
            sample_run.home, "select model, heldout_agent, perplexity from primary__agents.perplexity_matrix"
        )
    }
    agents = sorted({a for _, a in cells})
    models = ["base", *agents]
    table = ["| model | " + " | ".join(agents) + " |", "|---" * (len(agents) + 1) + "|"]
    table += [f"| {m} | " + " | ".join(f"{cells[(m, a)]:.1f}" for a in agents) + " |" for m in models]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "perplexity_matrix.md").write_text("\n".join(table) + "\n")
    print("\nperplexity on held-out utterances (rows: model, columns: held-out set)\n" + "\n".join(table))
    for agent in agents:
        column = {m: cells[(m, agent)] for m in models}
        assert min(column, key=column.get) == agent, column
        assert column[agent] < column["base"]


def recompute(model_dir, examples):
    """Token-weighted perplexity of the targets with plain transformers forward passes, one example at a
    time."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for context, target in examples:
            messages = [{"role": r, "content": c} for r, c in json.loads(context)]
            prompt = tokenizer(
                tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                add_special_tokens=False,
            )["input_ids"]
            answer = tokenizer(target, add_special_tokens=False)["input_ids"]
            logits = model(input_ids=torch.tensor([prompt + answer])).logits[0].double()
            logprobs = torch.log_softmax(logits, dim=-1)
            for j, token in enumerate(answer):
                nll -= float(logprobs[len(prompt) + j - 1, token])
            tokens += len(answer)
    return perplexity(nll, tokens)


def test_a_perplexity_cell_recomputed_independently(sample_run):
    home = sample_run.home
    agent = "theodorequist"
    examples = query(
        home,
        "select context, target from agents.completion_examples "
        f"where agent = '{agent}' and split = 'test' order by row_id",
    )
    base_dir = tiny_model_dir(home / "models", DATA_DIR)  # the primary experiment's, built by the run
    stored = dict(
        (
            (m, p)
            for m, p in query(
                home,
                f"select model, perplexity from "
                f"primary__agents.perplexity_matrix where heldout_agent = '{agent}'",
            )
        )
    )
    assert recompute(base_dir, examples) == pytest.approx(stored["base"], rel=1e-6)
    (merged_dir,) = query(
        home, f"select model_path from primary__agents.merged_models where agent = '{agent}'"
    )[0]
    # The merged weights stand in for base + adapter (their logits agree to 1e-4).
    assert recompute(merged_dir, examples) == pytest.approx(stored[agent], rel=1e-4)


def test_merged_models_are_complete_and_match_base_plus_adapter(sample_run):
    for agent, path, sha, difference in query(
        sample_run.home,
        "select agent, model_path, sha256, max_logit_difference from primary__agents.merged_models",
    ):
        assert difference <= 1e-4, agent
        names = {p.name for p in Path(path).iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
        assert files_fingerprint(Path(path)) == sha


def test_corpora_respect_the_meeting_split(sample_run):
    home = sample_run.home
    both = query(
        home, "select meeting_id from agents.board_turns group by meeting_id having count(distinct split) > 1"
    )
    assert both == []
    split_of = dict(query(home, "select distinct meeting_id, split from agents.board_turns"))
    assert {
        split_of[m] for (m,) in query(home, "select distinct meeting_id from agents.training_conversations")
    } == {"train"}
    for meeting, split in query(home, "select meeting_id, split from agents.completion_examples"):
        assert split_of[meeting] == split
    words = query(home, "select min(words) from agents.monologues")[0][0]
    assert words > 150


TRAINING_CONFIG = """
ops:
  lora_training:
    config: {learning_rate: 0.003, epochs: 4, max_length: 256, checkpoint_every: 2}
"""
TRAIN = [
    "run",
    "--agents",
    "theodorequist",
    "--select",
    'key:"primary/agents/lora_adapters" or key:"primary/agents/training_loss"',
]


def test_a_killed_training_resumes_from_its_checkpoint(tmp_path):
    config = tmp_path / "training.yaml"
    config.write_text(TRAINING_CONFIG)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    for home in (killed, clean):
        prepared = persona(
            home, "run", "--agents", "theodorequist", "--select", '+key:"agents/training_conversations"'
        )
        assert prepared.returncode == 0, prepared.stderr

    env = {**os.environ, "PERSONA_HOME": str(killed)}
    process = subprocess.Popen(
        [PERSONA, *TRAIN, "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoints = killed / "artifacts" / "primary" / "checkpoints" / "lora" / "theodorequist"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("*.pt")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "training finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert query(killed, "select count(*) from duckdb_tables() where table_name = 'lora_adapters'") == [(0,)]

    resumed = persona(killed, *TRAIN, "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr
    assert (
        "left unfinished by a process that is gone; marked failed" in resumed.stderr
    )  # no slot held forever
    uninterrupted = persona(clean, *TRAIN, "--config", str(config))
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    (steps, resumed_from, path) = query(
        killed, "select steps, resumed_from_step, adapter_path from primary__agents.lora_adapters"
    )[0]
    (clean_steps, clean_resumed, clean_path) = query(
        clean, "select steps, resumed_from_step, adapter_path from primary__agents.lora_adapters"
    )[0]
    assert resumed_from is not None and 0 < resumed_from < steps
    assert clean_resumed is None and clean_steps == steps
    # Resumed training ends with the very weights of an uninterrupted one (the configs differ only in
    # the base model's path, which lies in each home).
    weights = [
        hashlib.sha256((Path(p) / "adapter_model.safetensors").read_bytes()).hexdigest()
        for p in (path, clean_path)
    ]
    assert weights[0] == weights[1]
    losses = query(killed, "select step from primary__agents.training_loss order by step")
    assert [s for (s,) in losses] == list(range(1, steps + 1))
    assert math.isfinite(query(killed, "select final_loss from primary__agents.lora_adapters")[0][0])
