"""The traits domain's assets; the root definitions merge every domain's."""

from persona_platform.persona_assets.common import domain_definitions
from persona_platform.persona_assets.traits import assets

defs = domain_definitions(assets, extra=[assets.question_reviews])
