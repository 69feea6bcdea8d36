"""Checks on the alignment tables."""

from persona_platform.persona_assets.common import schema_change_checks

schema_checks = schema_change_checks(["alignment", "opinion_alignment"])
