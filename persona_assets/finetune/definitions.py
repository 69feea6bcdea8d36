"""The fine-tuning domain's assets and checks; the root definitions merge every domain's."""

from persona_platform.persona_assets.common import domain_definitions
from persona_platform.persona_assets.finetune import assets, checks

defs = domain_definitions(assets, checks)
