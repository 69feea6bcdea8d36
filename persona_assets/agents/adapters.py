"""What later steps need of the agents' adapters: the table of trained adapters, served by an engine."""

import polars as pl

from persona_platform.resources.llm import Engine


def serve_adapters(engine: Engine, adapters: pl.DataFrame) -> None:
    """Serve every adapter of a table of trained adapters (``agents.lora_adapters``,
    ``finetune.country_adapters``) under the name its rows record in ``adapter`` (an agent's key; a country
    adapter's ``country:<country>/<variant>/<labels>``), reloaded when its files changed."""
    for r in adapters.iter_rows(named=True):
        engine.add_adapter(r["adapter"], r["adapter_path"], r["sha256"])
