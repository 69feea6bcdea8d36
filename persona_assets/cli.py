"""The ``persona`` command: run the graph, open the UI, trace a row, review questions, run benchmarks,
write the catalogue."""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import shutil
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatch
from pathlib import Path

from dagster import AssetSelection, BetaWarning

from persona_platform.persona_assets.instance import EMBEDDED_PROFILE, load_op_config, prepare_instance
from persona_platform.persona_assets.review import SOURCES
from persona_platform.resources.inputs.errors import PersonaInputError
from persona_platform.resources.settings import (
    DATA_DIR,
    PROJECT_ROOT,
    Settings,
    SettingsError,
    load_settings,
)


def _split(value: str | None) -> set[str] | None:
    return {v.strip() for v in value.split(",") if v.strip()} if value else None


def country_partition_keys(wanted: set[str] | None) -> set[str] | None:
    """Countries as partition keys, whether given by key or by their name in the source ('A|B' -> 'A/B')."""
    from persona_platform.resources.inputs.survey import country_key

    return {country_key(w) for w in wanted} if wanted else wanted


def _check_known(kind: str, wanted: set[str] | None, known: list[str], where: str) -> None:
    unknown = sorted((wanted or set()) - set(known))
    if unknown:
        raise SettingsError(
            f"{where}, field '{kind}': unknown {kind} {', '.join(unknown)}; known: {', '.join(known)}"
        )


@dataclass(frozen=True)
class RunArguments:
    """What ``persona run`` was asked to do, checked."""

    selection: AssetSelection
    countries: set[str] | None
    agents: set[str] | None
    config_file: Path | None
    op_config: dict
    parallel: int = 1
    experiments: tuple = ()  # those the selection holds assets of


def check_run_arguments(args: argparse.Namespace, settings: Settings) -> RunArguments:
    """Check every argument and setting of ``persona run`` before anything is created; a mistake raises a
    PersonaInputError whose message says what is wrong."""
    from persona_platform.partitions import AGENT_REGISTRY_FILE, AGENTS, COUNTRIES
    from persona_platform.persona_assets.definitions import defs
    from persona_platform.persona_assets.experiments import COMPARISON_GROUP, experiments
    from persona_platform.persona_assets.runner import experiment_op_config
    from persona_platform.resources.llm.backends import is_embedded, split_backend

    countries, agents = country_partition_keys(_split(args.countries)), _split(args.agents)
    _check_known("country", countries, COUNTRIES, str(settings.goqa_source))
    _check_known("agent", agents, [a.key for a in AGENTS], str(AGENT_REGISTRY_FILE))
    graph = defs.resolve_asset_graph()
    chosen = check_experiments(_split(getattr(args, "experiment", None)))
    # A multi-asset runs whole: selecting one of its outputs brings the others.
    selection = check_selection(args.select, graph).required_multi_asset_neighbors()
    if chosen is not None:
        # The experiments' own assets and the shared ones they read; a comparison needs every experiment.
        others = [x.name for x in experiments() if x.name not in chosen]
        selection = selection - AssetSelection.groups(*others, COMPARISON_GROUP)
    keys = selection.resolve(graph)
    if not keys:
        raise PersonaInputError(f"--select {args.select!r} holds no asset of experiment {', '.join(chosen)}")
    selected = [x for x in experiments() if any(len(k.path) == 3 and k.path[0] == x.name for k in keys)]
    check_models(settings, keys, graph, selected)
    # The quick-start profile shrinks only the experiments whose generator is an embedded model.
    embedded = {
        x.name
        for x in selected
        if is_embedded(split_backend(x.model_label("generator", str(settings.llm)))[1])
    }
    config_file = args.config or (EMBEDDED_PROFILE if embedded else None)
    steps_for = set(embedded) if args.config is None else {x.name for x in experiments()}
    op_config = experiment_op_config(defs, load_op_config(config_file), steps_for, config_file)
    parallel = getattr(args, "parallel", None) or 1
    if not 1 <= parallel <= MAX_PARALLEL:
        raise PersonaInputError(f"--parallel {parallel}: must be a whole number from 1 to {MAX_PARALLEL}")
    return RunArguments(selection, countries, agents, config_file, op_config, parallel, tuple(selected))


# Worker processes `persona run --parallel` may start (each loads the code location and a model).
MAX_PARALLEL = 64


