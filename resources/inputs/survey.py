"""Readers for the three GlobalOpinionQA file formats, chosen by content.

1. Hugging Face ``Anthropic/llm_global_opinions`` CSV: columns ``question``,
   ``selections`` (a ``defaultdict(<class 'list'>, {country: [p, ...]})`` string),
   ``options`` (a Python list literal) and optionally ``source``.
2. Flattened JSON: a list of ``{country, question, options, distribution}``.
3. Curated wide CSV: first column ``Country``, one column per question whose
   header is the question text followed by ``A. option`` lines; each cell is the
   mean ordinal position of the country's answers in [0, 1]. Only two-option
   questions determine a distribution from that number (share of option B), so
   other questions carry ``distribution=None`` and ``mean_position``.

Two kinds of bad input are told apart. A malformed file (missing column,
unparseable list, option/distribution length mismatch, a value that is neither
text nor a number, truncated JSON, an empty file) stops the read with an error
naming file, row and field. A well-formed row that cannot make a claim (all
shares 0, a tie for the largest share) is read like any other; the claims stage
marks it unusable with its reason.

Options may be text or numbers (the published ladder scales mix both:
``['Not important at all', 1.0, ..., 'Very important']``); numbers are rendered
canonically (``1.0`` -> ``"1"``, in every format) and the source token is kept.

Country names are kept as written; each gets a partition key (``country_key``):
the name itself, normalised, with the few characters Dagster refuses in keys
replaced. Records carry the key in ``country`` and the name in ``country_name``.

Row numbers in errors: CSV records count the header as row 1; JSON items count from 1.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

from persona_platform.resources.inputs.errors import InputFileError

FORMAT_HF_CSV = "hf_csv"
FORMAT_FLAT_JSON = "flat_json"
FORMAT_WIDE_CSV = "wide_csv"

# What Dagster refuses in static or multi-dimensional partition keys, and what stands in for it.
_KEY_REPLACEMENTS = (("...", "\u2026"), ("|", "/"), (",", ";"), ("[", "("), ("]", ")"))
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_DEFAULTDICT = re.compile(r"^\s*defaultdict\(\s*<class\s+'list'>\s*,\s*(\{.*\})\s*\)\s*$", re.DOTALL)
_OPTION_LINE = re.compile(r"^([A-Z])\.\s?(.*)$")


class SurveyFormatError(InputFileError):
    """Bad survey input."""


@dataclass(frozen=True)
class SurveyRecord:
    """One (question, country) answer distribution from a source file."""

    question: str
    options: tuple[str, ...]
    country: str  # the partition key
    distribution: tuple[float, ...] | None
    mean_position: float | None
    row: int
    country_name: str = ""  # as written in the file
    source_options: tuple[str, ...] = ()  # the options' source tokens, e.g. "1.0" for the number 1.0


@dataclass(frozen=True)
class SurveySource:
    path: Path
    format: str
    sha256: str
    records: tuple[SurveyRecord, ...]
    # (row, reason) for rows the format defines as skippable, e.g. an empty question.
    skipped_rows: tuple[tuple[int, str], ...] = field(default=())

    @cached_property
    def _by_country(self) -> dict[str, list[SurveyRecord]]:
        grouped: dict[str, list[SurveyRecord]] = {}
        for record in self.records:
            grouped.setdefault(record.country, []).append(record)
        return grouped

    @property
    def countries(self) -> list[str]:
        """The partition keys, sorted."""
        return sorted(self._by_country)

    @cached_property
    def country_names(self) -> dict[str, str]:
        """Partition key -> the country's name as first written in the file."""
        return {key: records[0].country_name for key, records in sorted(self._by_country.items())}

    def records_for(self, country: str) -> list[SurveyRecord]:
        records = self._by_country.get(country)
        if not records:
            raise SurveyFormatError(
                self.path,
                None,
                "country",
                f"unknown country {country!r}; the file has {', '.join(self.countries)}",
            )
        return records


def read_survey(path: Path | str) -> SurveySource:
    path = Path(path)
    raw = path.read_bytes()
    sha256 = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SurveyFormatError(path, None, None, f"not UTF-8 text ({exc})") from exc
    if not text.strip():
        raise SurveyFormatError(path, None, None, "the file is empty")
    if text.lstrip().startswith("["):
        fmt, records, skipped = FORMAT_FLAT_JSON, *_read_flat_json(path, text)
    else:
        rows = _csv_rows(path, text)
        header = [h.strip() for h in rows[0]]
        if {"question", "selections", "options"} <= set(header):
            fmt, records, skipped = FORMAT_HF_CSV, *_read_hf_csv(path, header, rows[1:])
        elif header and header[0].lower() == "country":
            fmt, records, skipped = FORMAT_WIDE_CSV, _read_wide_csv(path, rows), []
        else:
            missing = sorted({"question", "selections", "options"} - set(header))
            raise SurveyFormatError(
                path,
                1,
                "header",
                f"not a known GlobalOpinionQA format: missing columns {', '.join(missing)} "
                "(Hugging Face CSV) and no leading 'Country' column (wide CSV)",
            )
    if not records:
        raise SurveyFormatError(path, None, None, "the file holds no survey records")
    _check_country_keys(path, records)
    _check_unique(path, records)
    return SurveySource(path, fmt, sha256, tuple(records), tuple(skipped))


