"""Partitions are data: countries come from the survey source, agents from the registry file.

Both are static partitions built when the code location loads; a new country in
the source or a new agent in the registry appears after a reload.
"""

from dagster import MultiPartitionsDefinition, StaticPartitionsDefinition

from persona_platform.resources.inputs.registry import Agent, agent_registry, country_registry
from persona_platform.resources.settings import load_settings

_settings = load_settings()
AGENT_REGISTRY_FILE = _settings.board_dir / "agents.json"
# Partition key -> the country's name in the survey source (they differ only where Dagster refuses a
# character).
COUNTRY_NAMES: dict[str, str] = country_registry(_settings.goqa_source)
COUNTRIES: list[str] = list(COUNTRY_NAMES)
AGENTS: list[Agent] = agent_registry(AGENT_REGISTRY_FILE)
AGENTS_BY_KEY: dict[str, Agent] = {a.key: a for a in AGENTS}
# Agent key -> the name people use for them (prompts, judges and vote questions address the person).
DISPLAY_NAMES: dict[str, str] = {a.key: a.display_name for a in AGENTS}

countries_partitions = StaticPartitionsDefinition(COUNTRIES)
agents_partitions = StaticPartitionsDefinition([a.key for a in AGENTS])
# Dimension order in keys is alphabetical: "agent|country".
agent_country_partitions = MultiPartitionsDefinition(
    {"agent": agents_partitions, "country": countries_partitions}
)


def partitioning(partitions_def) -> str:
    """The name of a partitions definition: unpartitioned, country, agent or agent_country."""
    if partitions_def is None:
        return "unpartitioned"
    if partitions_def == countries_partitions:
        return "country"
    if partitions_def == agents_partitions:
        return "agent"
    if partitions_def == agent_country_partitions:
        return "agent_country"
    raise ValueError(f"unknown partitions definition {partitions_def}")


__all__ = [
    "AGENTS",
    "AGENTS_BY_KEY",
    "AGENT_REGISTRY_FILE",
    "COUNTRIES",
    "COUNTRY_NAMES",
    "DISPLAY_NAMES",
    "agent_country_partitions",
    "agents_partitions",
    "countries_partitions",
    "partitioning",
]