def command_run(args: argparse.Namespace) -> int:
    from persona_platform.persona_assets.definitions import defs
    from persona_platform.persona_assets.fanout import execute_fanned_out
    from persona_platform.persona_assets.instance import apply_pool_limits, pool_limits
    from persona_platform.persona_assets.progress import live_display
    from persona_platform.persona_assets.runner import execute_plan, plan_runs
    from persona_platform.resources.llm.resource import process_usage

    settings = load_settings()
    checked = check_run_arguments(args, settings)  # before anything is created
    parallel = checked.parallel
    # --parallel K: the instance's gpu pool takes K runs while this command runs (runs launched from the UI
    # meanwhile count these against it); back to the settings' limit when it ends.
    instance = prepare_instance(settings, gpu_limit=parallel if parallel > 1 else None)
    per_run = settings.deployment.partitions_per_run
    runs = plan_runs(defs, checked.selection, checked.countries, checked.agents, parallel, per_run)
    fanned = f", model runs up to {parallel} at once in worker processes" if parallel > 1 else ""
    print(f"persona run: {len(runs)} runs planned{fanned}; home {settings.home}")
    for x in checked.experiments:
        print(
            f"experiment {x.name}: generator {x.model_label('generator', str(settings.llm))} ({x.path.name})"
        )
    if checked.config_file:
        print(f"run config: {checked.config_file}")
    started = time.monotonic()
    try:
        with live_display():
            if parallel > 1:
                outcomes = execute_fanned_out(
                    defs, runs, instance, checked.op_config, parallel, deployment=settings.deployment
                )
            else:
                outcomes = execute_plan(defs, runs, instance, checked.op_config)
    finally:
        if parallel > 1:
            apply_pool_limits(instance, pool_limits(settings.deployment))
    elapsed = time.monotonic() - started
    failed = [o for o in outcomes if not o.success]
    usage = process_usage()
    # This process's engines, and those of the worker processes (reported per run they executed).
    workers = [o for o in outcomes if o.worker is not None]
    print()
    print(
        f"{len(outcomes) - len(failed)} of {len(runs)} runs succeeded in {elapsed:.1f} s; "
        f"model loads {usage.model_loads + sum(o.model_loads for o in workers)}, "
        f"forward passes {usage.forward_passes + sum(o.forward_passes for o in workers)}, "
        f"tokens computed {usage.tokens_computed + sum(o.tokens_computed for o in workers)}"
    )
    print(f"Tables in {settings.warehouse_label}:")
    counts = open_warehouse(settings).table_row_counts()
    width = max((len(s) + len(t) + 1 for s, t, _ in counts), default=0)
    for schema, table, count in counts:
        print(f"  {f'{schema}.{table}':<{width}} {count:>9,} rows")
    # The comparison's plots, and each experiment's own under <experiment>/plots.
    plots = sorted(settings.artifacts_dir.glob("**/plots/**/*.png"))
    print(f"Plots: {settings.artifacts_dir} ({len(plots)} files under plots/ and <experiment>/plots/)")
    print("Open the UI:  persona ui   (then http://127.0.0.1:3000)")
    print("Trace a row:  persona lineage <schema.table> <row_id>")
    if failed:
        print()
        run_id = failed[0].run_id
        if not run_id:  # a worker process that ended before its run was recorded
            print(f"FAILED: {failed[0].error}", file=sys.stderr)
            return 1
        log = write_run_log(instance, run_id, settings.home / "logs" / f"{run_id}.log")
        print(failure_line(instance, run_id, failed[0].error, log), file=sys.stderr)
        return 1
    return 0


# -- checks of `persona run`'s arguments -------------------------------------------------------------------

SELECTION_SYNTAX = (
    'write e.g. group:opinions, key:"opinions/goqa_survey", +key:"primary/elicitation/icm_labels" (with its '
    "upstream), joined by and, or, not"
)


def check_selection(text: str | None, graph) -> AssetSelection:
    """The asset selection ``--select`` names. One that does not parse, names an asset or a group that does
    not exist, or selects nothing to materialize is refused, with a suggestion in the accepted syntax."""
    if text is None:
        return AssetSelection.all()
    selection = _parse(text)
    if selection is None:
        hint = next(
            (f"did you mean {r!r}?" for r in _repairs(text, graph) if _matches(_parse(r), graph)),
            SELECTION_SYNTAX,
        )
        raise PersonaInputError(f"--select {text!r} is not a valid selection; {hint}")
    parts = list(_leaves(selection))
    for part in parts:
        if not _matches(part, graph):
            where = "" if len(parts) == 1 else f": {part.to_selection_str()!r}"
            raise PersonaInputError(f"--select {text!r}{where} matches no asset; {_hint(part, graph)}")
    keys = _matches(selection, graph)
    if not keys:
        raise PersonaInputError(
            f"--select {text!r} matches no asset (each part matches some, together none); {_groups(graph)}"
        )
    if not any(graph.get(k).is_materializable for k in keys):
        names = ", ".join(sorted(k.to_user_string() for k in keys))
        raise PersonaInputError(
            f"--select {text!r} matches only external assets, which persona run does not materialize: {names}"
        )
    return selection


