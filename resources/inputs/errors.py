"""The base of every error that means "your input is wrong", as opposed to a bug."""

from __future__ import annotations

from pathlib import Path


class PersonaInputError(ValueError):
    """Bad input: a file, a setting or a registry. The message says where and what."""


class InputFileError(PersonaInputError):
    """Bad content in an input file; the message names the file, the row and the field."""

    def __init__(self, path: Path | str, row: int | None, field_name: str | None, problem: str):
        self.path, self.row, self.field, self.problem = str(path), row, field_name, problem
        where = [self.path]
        if row is not None:
            where.append(f"row {row}")
        if field_name is not None:
            where.append(f"field '{field_name}'")
        super().__init__(f"{', '.join(where)}: {problem}")
