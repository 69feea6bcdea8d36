"""Jobs per domain, a backfill schedule per country, and sensors on the input files.

A country's schedules ask for every partition of that country as two runs: the
country partition of every country-partitioned asset, and all agents x that
country as one range (the assets' backfill policy), so each run loads its model
once. A Dagster schedule launches one job, hence two schedules per country.
Sensors hash input content and ask only for what changed.
"""

import hashlib
import json
import re
import unicodedata
from collections import Counter
from pathlib import Path

from dagster import (
    AssetKey,
    AssetSelection,
    DefaultScheduleStatus,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    define_asset_job,
    schedule,
    sensor,
)

from persona_platform.partitions import (
    AGENTS,
    COUNTRIES,
    agent_country_partitions,
    agents_partitions,
    countries_partitions,
    partitioning,
)
from persona_platform.persona_assets.common import BOARD_INPUT
from persona_platform.persona_assets.runner import RANGE_END, RANGE_START, contiguous_ranges
from persona_platform.resources.inputs.survey import read_survey
from persona_platform.resources.inputs.transcripts import alias_table, read_meetings, speaker_agent
from persona_platform.resources.inputs.votes import read_votes

COUNTRY_TAG = "persona/country"


def domain_jobs(assets_defs) -> list:
    """One job per asset group and partitions definition (a Dagster job has one); a group's unpartitioned
    assets ride along with its first partitioned job."""
    jobs = []
    for group in sorted({g for a in assets_defs for g in a.group_names_by_key.values()}):
        by_partitioning: dict[str, list[AssetKey]] = {}
        for assets_def in assets_defs:
            for key in assets_def.keys:
                if assets_def.group_names_by_key[key] == group:
                    by_partitioning.setdefault(partitioning(assets_def.partitions_def), []).append(key)
        partitioned = sorted(d for d in by_partitioning if d != "unpartitioned")
        if partitioned and "unpartitioned" in by_partitioning:
            by_partitioning[partitioned[0]].extend(by_partitioning.pop("unpartitioned"))
        for dimension, dim_keys in sorted(by_partitioning.items()):
            suffix = "" if len(by_partitioning) <= 1 else f"_by_{dimension}"
            jobs.append(
                define_asset_job(
                    f"{group}{suffix}_job",
                    selection=AssetSelection.assets(*sorted(dim_keys)),
                    description=f"Every {group} asset ({dimension}).",
                )
            )
    return jobs


def keys_partitioned_by(assets_defs, pdef) -> list[AssetKey]:
    return sorted(k for a in assets_defs if a.partitions_def == pdef for k in a.keys)


COUNTRY_JOB = "country_partitions_job"
AGENT_COUNTRY_JOB = "agent_country_partitions_job"
BOARD_JOB = "board_job"
UNPARTITIONED_JOB = "unpartitioned_job"


def partition_jobs(assets_defs) -> list:
    """One job per partitions definition: the jobs schedules and sensors launch, and the one `persona run`
    names for unpartitioned assets of several groups."""
    return [
        define_asset_job(
            COUNTRY_JOB,
            selection=AssetSelection.assets(*keys_partitioned_by(assets_defs, countries_partitions)),
            description="Every country-partitioned asset.",
        ),
        define_asset_job(
            AGENT_COUNTRY_JOB,
            selection=AssetSelection.assets(*keys_partitioned_by(assets_defs, agent_country_partitions)),
            description="Every agent x country asset.",
        ),
        define_asset_job(
            BOARD_JOB,
            selection=AssetSelection.tag(*BOARD_INPUT)
            | AssetSelection.assets(*keys_partitioned_by(assets_defs, agents_partitions)),
            description="The board tables and every agent-partitioned asset.",
        ),
        define_asset_job(
            UNPARTITIONED_JOB,
            selection=AssetSelection.assets(*keys_partitioned_by(assets_defs, None)),
            description="Every unpartitioned asset: the tables read whole from the input files, and the "
            "summaries across partitions.",
        ),
    ]


def country_run_requests(country: str) -> list[RunRequest]:
    """Every partition of one country: the country's partitions, then all agents x the country
    as one range."""
    agents = agents_partitions.get_partition_keys()
    return [
        RunRequest(job_name=COUNTRY_JOB, partition_key=country, tags={COUNTRY_TAG: country}),
        RunRequest(
            job_name=AGENT_COUNTRY_JOB,
            tags={
                COUNTRY_TAG: country,
                RANGE_START: f"{agents[0]}|{country}",
                RANGE_END: f"{agents[-1]}|{country}",
            },
        ),
    ]


