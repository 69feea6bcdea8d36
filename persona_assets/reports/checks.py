"""Checks on the report tables."""

from persona_platform.persona_assets.common import schema_change_checks

schema_checks = schema_change_checks(["elicitation", "accuracy_summary"])