def read_survey_once(path: Path | str) -> SurveySource:
    """``read_survey`` once per version of the file in a process: the code location and each step of a run
    read the same file (a version is its size and modification time)."""
    stat = Path(path).stat()
    return _read_version(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=2)
def _read_version(path: str, _mtime_ns: int, _size: int) -> SurveySource:
    return read_survey(path)


# A selections cell holds every country's distribution: Python's default 128 KiB cell limit is too small
# for a survey of thousands of countries; a cell is bounded by the file read into memory anyway.
CSV_CELL_LIMIT = 1 << 30


def _csv_rows(path: Path, text: str) -> list[list[str]]:
    csv.field_size_limit(max(csv.field_size_limit(), CSV_CELL_LIMIT))
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise SurveyFormatError(path, None, None, f"malformed CSV: {exc}") from exc
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise SurveyFormatError(path, None, None, "the file is empty")
    return rows


def _read_hf_csv(path: Path, header: list[str], body: list[list[str]]):
    col = {name: i for i, name in enumerate(header)}
    records: list[SurveyRecord] = []
    skipped: list[tuple[int, str]] = []
    for offset, cells in enumerate(body):
        row = offset + 2
        if len(cells) != len(header):
            raise SurveyFormatError(path, row, None, f"{len(cells)} cells, the header has {len(header)}")
        question = cells[col["question"]].strip()
        if not question or question.lower() == "nan":
            skipped.append((row, "empty question"))
            continue
        options, source_options = _parse_options(path, row, cells[col["options"]])
        selections = _parse_selections(path, row, cells[col["selections"]])
        for name, values in selections.items():
            name = _check_country(path, row, name)
            distribution = _check_distribution(path, row, f"selections[{name!r}]", values, options)
            records.append(_record(question, options, source_options, name, distribution, None, row))
    return records, skipped


def _record(question, options, source_options, name, distribution, mean_position, row) -> SurveyRecord:
    return SurveyRecord(
        question, options, country_key(name), distribution, mean_position, row, name, source_options
    )


def _parse_options(path: Path, row: int, text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError) as exc:
        raise SurveyFormatError(path, row, "options", f"not a list literal: {text[:80]!r}") from exc
    return _check_options(path, row, value)


