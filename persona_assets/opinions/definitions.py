"""The opinions domain's assets and checks; the root definitions merge every domain's."""

from dagster import Definitions, load_asset_checks_from_modules, load_assets_from_modules

from persona_platform.persona_assets.opinions import assets, checks

defs = Definitions(
    assets=load_assets_from_modules([assets]),
    asset_checks=load_asset_checks_from_modules([checks]),
)
