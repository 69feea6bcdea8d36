"""A table's columns with their descriptions, written once where the table's schema is (no Dagster here).

A ``Columns`` is the plain ``name -> polars dtype`` dict that polars, ``result_frame`` and ``asset_frame``
take as a schema, with a one-line description of each column beside it, which the asset's definition
declares (``persona_assets.common.table_columns``) and the UI's schema view and the catalogue show:

    SPLITS_SCHEMA = columns(
        ("variant", pl.String, "claim variant: all (every question) or binary (two-option questions only)"),
        ("claim_id", pl.String, "the claim's row in opinions.goqa_claims"),
    )
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

# (name, polars dtype, one-line description)
Column = tuple[str, pl.DataType | type[pl.DataType], str]


class Columns(dict):
    """Columns in order, name -> polars dtype, with ``descriptions`` (name -> one line). Built from
    ``(name, dtype, description)`` triples and other ``Columns`` (spliced in at their place); a column
    named twice or without a description is an error."""

    descriptions: dict[str, str]

    def __init__(self, *parts: Column | Columns) -> None:
        super().__init__()
        self.descriptions = {}
        for part in parts:
            if isinstance(part, Columns):
                triples = [(name, dtype, part.descriptions[name]) for name, dtype in part.items()]
            elif isinstance(part, Mapping):
                raise TypeError("a plain dict of dtypes has no descriptions: build it with columns(...)")
            else:
                triples = [part]
            for name, dtype, description in triples:
                if name in self:
                    raise ValueError(f"column {name!r} is declared twice")
                if not isinstance(description, str) or not description.strip():
                    raise ValueError(f"column {name!r} has no description")
                self[name] = dtype
                self.descriptions[name] = " ".join(description.split())


def columns(*parts: Column | Columns) -> Columns:
    """``Columns`` from ``(name, dtype, description)`` triples and ``Columns`` to splice in, in order."""
    return Columns(*parts)
