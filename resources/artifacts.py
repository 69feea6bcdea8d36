"""Artifacts on disk under ``PERSONA_HOME/artifacts``: plots, checkpoints, models.

Writes are atomic (a temporary file renamed into place) and return the sha256
that result tables record next to the path.
"""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from persona_platform.resources.files import write_atomic


class ArtifactStore(ConfigurableResource):
    root: str = Field(description="The artifacts folder, PERSONA_HOME/artifacts by default.")

    def within(self, *parts: str) -> ArtifactStore:
        """The store of a subfolder."""
        return ArtifactStore(root=str(self.path(*parts)))

    def path(self, *parts: str) -> Path:
        return Path(self.root, *parts)

    def write(self, data: bytes, *parts: str) -> tuple[Path, str]:
        path = self.path(*parts)
        return path, write_atomic(path, data)

    def read_text(self, *parts: str) -> str | None:
        path = self.path(*parts)
        return path.read_text() if path.exists() else None
