"""The agents domain's assets and checks; the root definitions merge every domain's."""

from persona_platform.persona_assets.agents import assets, checks
from persona_platform.persona_assets.common import domain_definitions

defs = domain_definitions(assets, checks)
