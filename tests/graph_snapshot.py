"""A snapshot of the whole asset graph, so that any change to it shows up in review as a diff.

    python -m tests.graph_snapshot          # rewrite tests/graph_snapshot.json after an intended change

Partition keys are data (countries come from the survey, agents from the registry), so the
snapshot names each asset's partitioning, not its keys; it is taken on the sample data, with the
repository's experiments (experiments/*.yaml).
"""

from __future__ import annotations

import json
from pathlib import Path

SNAPSHOT = Path(__file__).with_name("graph_snapshot.json")


def graph_snapshot() -> dict:
    from persona_platform.partitions import partitioning
    from persona_platform.persona_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "partitioned_by": partitioning(node.partitions_def),
            "code_version": node.code_version,
            "depends_on": sorted(k.to_user_string() for k in node.parent_keys),
            "checks": sorted(c.name for c in node.check_keys),
            "pools": sorted(node.pools or ()),
            "kinds": sorted(node.kinds),
            "backfill": None if node.backfill_policy is None else str(node.backfill_policy.policy_type.value),
            "tags": {k: v for k, v in sorted(node.tags.items()) if not k.startswith("dagster/")},
        }
    jobs = {
        job.name: sorted(k.to_user_string() for k in job.asset_layer.selected_asset_keys)
        for job in defs.resolve_all_job_defs()
        if not job.name.startswith("__")
    }
    repository = defs.get_repository_def()
    return {
        "assets": assets,
        "jobs": jobs,
        "schedules": {s.name: s.job_name for s in sorted(repository.schedule_defs, key=lambda s: s.name)},
        "sensors": sorted(s.name for s in repository.sensor_defs),
    }


def render(snapshot: dict) -> str:
    """JSON with one line per asset, job, schedule and sensor: a change is a one-line diff."""
    sections = []
    for section, entries in snapshot.items():
        items = entries.items() if isinstance(entries, dict) else enumerate(entries)
        body = ",\n".join(
            f"  {json.dumps(k) + ': ' if isinstance(entries, dict) else ''}"
            f"{json.dumps(v, sort_keys=True, ensure_ascii=False)}"
            for k, v in items
        )
        brackets = "{}" if isinstance(entries, dict) else "[]"
        sections.append(f" {json.dumps(section)}: {brackets[0]}\n{body}\n {brackets[1]}")
    return "{\n" + ",\n".join(sections) + "\n}\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--print"]:
        print(render(graph_snapshot()), end="")
    else:
        SNAPSHOT.write_text(render(graph_snapshot()))
        print(f"wrote {SNAPSHOT}")
