"""The traits domain's assets and checks; the root definitions merge every domain's."""

from dagster import Definitions, load_assets_from_modules

from persona_platform.persona_assets.traits import assets

defs = Definitions(
    assets=[*load_assets_from_modules([assets]), assets.question_reviews],
)
