"""Warehouse throughput, writes and reads: the DuckDB file vs DuckLake (PostgreSQL catalog, local data path).

Writers are processes, as pods would be, each replacing its share of the partitions of
one table through ``Warehouse.replace`` (what the IO manager calls for every output:
connect, one transaction, commit; Dagster's own per-run overhead is left out). All
writers of a scenario start together; rows per second is all rows over the wall time
from that start to the last commit. A throwaway PostgreSQL server is started for the
lake and stopped afterwards. "connect s" is what each transaction pays for its
connection once the process has loaded the extensions and attached the lake (the
first connection of a process, not timed, does that). After the writes, the whole
table is read back once (timed) and checked: every row present once.
The numbers are measurements, not targets.
"""

from __future__ import annotations

import multiprocessing
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

PARTITIONS = 32
ROWS_PER_PARTITION = 10_000
SCENARIOS = (("duckdb file", 1), ("duckdb file", 8), ("ducklake", 1), ("ducklake", 8))


def _partition(key: str, n: int):
    import polars as pl

    return pl.DataFrame(
        {
            "country": [key] * n,
            "i": list(range(n)),
            "row_id": [f"{key}/{i}" for i in range(n)],
            "input_ids": [[f"file:f00d:{i}", f"opinions.goqa_claims:{key}/{i}"] for i in range(n)],
            "run_id": "0f6c9a1e-bench",
            "value": [i / 7 for i in range(n)],
            "text": [f"synthetic benchmark row {i} of partition {key}" for i in range(n)],
        }
    )


def _writer(database: str, data_path: str, keys: list[str], barrier, results) -> None:
    from persona_platform.resources.warehouse import Warehouse

    try:
        warehouse = Warehouse(database, lock_timeout_s=600, data_path=data_path)
        frames = [(key, _partition(key, ROWS_PER_PARTITION)) for key in keys]  # built before the clock starts
        with (
            warehouse.connect()
        ):  # the first connection of a process loads and attaches (and may create the catalog)
            pass
        opened = time.perf_counter()
        with warehouse.connect():
            pass
        connect_seconds = time.perf_counter() - opened
        barrier.wait(timeout=300)
        started = time.time()
        attempts = sum(warehouse.replace("bench", "writes", f, ["country"], [(key,)]) for key, f in frames)
        results.put(("ok", started, time.time(), attempts, connect_seconds))
    except BaseException as exc:  # the parent reports it; a broken barrier releases the others
        barrier.abort()
        results.put(("error", 0.0, 0.0, f"{type(exc).__name__}: {exc}", 0.0))


def _scenario(database: str, data_path: str, writers: int) -> dict:
    from persona_platform.resources.warehouse import Warehouse

    keys = [f"P{i:03d}" for i in range(PARTITIONS)]
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(writers), context.Queue()
    processes = [
        context.Process(target=_writer, args=(database, data_path, keys[w::writers], barrier, results))
        for w in range(writers)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=900) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    errors = [o[3] for o in outcomes if o[0] != "ok"]
    if errors:
        raise RuntimeError(f"a writer failed: {errors[0]}")
    seconds = max(o[2] for o in outcomes) - min(o[1] for o in outcomes)
    warehouse = Warehouse(database, data_path=data_path)
    warehouse.read("bench", "writes")  # the connection and extensions are set up once per process: not timed
    started = time.perf_counter()
    rows = warehouse.read("bench", "writes")
    read_seconds = time.perf_counter() - started
    expected = PARTITIONS * ROWS_PER_PARTITION
    if rows.height != expected or not rows.select("country", "i").is_unique().all():
        raise RuntimeError(f"{database}: {rows.height} rows after the writes, expected {expected} distinct")
    attempts = sum(o[3] for o in outcomes)
    return {
        "writers": writers,
        "rows": expected,
        "seconds": round(seconds, 3),
        "rows_per_second": round(expected / seconds),
        "rows_read_per_second": round(expected / read_seconds),
        "transactions": PARTITIONS,
        "reruns_after_conflict": attempts - PARTITIONS,
        "connect_seconds": round(sum(o[4] for o in outcomes) / len(outcomes), 3),
    }


def run() -> dict:
    from persona_platform.benchmarks.postgres import PostgresServer
    from persona_platform.resources.warehouse import Warehouse

    scratch = Path(tempfile.mkdtemp(prefix="persona-bench-warehouse-"))
    scenarios = []
    try:
        with PostgresServer() as postgres:
            version = subprocess.run(
                [str(postgres.bindir / "postgres"), "--version"], capture_output=True, text=True
            ).stdout.strip()
            for number, (store, writers) in enumerate(SCENARIOS):
                if store == "ducklake":
                    database = "ducklake:postgres:" + postgres.create_database(f"bench{number}")
                    data_path = str(scratch / f"lake{number}")
                else:
                    database, data_path = str(scratch / f"bench{number}.duckdb"), ""
                result = _scenario(database, data_path, writers)
                scenarios.append({"store": store, **result})
                # Say where the numbers came from, without anything secret: the lake here has no password.
                scenarios[-1]["location"] = Warehouse(database, data_path=data_path).describe()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "benchmark": "warehouse",
        "partitions": PARTITIONS,
        "rows_per_partition": ROWS_PER_PARTITION,
        "postgres": version,
        "scenarios": scenarios,
    }


def markdown(report: dict) -> str:
    lines = [
        f"Warehouse writes: {report['partitions']} partitions x "
        f"{report['rows_per_partition']:,} rows of one table, "
        f"each partition one `Warehouse.replace` transaction; writers are processes started together "
        f"(DuckLake: {report['postgres']} catalog on a Unix socket, Parquet files on local disk).",
        "",
        "| store | writers | rows | seconds | rows/s written | rows/s read (whole table) | transactions "
        "| re-runs after a conflict | connect s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {s['store']} | {s['writers']} | {s['rows']:,} | {s['seconds']} | {s['rows_per_second']:,} | "
        f"{s['rows_read_per_second']:,} | "
        f"{s['transactions']} | {s['reruns_after_conflict']} | {s['connect_seconds']} |"
        for s in report["scenarios"]
    ]
    return "\n".join(lines)
