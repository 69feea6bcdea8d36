"""Checks on the elicitation tables."""

from persona_platform.persona_assets.common import schema_change_checks

schema_checks = schema_change_checks(["elicitation", "icm_labels"])
