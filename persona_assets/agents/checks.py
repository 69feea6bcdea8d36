"""Checks on the agents' tables."""

from persona_platform.persona_assets.common import schema_change_checks
from persona_platform.persona_assets.experiments import Experiment


def experiment_checks(x: Experiment) -> list:
    return schema_change_checks(
        list(x.key("agents", "lora_adapters").path), list(x.key("agents", "perplexity_matrix").path)
    )