def _parse(text: str) -> AssetSelection | None:
    try:
        return AssetSelection.from_string(text)
    except Exception:  # the parser's own error, or a CheckError for some malformed attributes
        return None


def _repairs(text: str, graph) -> list[str]:
    """``text``, a selection that does not parse, without the commonest slips: an operator left dangling at
    either end, a bare asset name combined with others (the parser takes a bare name only alone)."""
    keys = sorted(k.to_user_string() for k in graph.get_all_asset_keys())

    def as_key(name: re.Match) -> str:
        found = similar_keys(name[0], keys)
        return f'key:"{found[0]}"' if name[0] not in ("and", "or", "not") and len(found) == 1 else name[0]

    undangled = re.sub(r"^\s*((and|or)\s+)+|(\s+(and|or|not))+\s*$", "", text)
    # A name not inside quotes, not an attribute's value and not an attribute or a function.
    bare = r'(?<![\w:"./*-])[A-Za-z_][\w./-]*(?![\w./*-]|\s*[:(])'
    repairs = [undangled, re.sub(bare, as_key, text), re.sub(bare, as_key, undangled)]
    return [r for r in dict.fromkeys(repairs) if r != text and _parse(r) is not None]


def _leaves(selection: AssetSelection):
    """The selection's operands that combine no other selection: keys, groups, tags, ..."""
    inner = [*getattr(selection, "operands", ())]
    inner += [getattr(selection, name, None) for name in ("left", "right", "child")]
    inner = [s for s in inner if isinstance(s, AssetSelection)]
    if not inner:
        yield selection
    for s in inner:
        yield from _leaves(s)


def _matches(selection: AssetSelection | None, graph) -> set:
    from dagster import DagsterInvalidSubsetError

    if selection is None:
        return set()
    try:
        return set(selection.resolve(graph))
    except DagsterInvalidSubsetError:  # an asset key that does not exist
        return set()


def _group_names(graph) -> list[str]:
    return sorted({graph.get(k).group_name for k in graph.get_all_asset_keys()})


def _groups(graph) -> str:
    return "groups: " + ", ".join(_group_names(graph))


def _hint(part: AssetSelection, graph) -> str:
    """What to write instead of ``part``, a key, key pattern or group that matches nothing."""
    groups = _group_names(graph)
    keys = sorted(k.to_user_string() for k in graph.get_all_asset_keys())
    if getattr(part, "selected_groups", None):
        name = part.selected_groups[0]
        found = [f'key:"{k}"' for k in similar_keys(name, keys, fuzzy=False)]
        found += [f"group:{g}" for g in difflib.get_close_matches(name, groups)]
        listing = f" ({_groups(graph)})"
    else:
        if getattr(part, "selected_key_wildcard", None):
            terms = [part.selected_key_wildcard]
        else:
            terms = [k.to_user_string() for k in getattr(part, "selected_keys", ()) if not graph.has(k)]
        found = [f"group:{t}" for t in terms if t in groups]
        found += [f'key:"{k}"' for t in terms for k in similar_keys(t, keys, fuzzy=not found)]
        listing = ""
    if not found:
        return f"{_groups(graph)}; {SELECTION_SYNTAX}"
    return f"did you mean {' or '.join(repr(f) for f in found[:3])}?{listing}"


def similar_keys(term: str, keys: list[str], fuzzy: bool = True) -> list[str]:
    """The asset keys (``schema/name``) ``term`` may mean: with dots for slashes, by its last part alone, as a
    wildcard pattern, or (``fuzzy``, when none of those) spelled a little differently."""
    path = term.replace(".", "/")
    last = {k: k.rsplit("/", 1)[-1] for k in keys}
    if "*" in path:
        return [k for k in keys if fnmatch(k, path) or fnmatch(last[k], path)]
    exact = [k for k in keys if path in (k, last[k])]
    if exact or not fuzzy:
        return exact
    close = difflib.get_close_matches(path, [*keys, *last.values()], n=3)
    return list(dict.fromkeys(k for c in close for k in keys if c in (k, last[k])))


