"""What later steps need of the agents' adapters: the table of trained adapters, served by an engine."""

import polars as pl

from persona_platform.resources.llm import Engine


def serve_adapters(engine: Engine, adapters: pl.DataFrame) -> None:
    """Serve every adapter of the ``agents.lora_adapters`` rows under its agent's key (reloaded when its files
    changed)."""
    for r in adapters.iter_rows(named=True):
        engine.add_adapter(r["agent"], r["adapter_path"], r["sha256"])
