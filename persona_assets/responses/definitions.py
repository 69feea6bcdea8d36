"""The responses domain's assets; the root definitions merge every domain's."""

from persona_platform.persona_assets.common import domain_definitions
from persona_platform.persona_assets.responses import assets

defs = domain_definitions(assets)