def _check_options(path: Path, row: int, value: object) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Canonical option texts and their source tokens; text and finite numbers are options, nothing else."""
    if not isinstance(value, list | tuple) or not value:
        raise SurveyFormatError(path, row, "options", "must be a non-empty list of texts or numbers")
    options, tokens = [], []
    for index, option in enumerate(value):
        if isinstance(option, str):
            token = option.strip()
        elif isinstance(option, int | float) and not isinstance(option, bool) and math.isfinite(option):
            token = repr(option)
        else:
            raise SurveyFormatError(
                path, row, "options", f"option {index + 1} must be text or a finite number, got {option!r}"
            )
        options.append(canonical_option(token))
        tokens.append(token)
    return tuple(options), tuple(tokens)


def is_number(token: str) -> bool:
    return bool(_NUMBER.match(token.strip()))


def canonical_option(token: str) -> str:
    """One rendering for a number however the source wrote it ('1.0', '1', 1.0 -> '1'); text as it is."""
    text = token.strip()
    if not is_number(text):
        return text
    number = float(text)
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return repr(number)


def _parse_selections(path: Path, row: int, text: str) -> dict[str, list]:
    match = _DEFAULTDICT.match(text)
    literal = match.group(1) if match else text.strip()
    try:
        value = ast.literal_eval(literal)
    except (ValueError, SyntaxError) as exc:
        raise SurveyFormatError(
            path, row, "selections", f"not a defaultdict/dict literal of lists: {text[:80]!r}"
        ) from exc
    if not isinstance(value, dict):
        raise SurveyFormatError(path, row, "selections", "must map countries to lists of probabilities")
    if not value:
        raise SurveyFormatError(path, row, "selections", "empty selection: no country has answers")
    return value


def _check_country(path: Path, row: int, country: object) -> str:
    if not isinstance(country, str) or not country.strip():
        raise SurveyFormatError(path, row, "country", f"must be a non-empty string, got {country!r}")
    return country.strip()


def country_key(name: str) -> str:
    """The partition key of a country: its name in Unicode NFC with runs of whitespace as one space,
    control characters dropped and the characters Dagster refuses in keys replaced
    ('Côte d'Ivoire' stays as it is; 'Korea, South' becomes 'Korea; South')."""
    text = _normalized_name(name)
    for refused, replacement in _KEY_REPLACEMENTS:
        text = text.replace(refused, replacement)
    return text


def _check_distribution(path, row, label, values, options) -> tuple[float, ...]:
    """Shares as given: all zeros and sums off 1 are well-formed (the claims stage decides what they can
    make)."""
    if not isinstance(values, list | tuple) or not values:
        raise SurveyFormatError(path, row, label, "empty selection: expected one probability per option")
    if len(values) != len(options):
        raise SurveyFormatError(path, row, label, f"{len(values)} probabilities for {len(options)} options")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise SurveyFormatError(path, row, label, f"probabilities must be finite numbers >= 0, got {v!r}")
        out.append(float(v))
    return tuple(out)


def _read_flat_json(path: Path, text: str):
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SurveyFormatError(path, exc.lineno, None, f"malformed JSON: {exc.msg}") from exc
    if not isinstance(items, list):
        raise SurveyFormatError(path, None, None, "expected a JSON list of records")
    records = []
    for index, item in enumerate(items):
        row = index + 1
        if not isinstance(item, dict):
            raise SurveyFormatError(path, row, None, "each record must be an object")
        for name in ("country", "question", "options", "distribution"):
            if name not in item:
                raise SurveyFormatError(path, row, name, "missing")
        question = item["question"]
        if not isinstance(question, str) or not question.strip():
            raise SurveyFormatError(path, row, "question", "must be a non-empty string")
        options, source_options = _check_options(path, row, item["options"])
        name = _check_country(path, row, item["country"])
        distribution = _check_distribution(path, row, "distribution", item["distribution"], options)
        records.append(_record(question.strip(), options, source_options, name, distribution, None, row))
    return records, []


def _parse_wide_header(path: Path, column: int, cell: str) -> tuple[str, tuple[str, ...]]:
    lines = [line.strip() for line in cell.strip().splitlines() if line.strip()]
    options: list[str] = []
    question_lines: list[str] = []
    for line in lines:
        match = _OPTION_LINE.match(line)
        if match and (options or question_lines):
            expected = chr(ord("A") + len(options))
            if match.group(1) != expected:
                raise SurveyFormatError(
                    path, 1, f"column {column + 1}", f"option {line!r} should be {expected}."
                )
            options.append(match.group(2).strip())
        elif options:
            raise SurveyFormatError(path, 1, f"column {column + 1}", f"text after the options: {line!r}")
        else:
            question_lines.append(line)
    if not question_lines:
        raise SurveyFormatError(path, 1, f"column {column + 1}", "no question text")
    if len(options) < 2:
        raise SurveyFormatError(
            path, 1, f"column {column + 1}", "a question header needs 'A. ...' and 'B. ...' option lines"
        )
    return " ".join(question_lines), tuple(options)


def _read_wide_csv(path: Path, rows: list[list[str]]) -> list[SurveyRecord]:
    header = rows[0]
    questions = [_parse_wide_header(path, i, cell) for i, cell in enumerate(header) if i > 0]
    records = []
    for offset, cells in enumerate(rows[1:]):
        row = offset + 2
        if len(cells) != len(header):
            raise SurveyFormatError(path, row, None, f"{len(cells)} cells, the header has {len(header)}")
        name = _check_country(path, row, cells[0])
        for (question, tokens), text in zip(questions, cells[1:], strict=True):
            if not text.strip():
                continue
            field_name = question[:60]
            try:
                value = float(text)
            except ValueError as exc:
                raise SurveyFormatError(path, row, field_name, f"not a number: {text!r}") from exc
            if not (0.0 <= value <= 1.0):
                raise SurveyFormatError(path, row, field_name, f"mean position {value} outside [0, 1]")
            distribution = (1.0 - value, value) if len(tokens) == 2 else None
            options = tuple(canonical_option(t) for t in tokens)
            records.append(_record(question, options, tokens, name, distribution, value, row))
    return records


def _check_country_keys(path: Path, records: list[SurveyRecord]) -> None:
    """Two different names must not share a key (names differing only in spacing or Unicode form are one
    country)."""
    first: dict[str, SurveyRecord] = {}
    for r in records:
        seen = first.setdefault(r.country, r)
        if _normalized_name(seen.country_name) == _normalized_name(r.country_name):
            continue
        raise SurveyFormatError(
            path,
            r.row,
            "country",
            f"{r.country_name!r} and {seen.country_name!r} (row {seen.row}) "
            f"would share the partition key {r.country!r}",
        )


def _normalized_name(name: str) -> str:
    """One spelling per name: Unicode NFC, runs of whitespace as one space, no control characters."""
    text = " ".join(unicodedata.normalize("NFC", name).split())
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cc")


def _check_unique(path: Path, records: list[SurveyRecord]) -> None:
    seen: dict[tuple, int] = {}
    for r in records:
        key = (normalize_question(r.question), r.options, r.country)
        if key in seen:
            raise SurveyFormatError(
                path,
                r.row,
                "question",
                f"duplicate of row {seen[key]}: same question, options and country {r.country!r}",
            )
        seen[key] = r.row


def normalize_question(text: str) -> str:
    return " ".join(text.split()).lower()


def question_id(question: str, options: tuple[str, ...]) -> str:
    """Stable id of a question: its normalized text and its option list.

    The options are part of the identity because one question text appears
    upstream twice with different option lists; those stay separate questions.
    """
    digest = hashlib.sha256("\x1f".join((normalize_question(question), *options)).encode()).hexdigest()
    return f"q{digest[:10]}"
