"""LoRA training on the embedded model: the agent chain trained in one process and in two, and the country
persona adapters beside them; throughput, wall time and model loads side by side.

Runs the primary experiment's agent assets for the sample board in this process, in a fresh home, with the
embedded run profile: first with ``lora_training`` in one process (on the engine's own loaded model), then
with ``processes: 2`` (two ranks under torchrun, gloo on CPU; each loads the base). Reports per run the
training tokens per second, the training and chain wall time, the model loads, and how far each agent's
two-process adapter is from its one-process adapter (max |weight difference|). Then the country chain (ICM
labels, their datasets, an adapter per country, variant and label source) in one process: the same numbers
for the country adapters, which share the chain's one load of the base.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]

PROCESSES = (1, 2)


EXPERIMENT = "primary"
# The ICM search, the datasets and the adapters (each a step with two outputs), and what they read.
COUNTRY_CHAIN = (
    'group:opinions or key:"primary/elicitation/icm_*" or key:"primary/finetune/sft_examples" '
    'or key:"primary/finetune/preference_pairs" or key:"primary/finetune/country_*" '
    'and not key:"primary/finetune/country_alignment"'
)


def _chain(defs, instance, selection, config: dict, what: str) -> tuple[float, int]:
    """Run ``selection`` in this process; its wall seconds and the loads of the base it made."""
    from persona_platform.persona_assets.runner import execute_plan, plan_runs
    from persona_platform.resources.llm.resource import process_usage

    before = process_usage()
    started = time.perf_counter()
    outcomes = execute_plan(defs, plan_runs(defs, selection), instance, config, log=lambda *a, **k: None)
    seconds = time.perf_counter() - started
    failed = [o.error for o in outcomes if not o.success]
    if failed:
        raise RuntimeError(f"{what} failed: {failed[0]}")
    return seconds, process_usage().since(before).model_loads


def run() -> dict:
    home = Path(tempfile.mkdtemp(prefix="persona-bench-training-"))
    # Before the code location reads its settings: a home of its own, and the primary experiment alone.
    os.environ["PERSONA_HOME"] = str(home)
    experiments = home / "experiments"
    experiments.mkdir()
    (experiments / f"{EXPERIMENT}.yaml").write_bytes(
        (ROOT / "experiments" / f"{EXPERIMENT}.yaml").read_bytes()
    )
    os.environ["PERSONA_EXPERIMENTS"] = str(experiments)
    from dagster import AssetSelection
    from safetensors.torch import load_file

    from persona_platform.partitions import AGENTS
    from persona_platform.persona_assets.definitions import defs, settings
    from persona_platform.persona_assets.instance import EMBEDDED_PROFILE, load_op_config, prepare_instance
    from persona_platform.persona_assets.runner import experiment_op_config

    instance = prepare_instance(settings)
    # The profile is keyed by step names; the runs take op names (the experiment's: primary__lora_training).
    base_config = experiment_op_config(defs, load_op_config(EMBEDDED_PROFILE), {EXPERIMENT}, EMBEDDED_PROFILE)
    agent_chain = AssetSelection.groups("agents") | AssetSelection.tag("persona/domain", "agents")
    runs = {}
    for processes in PROCESSES:
        # A fresh training each time: the run's fingerprint leaves out the number of processes (a run resumes
        # whatever it is), so the second run would find the first one's finished checkpoints.
        for trained in ("checkpoints", "adapters"):
            shutil.rmtree(settings.artifacts_dir / EXPERIMENT / trained, ignore_errors=True)
        config = copy.deepcopy(base_config)
        config.setdefault(f"{EXPERIMENT}__lora_training", {}).setdefault("config", {})["processes"] = (
            processes
        )
        seconds, loads = _chain(
            defs, instance, agent_chain, config, f"the agent chain with {processes} processes"
        )
        with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
            agents = con.execute(
                "select agent, steps, tokens_trained, seconds, adapter_path, final_loss "
                f"from {EXPERIMENT}__agents.lora_adapters order by agent"
            ).fetchall()
        runs[processes] = {
            "processes": processes,
            "chain_seconds": round(seconds, 2),
            "model_loads": loads,
            "training_seconds": round(sum(a[3] for a in agents), 2),
            "training_tokens_per_second": round(sum(a[2] for a in agents) / sum(a[3] for a in agents), 1),
            "agents": [
                {
                    "agent": a,
                    "steps": s,
                    "tokens_trained": t,
                    "seconds": round(sec, 2),
                    "tokens_per_second": round(t / sec, 1),
                    "final_loss": round(loss, 5),
                    # A copy: the next run trains into the same folder (the same run fingerprint).
                    "adapter": str(shutil.copytree(path, home / f"adapters-{processes}p" / a)),
                }
                for a, s, t, sec, path, loss in agents
            ],
        }
    countries = country_adapters(defs, instance, base_config, settings.warehouse_path)
    differences = {}
    for one, two in zip(runs[1]["agents"], runs[2]["agents"], strict=True):
        a = load_file(str(Path(one["adapter"]) / "adapter_model.safetensors"))
        b = load_file(str(Path(two["adapter"]) / "adapter_model.safetensors"))
        differences[one["agent"]] = max(float((a[k] - b[k]).abs().max()) for k in a)
    return {
        "benchmark": "lora_training",
        "model": settings.llm.model,
        "runs": [runs[p] for p in PROCESSES],
        "max_adapter_difference": differences,
        "country_adapters": countries,
        # The training time of the two-process run counts from the ranks' first step; its wall time (the
        # chain's) includes starting torchrun and a load of the base in each rank. The registry's adapters
        # train with dropout, whose masks differ between one process and two, so their adapters differ by
        # more than float noise; equality is tested with dropout 0 (tests/resources/
        # test_multiprocess_training.py).
        "dropout": sorted({a.lora.dropout for a in AGENTS}),
        "targets": {
            "one model load for the whole agent chain in one process": runs[1]["model_loads"] == 1,
            "a load of the base per rank and agent in two processes": runs[2]["model_loads"]
            == 2 * len(runs[2]["agents"]),
            "no new model load for the country chain (ICM labels and every country adapter)": countries[
                "model_loads"
            ]
            == 0,
        },
    }


def country_adapters(defs, instance, config: dict, warehouse: Path) -> dict:
    """The country chain in this process, whose engine the agents' runs loaded (its loads: those it adds,
    none while the base stays loaded); the adapters' training numbers."""
    from dagster import AssetSelection

    chain = AssetSelection.from_string(COUNTRY_CHAIN)
    config = copy.deepcopy(config)
    # The labels of one variant are enough to train on; the search of the other would double the chain.
    config.setdefault(f"{EXPERIMENT}__icm_search", {}).setdefault("config", {})["variants"] = ["all"]
    epochs = config.get(f"{EXPERIMENT}__country_adapters", {}).get("config", {}).get("epochs", 3)
    seconds, loads = _chain(defs, instance, chain, config, "the country chain")
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute(
            "select count(*), sum(steps), sum(examples), sum(tokens_trained), sum(seconds) "
            f"from {EXPERIMENT}__finetune.country_adapters"
        ).fetchone()
    adapters, steps, examples, tokens, training = rows
    return {
        "adapters": adapters,
        "steps": steps,
        "examples": examples,
        "epochs": epochs,
        "tokens_trained": tokens,
        "training_seconds": round(training, 2),
        # The loss counts one token per example (" True" or " False"), so examples are the clearer rate.
        "training_tokens_per_second": round(tokens / training, 1),
        "training_examples_per_second": round(examples * epochs / training, 1),
        "chain_seconds": round(seconds, 2),
        "model_loads": loads,
    }


