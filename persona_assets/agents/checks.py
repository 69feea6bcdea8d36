"""Checks on the agents' tables."""

from persona_platform.persona_assets.common import schema_change_checks

schema_checks = schema_change_checks(["agents", "lora_adapters"], ["agents", "perplexity_matrix"])