def check_experiments(names: set[str] | None) -> set[str] | None:
    """The experiments ``--experiment`` names (None: every one); an unknown name is refused."""
    from persona_platform.persona_assets.experiments import experiments

    known = [x.name for x in experiments()]
    _check_known("experiment", names, known, str(load_settings().experiments_dir))
    return names


def check_models(settings: Settings, keys, graph, selected: list) -> None:
    """Refuse, before any run, a model that the selected assets ``keys`` need and this machine cannot load: a
    directory that does not exist, a Hugging Face id not in the local cache. The deployment's models (the
    roles an experiment leaves to it) are named by their variable, an experiment's own by its file."""
    from persona_platform.persona_assets.experiments import ROLES
    from persona_platform.resources.llm.backends import check_model_available, split_backend
    from persona_platform.resources.settings import CHAT, GENERATOR, JUDGE

    variables = {"llm": GENERATOR, "chat_llm": CHAT, "judge_llm": JUDGE}
    needed = {
        (k.path[0] if len(k.path) == 3 else None, resource)
        for k in keys
        for resource in graph.assets_def_for_key(k).required_resource_keys
    }
    by_name = {x.name: x for x in selected}
    for experiment, resource in sorted(needed, key=str):
        role = next((r for r, name in ROLES.items() if name == resource), None)
        own = by_name[experiment].models.get(role) if experiment in by_name and role else None
        if own is not None:
            backend, model = split_backend(own.model)
            problem = check_model_available(backend or "transformers", model)
            if problem:
                raise SettingsError(f"{by_name[experiment].path}: models.{role}: {own.model}: {problem}")
            continue
        deployment = settings.roles().get(resource)
        problem = check_model_available(deployment.backend, deployment.model) if deployment else None
        if problem:
            # A role without a model of its own has the generator's.
            name = variables[resource].model
            variable = name if os.environ.get(name) else GENERATOR.model
            raise SettingsError(f"{variable}={os.environ.get(variable) or deployment.model}: {problem}")


def failure_line(instance, run_id: str, root_cause: str | None, log: Path) -> str:
    """One line for a failed run: its step, the error the step raised, and where the full log is."""
    from dagster import DagsterEventType

    failures = instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)
    step, message = None, root_cause or "run failed"
    if failures:
        step = failures[0].dagster_event.step_key
        error = failures[0].dagster_event.event_specific_data.error
        # The first error that is not Dagster's wrapper of it, without its module path.
        while error.cause is not None and error.message.startswith("dagster."):
            error = error.cause
        message = re.sub(r"^[\w.]+\.(\w+: )", r"\1", error.message)
    message = " ".join(message.split()).rstrip(" .")
    if len(message) > 400:
        message = message[:399] + "…"
    where = f" ({step})" if step else ""
    return f"FAILED run {run_id}{where}: {message}; full log: persona ui, or {log}"


def write_run_log(instance, run_id: str, path: Path) -> Path:
    """Write the run's events as the UI lists them, one a line, each error with its whole traceback (the
    terminal shows none of them)."""
    lines = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        when = datetime.fromtimestamp(entry.timestamp).isoformat(sep=" ", timespec="milliseconds")
        kind = event.event_type_value if event else "LOG"
        lines.append(
            f"{when} {logging.getLevelName(entry.level)} {entry.step_key or '-'} {kind} {entry.user_message}"
        )
        error = getattr(event.event_specific_data, "error", None) if event else entry.error_info
        if error is not None:
            lines.append(error.to_string())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def open_warehouse(settings: Settings):
    """The warehouse the settings name: the DuckDB file or the DuckLake."""
    from persona_platform.resources.warehouse import Warehouse

    return Warehouse(settings.warehouse, data_path=settings.warehouse_data_path)


BENCHMARKS = (
    "icm",
    "icm-recovery",
    "scoring",
    "training",
    "loads",
    "planning",
    "warehouse",
    "survey",
    "fanout",
)


