"""Training data from labels: SFT examples and preference pairs per country, variant and label source (no
Dagster here).

The ICM paper's main result is about fine-tuning, not demonstrations: a model fine-tuned on ICM's labels of
a country's train claims against one fine-tuned on gold labels, and on random labels exactly as often wrong
as ICM's (``accuracy-matched``), all over the same claims: the claims ICM labelled.

- SFT: the zero-shot claim prompt, completed by " True" or " False" under the source's label; what the loss
  counts is the completion.
- Preference pairs: for each question, every claim labelled True against every sibling labelled False. The
  prompt is the zero-shot prompt up to the option; chosen and rejected complete it with the two options and
  " True", so that prompt + chosen is exactly the claim prompt the evaluation scores and the preference is
  between the two claims of a question.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import polars as pl

from persona_platform.persona_assets.elicitation.prompts import (
    CLAIM_LINE,
    FALSE,
    HEADER,
    TRUE,
    zero_shot_prompt,
)
from persona_platform.persona_assets.elicitation.tables import CLAIMS, LABELS
from persona_platform.persona_assets.provenance import row_ref

LABEL_SOURCES = ("icm", "gold", "random")
# The prediction methods of the adapters trained on each label source, as accuracy_summary names them.
METHOD_OF_SOURCE = {source: f"finetune_{source}" for source in LABEL_SOURCES}
_OPTION_MARK = "{option}"


def source_labels(icm: Sequence[int], gold: Sequence[int], seed: str) -> dict[str, list[int]]:
    """The labels of the same claims under each source: ICM's, gold, and gold with as many labels flipped,
    chosen at seeded random, as ICM got wrong."""
    wrong = sum(a != b for a, b in zip(icm, gold, strict=True))
    flipped = set(random.Random(seed).sample(range(len(gold)), wrong))
    return {
        "icm": list(icm),
        "gold": list(gold),
        "random": [1 - g if i in flipped else g for i, g in enumerate(gold)],
    }


def labelled_claims(icm_labels: pl.DataFrame, country: str, variant: str) -> pl.DataFrame:
    """The train claims ICM labelled in one country and variant, in split order."""
    return icm_labels.filter(
        (pl.col("country") == country) & (pl.col("variant") == variant) & pl.col("icm_label").is_not_null()
    ).sort("position")


def preference_prompt(question: str, country: str) -> str:
    """The zero-shot claim prompt up to where the option goes."""
    line = CLAIM_LINE.format(question=question, option=_OPTION_MARK, country=country)
    return HEADER.format(country_upper=country.upper()) + line[: line.index(_OPTION_MARK)]


def claim_continuation(question: str, option: str, country: str) -> str:
    """What completes ``preference_prompt`` into the claim prompt of ``option``, followed by " True"."""
    whole = zero_shot_prompt(question, option, country) + TRUE
    return whole[len(preference_prompt(question, country)) :]


def _refs(r: dict, labels_table: str) -> list[str]:
    """An example's sources: the claim (which cites its survey row) and its ICM label (which cites the
    search's split row and is in the search's output)."""
    return [row_ref(CLAIMS, r["claim_id"]), row_ref(labels_table, r["row_id"])]


def dataset_rows(
    labelled: pl.DataFrame, country: str, variant: str, seed: int, labels_table: str = LABELS
) -> tuple[list[dict], list[dict]]:
    """SFT rows and preference-pair rows of one country and variant, for every label source."""
    claims = labelled.to_dicts()
    by_source = source_labels(
        [r["icm_label"] for r in claims], [r["label"] for r in claims], f"{seed}/{country}/{variant}"
    )
    sft, pairs = [], []
    for source, labels in by_source.items():
        for r, label in zip(claims, labels, strict=True):
            sft.append(
                {
                    "row_id": f"{variant}/{source}/{r['claim_id']}",
                    "country": country,
                    "variant": variant,
                    "labels": source,
                    "claim_id": r["claim_id"],
                    "question_id": r["question_id"],
                    "prompt": zero_shot_prompt(r["question"], r["option"], country),
                    "completion": TRUE if label else FALSE,
                    "label": label,
                    "gold": r["label"],
                    "input_ids": _refs(r, labels_table),
                }
            )
        pairs += _pairs(claims, labels, country, variant, source, labels_table)
    return sft, pairs


def _pairs(
    claims: list[dict], labels: list[int], country: str, variant: str, source: str, labels_table: str
) -> list[dict]:
    by_question: dict[str, list[tuple[dict, int]]] = {}
    for r, label in zip(claims, labels, strict=True):
        by_question.setdefault(r["question_id"], []).append((r, label))
    rows = []
    for members in by_question.values():
        for chosen, chosen_label in members:
            for rejected, rejected_label in members:
                if not (chosen_label == 1 and rejected_label == 0):
                    continue
                question = chosen["question"]
                rows.append(
                    {
                        "row_id": f"{variant}/{source}/{chosen['claim_id']}>{rejected['claim_id']}",
                        "country": country,
                        "variant": variant,
                        "labels": source,
                        "question_id": chosen["question_id"],
                        "chosen_claim_id": chosen["claim_id"],
                        "rejected_claim_id": rejected["claim_id"],
                        "prompt": preference_prompt(question, country),
                        "chosen": claim_continuation(question, chosen["option"], country),
                        "rejected": claim_continuation(question, rejected["option"], country),
                        "chosen_is_gold": chosen["label"] == 1 and rejected["label"] == 0,
                        "input_ids": _refs(chosen, labels_table) + _refs(rejected, labels_table),
                    }
                )
    return rows
