"""The opinions group and the start of elicitation on a survey of the published dataset's size.

A survey with the shape and quirk rates of the published GlobalOpinionQA (about 2,500 questions,
138 countries; `benchmarks/survey_generator.py`) is written in the Hugging Face CSV and flattened
JSON formats. Measured:

1. reading each format in this process (records/s);
2. `persona run --select group:opinions` on the CSV in a fresh process and home, as a user runs it:
   wall time, peak RSS of that process, runs launched, rows written (target: under 2 minutes and
   2 GiB here, one run per partitions definition and contiguous key range);
3. `persona run` of the zero-shot base baseline and one ICM search (embedded profile) with what they
   need upstream, for 10 countries of the same file: seconds per country, to predict a full run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from persona_platform.benchmarks.survey_generator import generate_survey, write_flat_json, write_hf_csv
from persona_platform.resources.inputs.survey import read_survey

ELICITATION_COUNTRIES = 10
ELICITATION = '+key:"elicitation/zero_shot_base_predictions" or +key:"elicitation/icm_labels"'
PLANNED = re.compile(r"persona run: (?P<runs>\d+) runs planned")
SUMMARY = re.compile(
    r"(?P<ok>\d+) of (?P<runs>\d+) runs succeeded in (?P<seconds>[\d.]+) s; model loads (?P<loads>\d+)"
)


def persona_run(home: Path, source: Path, *args: str) -> dict:
    """`persona run ARGS` in its own process: wall seconds, peak RSS of that process, its summary line."""
    command = [str(Path(sys.executable).with_name("persona")), "run", *args]
    env = {**os.environ, "PERSONA_HOME": str(home), "PERSONA_GOQA_SOURCE": str(source)}
    home.mkdir(parents=True, exist_ok=True)
    out, err = home / "persona-run.out", home / "persona-run.err"
    started = time.perf_counter()
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)  # the rusage of this child alone
    seconds = time.perf_counter() - started
    text = out.read_text()
    summary, planned = SUMMARY.search(text), PLANNED.search(text)
    if os.waitstatus_to_exitcode(status) != 0 or summary is None or planned is None:
        raise RuntimeError(f"persona run {' '.join(args)} failed: {(err.read_text() or text)[-2000:]}")
    return {
        "seconds": round(seconds, 1),
        "runs_planned": int(planned["runs"]),
        "runs_succeeded": int(summary["ok"]),
        "model_loads": int(summary["loads"]),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }


def table_rows(home: Path) -> dict[str, int]:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        tables = con.execute("SELECT schema_name, table_name FROM duckdb_tables()").fetchall()
        return {f"{s}.{t}": con.execute(f'SELECT count(*) FROM "{s}"."{t}"').fetchone()[0] for s, t in tables}


def read_rate(path: Path) -> dict:
    started = time.perf_counter()
    source = read_survey(path)
    seconds = time.perf_counter() - started
    return {
        "format": source.format,
        "megabytes": round(path.stat().st_size / 2**20, 1),
        "records": len(source.records),
        "seconds": round(seconds, 2),
        "records_per_second": round(len(source.records) / seconds),
    }


def run() -> dict:
    work = Path(tempfile.mkdtemp(prefix="persona-bench-survey-"))
    survey = generate_survey()
    csv_path = write_hf_csv(survey, work / "published-shape.hf.csv")
    json_path = write_flat_json(survey, work / "published-shape.flat.json")
    reads = [read_rate(csv_path), read_rate(json_path)]
    source = read_survey(csv_path)
    opinions = persona_run(work / "opinions-home", csv_path, "--select", "group:opinions")
    rows = table_rows(work / "opinions-home")
    countries = source.countries[:ELICITATION_COUNTRIES]
    elicitation = persona_run(
        work / "elicitation-home", csv_path, "--countries", ",".join(countries), "--select", ELICITATION
    )
    return {
        "benchmark": "survey_full_size",
        "questions": len({(r.question, r.options) for r in source.records}),
        "countries": len(source.countries),
        "survey_records": len(source.records),
        "reads": reads,
        "opinions": {
            **opinions,
            "survey_rows_per_second": round(rows["opinions.goqa_survey"] / opinions["seconds"]),
            "rows": {k: v for k, v in rows.items() if k.startswith("opinions.")},
        },
        "elicitation": {
            **elicitation,
            "countries": len(countries),
            "seconds_per_country": round(elicitation["seconds"] / len(countries), 1),
        },
    }


def markdown(report: dict) -> str:
    o, e = report["opinions"], report["elicitation"]
    lines = [
        f"### Full-size survey: {report['questions']:,} questions, {report['countries']} countries, "
        f"{report['survey_records']:,} (question, country) records",
        "",
        "| read | MB | records | s | records/s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['format']} | {r['megabytes']} | {r['records']:,} | {r['seconds']} "
        f"| {r['records_per_second']:,} |"
        for r in report["reads"]
    ]
    lines += [
        "",
        "| persona run | runs | s | peak RSS MiB | model loads | what |",
        "|---|---|---|---|---|---|",
        f"| `--select group:opinions`, every country | {o['runs_succeeded']} of {o['runs_planned']} "
        f"| {o['seconds']} | "
        f"{o['peak_rss_mib']} | {o['model_loads']} | {o['survey_rows_per_second']:,} survey rows/s |",
        f"| zero-shot base + ICM (embedded profile), {e['countries']} countries "
        f"| {e['runs_succeeded']} of {e['runs_planned']} "
        f"| {e['seconds']} | {e['peak_rss_mib']} | {e['model_loads']} "
        f"| {e['seconds_per_country']} s per country |",
        "",
        "Rows written: " + ", ".join(f"`{k}` {v:,}" for k, v in o["rows"].items()),
    ]
    return "\n".join(lines)