def command_bench(args: argparse.Namespace) -> int:
    import json
    import platform

    from persona_platform.benchmarks import (
        fanout,
        icm_pool,
        icm_recovery,
        model_loads,
        planning,
        scoring,
        survey,
        training,
        warehouse,
    )
    from persona_platform.resources.llm.resource import LLMResource

    settings = load_settings()
    llm = LLMResource(model=settings.llm.model, models_dir=str(settings.models_dir), corpus_dir=str(DATA_DIR))
    suites = {
        "icm": (lambda: icm_pool.run(llm.engine()), icm_pool.markdown),
        "icm-recovery": (icm_recovery.run, icm_recovery.markdown),
        "scoring": (lambda: scoring.run(llm.engine()), scoring.markdown),
        "training": (training.run, training.markdown),
        "loads": (model_loads.run, model_loads.markdown),
        "planning": (planning.run, planning.markdown),
        "warehouse": (warehouse.run, warehouse.markdown),
        "survey": (survey.run, survey.markdown),
        "fanout": (fanout.run, fanout.markdown),
    }
    names = BENCHMARKS if args.name == "all" else (args.name,)
    machine = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    reports = {}
    out_dir = PROJECT_ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        measure, render = suites[name]
        report = {**measure(), "host": machine}
        reports[name] = report
        (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2))
        (out_dir / f"{name}.md").write_text(render(report) + "\n")
        if not args.json:
            print(render(report), flush=True)
    if args.json:
        print(json.dumps(reports, indent=2))
    return 0


def command_lineage(args: argparse.Namespace) -> int:
    from persona_platform.persona_assets.lineage import lineage_graph, render, source_files

    settings = load_settings()
    warehouse = open_warehouse(settings)
    if not warehouse.exists():
        raise SettingsError(f"no warehouse at {settings.warehouse_label}: run `persona run` first")
    with warehouse.connect() as con:
        nodes = lineage_graph(con, args.table, args.row_id)
        files = source_files(con)
    print("\n".join(render(nodes, f"{args.table}:{args.row_id}", files, args.max_inputs)))
    return 0


# Provenance of every result row: what `persona lineage` follows; `persona show` leaves it out unless asked.
HIDDEN_COLUMNS = ("input_ids", "run_id", "code_version", "prompt_hash")
SHOW_STRING_WIDTH = 40  # characters of a string shown in a table's cell


def command_show(args: argparse.Namespace) -> int:
    """Print rows of a warehouse table: as a table when it fits the terminal, else one record at a time."""
    import duckdb

    settings = load_settings()
    warehouse = open_warehouse(settings)
    if not warehouse.exists():
        raise SettingsError(f"no warehouse yet at {settings.warehouse_label}; run `persona run` first")
    if args.limit < 0:
        raise PersonaInputError(f"--limit {args.limit}: must be 0 or more")
    with reading(warehouse) as con:
        schema, table = known_table(con, args.table, settings.warehouse_label)
        name = f'"{schema}"."{table}"'
        columns = [d[0] for d in con.execute(f"SELECT * FROM {name} LIMIT 0").description]
        shown = shown_columns(args, f"{schema}.{table}", columns)
        where = f" WHERE {args.where}" if args.where else ""
        query = f"SELECT {', '.join(_quoted(c) for c in shown)} FROM {name}{where} LIMIT {args.limit}"
        count = f"SELECT count(*) FROM {name}{where}"
        try:
            statements = con.extract_statements(count)
            if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
                raise PersonaInputError(f"--where {args.where!r}: not one condition on the table's rows")
            total = con.execute(count).fetchone()[0]
            frame = con.execute(query).pl()
        except duckdb.Error as exc:
            raise PersonaInputError(f"--where {args.where!r}: {_one_line(exc)}") from None
    hidden = [] if args.columns else [c for c in columns if c not in shown]
    print(
        f"{schema}.{table}: {frame.height} of {total:,} rows"
        + (f" where {args.where}" if args.where else "")
        + (f"; hidden columns: {', '.join(hidden)} (--all-columns shows them)" if hidden else "")
    )
    if frame.height:
        print(render_rows(frame, shutil.get_terminal_size().columns))
    return 0


@contextmanager
def reading(warehouse):
    """A connection that reads the warehouse: a DuckDB file opened read-only, or the DuckLake."""
    import duckdb

    if warehouse.is_lake:
        with warehouse.connect() as con:
            yield con
        return
    try:
        con = duckdb.connect(str(warehouse.path), read_only=True)
    except duckdb.Error as exc:
        raise PersonaInputError(f"{warehouse.path}: {_one_line(exc)}") from None
    try:
        yield con
    finally:
        con.close()


