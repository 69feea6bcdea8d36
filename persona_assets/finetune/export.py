"""`persona export labels`: a country's training data from the warehouse as a file Hugging Face `datasets` and
TRL read directly (no Dagster here).

JSON Lines (``.jsonl``, ``.json``) or Parquet (``.parquet``): TRL's columns first (SFT: prompt, completion;
DPO: prompt, chosen, rejected), then where each example comes from: its row_id in the warehouse and its
input_ids (the claim, the ICM label), which `persona lineage` follows back to the survey row.
"""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl

from persona_platform.resources.files import write_atomic

FORMATS = {"sft": "sft_examples", "dpo": "preference_pairs"}
TRL_COLUMNS = {"sft": ["prompt", "completion"], "dpo": ["prompt", "chosen", "rejected"]}
SOURCE_COLUMNS = ["row_id", "country", "variant", "labels", "input_ids", "run_id", "code_version"]
SUFFIXES = (".jsonl", ".json", ".parquet")


def export_frame(rows: pl.DataFrame, fmt: str) -> pl.DataFrame:
    """The rows as exported: TRL's columns, then the sources' (those the table has), in row order."""
    sources = [c for c in SOURCE_COLUMNS if c in rows.columns]
    return rows.sort("row_id").select(TRL_COLUMNS[fmt] + sources)


def write_dataset(frame: pl.DataFrame, path: Path) -> str:
    """Write the frame whole or not at all, in the layout the suffix names; its sha256."""
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{path}: unknown file type {path.suffix!r}; use one of {', '.join(SUFFIXES)}")
    buffer = io.BytesIO()
    if path.suffix == ".parquet":
        frame.write_parquet(buffer)
    else:
        frame.write_ndjson(buffer)
    return write_atomic(path, buffer.getvalue())
