"""Input files the platform reads, as resources so a run (or the UI) can point elsewhere."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from persona_platform.resources.inputs.survey import SurveySource, read_survey_once


class GoqaSource(ConfigurableResource):
    """A GlobalOpinionQA file in any supported format (chosen by content)."""

    path: str = Field(description="Hugging Face CSV, flattened JSON or curated wide CSV.")

    def load(self) -> SurveySource:
        return read_survey_once(self.path)


class BoardSource(ConfigurableResource):
    """A board: ``agents.json`` (the registry), ``transcripts/*.json``, ``votes.csv``."""

    path: str = Field(description="The board folder.")

    def transcripts_dir(self) -> Path:
        return Path(self.path) / "transcripts"

    def votes_file(self) -> Path:
        return Path(self.path) / "votes.csv"