def known_table(con, wanted: str, label: str) -> tuple[str, str]:
    """(schema, table) of the table or view ``wanted`` names as schema.table; else a one-line error that
    names the tables it may mean."""
    rows = con.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "UNION SELECT schema_name, view_name FROM duckdb_views() "
        "WHERE database_name = current_database() AND NOT internal ORDER BY ALL"
    ).fetchall()
    tables = {f"{s}.{t}": (s, t) for s, t in rows}
    if wanted in tables:
        return tables[wanted]
    if not tables:
        raise PersonaInputError(f"no table {wanted!r} in {label}: it has no tables yet; run `persona run`")
    close = [k.replace("/", ".") for k in similar_keys(wanted, [t.replace(".", "/") for t in tables])]
    hint = f"did you mean {' or '.join(close[:3])}?" if close else f"tables: {', '.join(tables)}"
    raise PersonaInputError(f"no table {wanted!r} in {label}; {hint}")


def shown_columns(args: argparse.Namespace, table: str, columns: list[str]) -> list[str]:
    if not args.columns:
        return columns if args.all_columns else [c for c in columns if c not in HIDDEN_COLUMNS]
    wanted = [c.strip() for c in args.columns.split(",") if c.strip()]
    for column in wanted:
        if column not in columns:
            close = difflib.get_close_matches(column, columns, n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else f"columns: {', '.join(columns)}"
            raise PersonaInputError(f"--columns: {table} has no column {column!r}; {hint}")
    return wanted


def render_rows(frame, width: int) -> str:
    """The rows as a table with long strings cut, when that fits in ``width`` characters; else each row as
    one line per column (a wide table wrapped cell by cell is unreadable)."""
    import polars as pl

    frame = frame.with_columns(pl.col(pl.String).str.replace_all(r"\s+", " "))
    with pl.Config(
        tbl_rows=-1,
        tbl_cols=-1,
        tbl_width_chars=65_535,  # the most polars takes
        fmt_str_lengths=SHOW_STRING_WIDTH,
        fmt_table_cell_list_len=3,
        tbl_hide_dataframe_shape=True,
        tbl_hide_column_data_types=True,
    ):
        text = str(frame)
    if max(len(line) for line in text.splitlines()) <= width:
        return text
    label = max(len(c) for c in frame.columns)
    room = max(width - label - 2, 20)
    lines = []
    for number, row in enumerate(frame.iter_rows(named=True), 1):
        lines.append(f"-[ row {number} ]".ljust(min(width, 60), "-"))
        for column, value in row.items():
            cell = "null" if value is None else " ".join(str(value).split())
            lines.append(f"{column:<{label}}  {cell if len(cell) <= room else cell[: room - 1] + '…'}")
    return "\n".join(lines)


def _quoted(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def _one_line(exc: Exception) -> str:
    """DuckDB's message without the query excerpt and caret it adds."""
    text = str(exc).split("\n\nLINE ")[0]
    return " ".join(text.split())


def command_review(args: argparse.Namespace) -> int:
    from persona_platform.persona_assets.review import PER_EXPERIMENT, REVIEW_TABLE, questions_of, run_review
    from persona_platform.resources.warehouse import experiment_schema

    settings = load_settings()
    domain, table, column, order = SOURCES[args.kind]
    schema = (
        experiment_schema(chosen_experiment(args, f"review-questions --kind {args.kind}"), domain)
        if args.kind in PER_EXPERIMENT
        else domain
    )
    warehouse = open_warehouse(settings)
    source = warehouse.read_optional(schema, table)
    if source is None:
        raise SettingsError(
            f"no {schema}.{table} in {settings.warehouse_label}: materialize it first (persona run)"
        )
    questions = questions_of(source.sort(order), schema, table, column)
    run_review(
        questions,
        warehouse.read_optional(domain, REVIEW_TABLE),
        save=lambda frame: warehouse.replace(domain, REVIEW_TABLE, frame),
    )
    return 0


def chosen_experiment(args: argparse.Namespace, command: str) -> str:
    """The experiment a command reads: --experiment, or the only one there is."""
    from persona_platform.persona_assets.experiments import experiments

    known = [x.name for x in experiments()]
    if args.experiment is None and len(known) > 1:
        raise SettingsError(f"{command}: name the experiment, --experiment {'|'.join(known)}")
    chosen = args.experiment or known[0]
    _check_known("experiment", {chosen}, known, str(load_settings().experiments_dir))
    return chosen


def command_export(args: argparse.Namespace) -> int:
    """Write one country's training data under one label source as a file `datasets` and TRL read."""
    from persona_platform.partitions import COUNTRIES
    from persona_platform.persona_assets.finetune.export import FORMATS, export_frame, write_dataset

    settings = load_settings()
    experiment = chosen_experiment(args, "export labels")
    (country,) = country_partition_keys([args.country])
    _check_known("country", {country}, COUNTRIES, str(settings.goqa_source))
    warehouse = open_warehouse(settings)
    schema, table = f"{experiment}__finetune", FORMATS[args.format]
    missing = SettingsError(
        f"no {schema}.{table} in {settings.warehouse_label}: materialize it first "
        f"(persona run --experiment {experiment})"
    )
    if not warehouse.exists():
        raise missing
    with reading(warehouse) as con:
        try:
            known_table(con, f"{schema}.{table}", settings.warehouse_label)
        except PersonaInputError:
            raise missing from None
        where = "country = ? AND labels = ?" + (" AND variant = ?" if args.variant else "")
        values = [country, args.labels] + ([args.variant] if args.variant else [])
        rows = con.execute(f'SELECT * FROM "{schema}"."{table}" WHERE {where}', values).pl()
    if rows.is_empty():
        raise SettingsError(
            f"{schema}.{table}: no rows for country {country!r}, labels {args.labels!r}"
            + (f", variant {args.variant!r}" if args.variant else "")
            + " (materialize its partition first)"
        )
    try:
        write_dataset(export_frame(rows, args.format), args.file)
    except ValueError as exc:
        raise PersonaInputError(str(exc)) from None
    variants = ", ".join(sorted(rows["variant"].unique()))
    print(
        f"{args.file}: {rows.height} {args.format} examples of {country} ({args.labels} labels; {variants})"
    )
    return 0


def command_world(args: argparse.Namespace) -> int:
    """Write the planted-signal engine's worlds as a survey file (Hugging Face CSV format)."""
    from persona_platform.benchmarks.survey_generator import SurveyQuestion, write_hf_csv
    from persona_platform.resources.llm.simulated import WorldSpec, world_survey

    try:
        spec = WorldSpec.parse(args.settings)
    except (ValueError, TypeError) as exc:
        raise SettingsError(f"persona world --settings: {exc}") from exc
    survey = [SurveyQuestion(q, options, selections) for q, options, selections in world_survey(spec)]
    write_hf_csv(survey, args.file)
    print(
        f"{args.file}: {len(survey)} questions in {spec.countries} countries "
        f"of the planted-signal worlds {spec.label()}"
    )
    print(
        f"Run on it:  PERSONA_ENGINE=simulated PERSONA_MODEL='{args.settings}' "
        f"PERSONA_GOQA_SOURCE={args.file} persona run --select 'group:opinions or group:elicitation'"
    )
    return 0


def command_catalogue(args: argparse.Namespace) -> int:
    """Write docs/catalogue.md from the Definitions, or with --check say whether the committed
    file is stale."""
    from persona_platform.persona_assets.catalogue import (
        CATALOGUE,
        COMMAND,
        catalogue_markdown,
        catalogue_path,
    )
    from persona_platform.persona_assets.definitions import defs

    text = catalogue_markdown(defs)
    if args.check:
        if not CATALOGUE.is_file() or CATALOGUE.read_text(encoding="utf-8") != text:
            print(
                f"persona catalogue: {catalogue_path()} is stale: run `{COMMAND}` to regenerate it",
                file=sys.stderr,
            )
            return 1
        print(f"{catalogue_path()} is up to date")
        return 0
    CATALOGUE.parent.mkdir(parents=True, exist_ok=True)
    CATALOGUE.write_text(text, encoding="utf-8")
    print(f"wrote {catalogue_path()}")
    return 0


def command_ui(args: argparse.Namespace) -> int:
    settings = load_settings()
    prepare_instance(settings)
    env = {**os.environ, "DAGSTER_HOME": str(settings.dagster_home)}
    # `dg dev`, not `dagster dev` (superseded in Dagster 1.13): the webserver and the daemon, with the code
    # location named in pyproject.toml's [tool.dg], served by this interpreter.
    dg = Path(sys.executable).with_name("dg")
    argv = [str(dg), "dev", "--target-path", str(PROJECT_ROOT), "--host", args.host, "--port", str(args.port)]
    os.chdir(PROJECT_ROOT)
    os.execve(argv[0], argv, env)
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="persona", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="materialize every asset for every partition (or a selection)")
    run.add_argument(
        "--countries",
        help="comma-separated countries, by partition key or name (default: all in the survey "
        "source; `opinions/goqa_countries` lists both)",
    )
    run.add_argument("--agents", help="comma-separated agent keys (default: all in the registry)")
    run.add_argument("--select", help="a Dagster asset selection, e.g. 'group:opinions'")
    run.add_argument(
        "--experiment",
        help="comma-separated experiments (experiments/*.yaml): only their assets and the shared ones they "
        "read (default: every experiment, and their comparison)",
    )
    run.add_argument(
        "--config",
        type=Path,
        help="run config (YAML with 'ops:', keyed by op name or by step name for every experiment); default "
        "for the experiments on an embedded model: data/embedded_profile.yaml",
    )
    run.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="K",
        help="run the model steps' partitions as up to K runs at once, in K worker processes that each load "
        "the model once (chunks balanced by expected cost; PERSONA_PARTITIONS_PER_RUN caps a chunk); the "
        "instance's gpu pool takes K meanwhile. Default 1: every run in this process, one model load",
    )
    run.set_defaults(handler=command_run)
    bench = commands.add_parser("bench", help="run benchmarks; results also go to benchmarks/results/")
    bench.add_argument("name", choices=[*BENCHMARKS, "all"])
    bench.add_argument("--json", action="store_true", help="print JSON instead of the markdown table")
    bench.set_defaults(handler=command_bench)
    lineage = commands.add_parser("lineage", help="print a result row's chain back to its source file rows")
    lineage.add_argument("table", help="schema.table, e.g. elicitation.accuracy_summary")
    lineage.add_argument("row_id", help="the row's row_id")
    lineage.add_argument("--max-inputs", type=int, default=3, help="inputs shown per row (default 3)")
    lineage.set_defaults(handler=command_lineage)
    show = commands.add_parser("show", help="print a warehouse table's rows readably")
    show.add_argument("table", help="schema.table, e.g. elicitation.accuracy_summary")
    show.add_argument("--where", help="a SQL condition on the rows, e.g. \"country = 'Japan'\"")
    show.add_argument("--limit", type=int, default=20, help="rows shown (default 20)")
    show.add_argument("--columns", help="comma-separated columns to show, in this order")
    show.add_argument(
        "--all-columns",
        action="store_true",
        help=f"show the provenance columns too ({', '.join(HIDDEN_COLUMNS)})",
    )
    show.set_defaults(handler=command_show)
    review = commands.add_parser(
        "review-questions", help="keep, edit or drop each generated question (resumable)"
    )
    review.add_argument(
        "--kind",
        choices=sorted(SOURCES),
        default="votes",
        help="votes: motions' questions; traits: probe questions; monologues: monologue prompts",
    )
    review.add_argument(
        "--experiment",
        help="traits and monologues: the experiment whose generated questions to review "
        "(default: the only one)",
    )
    review.set_defaults(handler=command_review)
    export = commands.add_parser("export", help="write warehouse data as files other tools read")
    exported = export.add_subparsers(dest="what", required=True)
    labels = exported.add_parser(
        "labels", help="a country's training data under one label source, as JSON Lines or Parquet for TRL"
    )
    labels.add_argument("--country", required=True, help="the country, by partition key or name")
    labels.add_argument("--labels", required=True, choices=["icm", "gold", "random"], help="the label source")
    labels.add_argument(
        "--format",
        required=True,
        choices=["sft", "dpo"],
        help="sft: prompt, completion; dpo: prompt, chosen, rejected",
    )
    labels.add_argument("--variant", help="all or binary (default: both, in one file)")
    labels.add_argument("--experiment", help="the experiment whose labels (default: the only one)")
    labels.add_argument("file", type=Path, help="the file to write: .jsonl, .json (JSON Lines) or .parquet")
    labels.set_defaults(handler=command_export)
    world = commands.add_parser("world", help="write the planted-signal engine's worlds as a survey file")
    world.add_argument("file", type=Path, help="the survey file to write (Hugging Face CSV format)")
    world.add_argument(
        "--settings",
        default="countries=2",
        help="the worlds, as PERSONA_MODEL gives them to "
        "PERSONA_ENGINE=simulated, e.g. 'seed=3,countries=4,salience=1.5' (default: countries=2)",
    )
    world.set_defaults(handler=command_world)
    catalogue = commands.add_parser(
        "catalogue", help="write docs/catalogue.md, the catalogue of assets and tables"
    )
    catalogue.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when docs/catalogue.md differs from what the command would write",
    )
    catalogue.set_defaults(handler=command_catalogue)
    ui = commands.add_parser("ui", help="open the Dagster UI on this platform's instance")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(handler=command_ui)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=BetaWarning)
    try:
        return args.handler(args)
    except PersonaInputError as exc:
        print(f"persona: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
