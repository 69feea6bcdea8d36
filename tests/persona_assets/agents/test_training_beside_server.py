"""`persona run` of the agents' training and merging with the generator served elsewhere
(PERSONA_ENGINE=openai): adapters are trained and merged here with transformers + PEFT on the training base
(PERSONA_TRAIN_MODEL, the embedded model) and registered with the server, which serves them by name. The
server is the OpenAI-compatible double with vLLM's runtime adapter routes (tests/adapter_server_double.py)."""

from pathlib import Path

import duckdb
import pytest

from persona_platform.resources.training import files_fingerprint
from tests.adapter_server_double import AdapterServer, adapter_server
from tests.conftest import persona

pytestmark = pytest.mark.slow

AGENT = "theodorequist"
CONFIG = """
ops:
  lora_training:
    config: {learning_rate: 0.003, epochs: 1, max_length: 256, checkpoint_every: 10}
"""


def test_persona_run_trains_and_merges_adapters_for_a_served_model(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(CONFIG)
    home = tmp_path / "home"
    with adapter_server() as url:
        result = persona(
            home,
            "run",
            "--agents",
            AGENT,
            "--select",
            '+key:"primary/agents/merged_models"',
            "--config",
            str(config),
            extra_env={
                "PERSONA_ENGINE": "openai",
                "PERSONA_MODEL": "served-base",
                "PERSONA_ENGINE_BASE_URL": url,
                "PERSONA_ENGINE_API_KEY": "sk-test",
                "PERSONA_TRAIN_MODEL": "tiny",
            },
            timeout=600,
        )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        [(adapter_path, sha, steps, model_id)] = con.execute(
            "select adapter_path, sha256, steps, model_id from primary__agents.lora_adapters"
        ).fetchall()
        [(merged_path, merged_sha, difference)] = con.execute(
            "select model_path, sha256, max_logit_difference from primary__agents.merged_models"
        ).fetchall()
    assert model_id == "served-base" and steps > 0
    assert files_fingerprint(Path(adapter_path)) == sha
    assert difference <= 1e-4 and files_fingerprint(Path(merged_path)) == merged_sha
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in Path(merged_path).iterdir()
    }

    # The server serves the trained adapter under the agent's name, from the adapter directory; every load
    # sent that directory and the key.
    assert AdapterServer.adapters == {AGENT: adapter_path}
    loads = [c for c in AdapterServer.adapter_calls if c["route"] == "load_lora_adapter"]
    assert loads and all(c["body"] == {"lora_name": AGENT, "lora_path": adapter_path} for c in loads)
    assert all(c["auth"] == "Bearer sk-test" for c in AdapterServer.adapter_calls)