def markdown(report: dict) -> str:
    runs, c = report["runs"], report["country_adapters"]
    lines = [
        f"LoRA training on `{report['model']}`: the agent chain (corpora, adapters, merged models, "
        "perplexity) with `lora_training` in one process and in two (torchrun, gloo on CPU).",
        "",
        "| | "
        + " | ".join(f"{r['processes']} process{'es' if r['processes'] > 1 else ''}" for r in runs)
        + " |",
        "|---|" + "---|" * len(runs),
        "| training tokens/s | " + " | ".join(f"{r['training_tokens_per_second']:,}" for r in runs) + " |",
        "| training wall (s, all agents) | " + " | ".join(str(r["training_seconds"]) for r in runs) + " |",
        "| chain wall (s) | " + " | ".join(str(r["chain_seconds"]) for r in runs) + " |",
        "| model loads (chain) | " + " | ".join(str(r["model_loads"]) for r in runs) + " |",
        "",
        f"Country persona adapters (1 process, SFT): {c['adapters']} adapters (country x label source, "
        f"variant all), {c['steps']} steps over {c['examples']:,} examples x {c['epochs']} epochs in "
        f"{c['training_seconds']} s: **{c['training_examples_per_second']:,} examples/s**, "
        f"{c['training_tokens_per_second']:,} counted tokens/s (one per example: the answer); the chain "
        "(ICM labels, datasets, adapters) "
        f"{c['chain_seconds']} s with {c['model_loads']} new model load(s) (the agents' runs loaded the "
        "base in this process; every adapter trains on that load).",
        "",
        "| agent | steps | tokens | "
        + " | ".join(f"s ({r['processes']}p) | tokens/s ({r['processes']}p)" for r in runs)
        + " | max adapter difference |",
        "|---|---|---|" + "---|---|" * len(runs) + "---|",
    ]
    for i, agent in enumerate(runs[0]["agents"]):
        cells = [f"{r['agents'][i]['seconds']} | {r['agents'][i]['tokens_per_second']:,}" for r in runs]
        difference = report["max_adapter_difference"][agent["agent"]]
        lines.append(
            f"| {agent['agent']} | {agent['steps']} | {agent['tokens_trained']:,} | "
            + " | ".join(cells)
            + f" | {difference:.1e} |"
        )
    lines += [
        "",
        f"The adapters train with dropout {report['dropout']}: its masks differ between one process and "
        "two, so the adapters differ beyond float noise here; with dropout 0 they agree within 1e-4 "
        "(tests/resources/test_multiprocess_training.py). The two-process run reuses the chain's loaded "
        "engine and adds a load of the base per rank and agent.",
        "",
        "Targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in report["targets"].items()),
    ]
    return "\n".join(lines)