def schedule_slugs(countries: list[str]) -> dict[str, str]:
    """A Dagster-valid name part per country (ASCII letters, digits, _), unique: a hash of the key is added
    where two countries would share one ('Côte d'Ivoire' -> 'cote_d_ivoire')."""
    ascii_names = {
        c: unicodedata.normalize("NFKD", c).encode("ascii", "ignore").decode().lower() for c in countries
    }
    base = {c: re.sub(r"[^a-z0-9]+", "_", name).strip("_") or "country" for c, name in ascii_names.items()}
    uses = Counter(base.values())
    return {
        c: b if uses[b] == 1 else f"{b}_{hashlib.sha256(c.encode()).hexdigest()[:8]}" for c, b in base.items()
    }


def country_schedules(cron: str) -> list:
    """Two schedules per country, one per job (a schedule launches one job): country, agents x country."""
    schedules = []
    for country, slug in schedule_slugs(COUNTRIES).items():
        for index, (job, part) in enumerate(((COUNTRY_JOB, "country"), (AGENT_COUNTRY_JOB, "agent_country"))):

            @schedule(
                name=f"{slug}_{part}_backfill_schedule",
                cron_schedule=cron,
                job_name=job,
                default_status=DefaultScheduleStatus.STOPPED,
                description=f"Rematerializes every {part.replace('_', ' x ')} partition of {country}.",
            )
            def country_schedule(context, country=country, index=index):
                return country_run_requests(country)[index]

            schedules.append(country_schedule)
    return schedules


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def changed(previous: dict, current: dict) -> list[str]:
    return sorted(k for k, v in current.items() if previous.get(k) != v)


def input_sensors(goqa_source: str, board_dir: str, jobs: list) -> list:
    """A sensor per input: it hashes the content per partition and requests runs only for what changed."""
    by_name = {job.name: job for job in jobs}

    @sensor(
        name="goqa_source_sensor",
        jobs=[by_name[COUNTRY_JOB], by_name[AGENT_COUNTRY_JOB]],
        minimum_interval_seconds=60,
        description="A new or changed GlobalOpinionQA file rematerializes the countries whose rows changed.",
    )
    def goqa_source_sensor(context: SensorEvaluationContext):
        source = read_survey(goqa_source)
        current = {
            c: _digest(
                [(r.question, r.options, r.distribution, r.mean_position) for r in source.records_for(c)]
            )
            for c in source.countries
        }
        countries = changed(json.loads(context.cursor or "{}"), current)
        context.update_cursor(json.dumps(current))
        if not countries:
            return SkipReason("the survey source is unchanged")
        return [r for c in countries if c in COUNTRIES for r in country_run_requests(c)]

    @sensor(
        name="board_sensor",
        jobs=[by_name[BOARD_JOB]],
        minimum_interval_seconds=60,
        description=(
            "New or changed transcripts or vote records rematerialize the agents who speak or vote in them."
        ),
    )
    def board_sensor(context: SensorEvaluationContext):
        board = Path(board_dir)
        aliases = alias_table(AGENTS)
        meetings = read_meetings(board / "transcripts")
        votes = read_votes(board / "votes.csv")
        current = {f"meeting:{m.meeting_id}": m.sha256 for m in meetings} | {"votes": votes.sha256}
        touched = changed(json.loads(context.cursor or "{}"), current)
        context.update_cursor(json.dumps(current))
        if not touched:
            return SkipReason("transcripts and vote records are unchanged")
        agents: set[str] = set()
        for meeting in meetings:
            if f"meeting:{meeting.meeting_id}" in touched:
                agents |= {a for t in meeting.turns if (a := speaker_agent(t.speaker, aliases))}
        if "votes" in touched:
            agents |= {speaker_agent(n, aliases) for m in votes.motions for n in (*m.ayes, *m.nayes)} - {None}
        # The board tables and the touched agents' partitions in one run per contiguous block of agents,
        # so no agent's run can read board tables older than its own.
        return [
            RunRequest(
                job_name=BOARD_JOB,
                tags={"persona/trigger": "board", RANGE_START: block[0], RANGE_END: block[-1]},
            )
            for block in contiguous_ranges(agents_partitions.get_partition_keys(), agents)
        ]

    return [goqa_source_sensor, board_sensor]
