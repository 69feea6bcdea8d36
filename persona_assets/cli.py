"""The ``persona`` command: run the graph, open the UI, trace a row, review questions, run benchmarks,
write the catalogue."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from dagster import BetaWarning

from persona_platform.persona_assets.instance import EMBEDDED_PROFILE, load_op_config, prepare_instance
from persona_platform.persona_assets.review import SOURCES
from persona_platform.resources.inputs.errors import PersonaInputError
from persona_platform.resources.settings import (
    DATA_DIR,
    PROJECT_ROOT,
    TINY_MODEL,
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


def command_run(args: argparse.Namespace) -> int:
    settings = load_settings()
    from dagster import AssetSelection

    from persona_platform.partitions import AGENT_REGISTRY_FILE, AGENTS, COUNTRIES
    from persona_platform.persona_assets.definitions import defs
    from persona_platform.persona_assets.runner import execute_plan, plan_runs
    from persona_platform.resources.llm.resource import process_usage

    countries, agents = country_partition_keys(_split(args.countries)), _split(args.agents)
    _check_known("country", countries, COUNTRIES, str(settings.goqa_source))
    _check_known("agent", agents, [a.key for a in AGENTS], str(AGENT_REGISTRY_FILE))
    # A multi-asset runs whole: selecting one of its outputs brings the others.
    selection = (
        AssetSelection.from_string(args.select) if args.select else AssetSelection.all()
    ).required_multi_asset_neighbors()
    instance = prepare_instance(settings)
    config_file = args.config or (EMBEDDED_PROFILE if settings.llm.model == TINY_MODEL else None)
    op_config = load_op_config(config_file)
    runs = plan_runs(defs, selection, countries, agents)
    print(f"persona run: {len(runs)} runs planned; home {settings.home}; model {settings.llm}")
    if config_file:
        print(f"run config: {config_file}")
    started = time.monotonic()
    outcomes = execute_plan(defs, runs, instance, op_config)
    elapsed = time.monotonic() - started
    failed = [o for o in outcomes if not o.success]
    usage = process_usage()
    print()
    print(
        f"{len(outcomes) - len(failed)} of {len(runs)} runs succeeded in {elapsed:.1f} s; "
        f"model loads {usage.model_loads}, forward passes {usage.forward_passes}, "
        f"tokens computed {usage.tokens_computed}"
    )
    print(f"Tables in {settings.warehouse_label}:")
    counts = open_warehouse(settings).table_row_counts()
    width = max((len(s) + len(t) + 1 for s, t, _ in counts), default=0)
    for schema, table, count in counts:
        print(f"  {f'{schema}.{table}':<{width}} {count:>9,} rows")
    plots = sorted((settings.artifacts_dir / "plots").glob("**/*.png"))
    print(f"Plots: {settings.artifacts_dir / 'plots'} ({len(plots)} files)")
    print("Open the UI:  persona ui   (then http://127.0.0.1:3000)")
    print("Trace a row:  persona lineage <schema.table> <row_id>")
    if failed:
        print(f"\nFAILED run {failed[0].run_id}: {failed[0].error}", file=sys.stderr)
        return 1
    return 0


def open_warehouse(settings: Settings):
    """The warehouse the settings name: the DuckDB file or the DuckLake."""
    from persona_platform.resources.warehouse import Warehouse

    return Warehouse(settings.warehouse, data_path=settings.warehouse_data_path)


BENCHMARKS = ("icm", "icm-recovery", "scoring", "training", "loads", "planning", "warehouse", "survey")


def command_bench(args: argparse.Namespace) -> int:
    import json
    import platform

    from persona_platform.benchmarks import (
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


def command_review(args: argparse.Namespace) -> int:
    from persona_platform.persona_assets.review import REVIEW_TABLE, questions_of, run_review

    settings = load_settings()
    schema, table, column, order = SOURCES[args.kind]
    warehouse = open_warehouse(settings)
    source = warehouse.read_optional(schema, table)
    if source is None:
        raise SettingsError(
            f"no {schema}.{table} in {settings.warehouse_label}: materialize it first (persona run)"
        )
    questions = questions_of(source.sort(order), schema, table, column)
    run_review(
        questions,
        warehouse.read_optional(schema, REVIEW_TABLE),
        save=lambda frame: warehouse.replace(schema, REVIEW_TABLE, frame),
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
        "--config",
        type=Path,
        help="run config (YAML with 'ops:'); default with the embedded model: data/embedded_profile.yaml",
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
    review = commands.add_parser(
        "review-questions", help="keep, edit or drop each generated question (resumable)"
    )
    review.add_argument(
        "--kind",
        choices=sorted(SOURCES),
        default="votes",
        help="votes: motions' questions; traits: probe questions; monologues: monologue prompts",
    )
    review.set_defaults(handler=command_review)
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
