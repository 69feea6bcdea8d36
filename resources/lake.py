"""DuckLake: the warehouse for many writers, its catalog in PostgreSQL, its data files on a shared path.

No Dagster here: how a DuckLake location is written, checked and redacted, how the
extensions load without a network, how a connection attaches the lake, and which
errors mean "another writer committed first, try again".

A location is ``ducklake:postgres:<libpq connection string or postgresql:// URI>``.
The password belongs in ``PGPASSWORD`` or a pgpass file, which libpq reads itself;
one written into the location is accepted, but every message and every piece of
metadata that shows the location shows it redacted.
"""

from __future__ import annotations

import atexit
import importlib.util
import re
import shutil
import tempfile
import time
from pathlib import Path

import duckdb

PREFIX = "ducklake:"
POSTGRES_PREFIX = "ducklake:postgres:"
CATALOG_NAME = "lake"
EXTENSIONS = {"ducklake": "duckdb_extension_ducklake", "postgres": "duckdb_extension_postgres"}

# password=secret, password = 'se cret', and postgresql://user:secret@host
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s]+)", re.IGNORECASE)
_URI_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)([^@\s]*)(@)", re.IGNORECASE)
_KEYWORD_PAIR = re.compile(r"\s*([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']+)\s*")


class LakeLocationError(ValueError):
    """A DuckLake location that cannot work; the message never holds a password."""


def is_lake(database: str) -> bool:
    return str(database).startswith(PREFIX)


def redact(text: str) -> str:
    """``text`` with every PostgreSQL password in it replaced by ``***``."""
    text = _KEYWORD_PASSWORD.sub(r"\1***", text)
    return _URI_PASSWORD.sub(r"\1***\3", text)


def passwords_in(location: str) -> list[str]:
    """The literal passwords a location holds, so error texts can be scrubbed of them too."""
    found = [m.group(2).strip("'") for m in _KEYWORD_PASSWORD.finditer(location)]
    found += [m.group(2) for m in _URI_PASSWORD.finditer(location)]
    return [p for p in found if p]


def scrub(text: str, location: str) -> str:
    text = redact(text)
    for secret in passwords_in(location):
        text = text.replace(secret, "***")
    return text


def check_location(location: str) -> None:
    """Raise LakeLocationError unless ``location`` names a PostgreSQL catalog DuckLake can attach."""
    if not location.startswith(POSTGRES_PREFIX):
        kind = location[len(PREFIX) :].split(":", 1)[0] or "(nothing)"
        raise LakeLocationError(
            f"{redact(location)!r}: the catalog must be PostgreSQL, written ducklake:postgres:<connection>; "
            f"{kind!r} catalogs (DuckDB, SQLite files) serve one machine, "
            "which the plain DuckDB file already does"
        )
    connection = location[len(POSTGRES_PREFIX) :].strip()
    if not connection:
        raise LakeLocationError(
            "ducklake:postgres: names no database: add a libpq connection string "
            "(e.g. 'dbname=lake host=db.internal user=persona') or a postgresql:// URI"
        )
    if connection.startswith(("postgres://", "postgresql://")):
        return
    position = 0
    while position < len(connection):
        match = _KEYWORD_PAIR.match(connection, position)
        if not match or match.end() == position:
            raise LakeLocationError(
                f"{redact(location)!r}: cannot read the connection string at "
                f"{redact(connection[position:])!r}; "
                "write key=value pairs separated by spaces, or a postgresql:// URI"
            )
        position = match.end()


def data_path_for_sql(data_path: str) -> str:
    """A local data path made absolute and created; an object-store URL passed through as written."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", data_path):
        return data_path if data_path.endswith("/") else data_path + "/"
    path = Path(data_path).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return str(path) + "/"


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def load_extensions(con: duckdb.DuckDBPyConnection) -> None:
    """Load DuckLake and PostgreSQL from the pip packages' binaries: no INSTALL, no network.

    The packages hold the extension files built for exactly the pinned DuckDB. LOAD of a
    file derives the extension's entry point from the file name, and the PostgreSQL one
    is really called postgres_scanner, so it is loaded through a link of that name.
    Loading by path (rather than INSTALL into ~/.duckdb and LOAD by name) writes nothing
    to the home directory, which may be read-only in a pod, and leaves no window where
    one process reads a file another is still copying.
    """
    for name, package in EXTENSIONS.items():
        path = _packaged_extension(name, package)
        real_name = "postgres_scanner" if name == "postgres" else name
        if path.name != f"{real_name}.duckdb_extension":
            path = _link_as(path, real_name)
        con.execute(f"LOAD {_sql_string(str(path))}")


_link_dir: Path | None = None


def _link_as(target: Path, real_name: str) -> Path:
    global _link_dir
    if _link_dir is None:
        # mkdtemp: private to this user and this process, so nobody can swap the link for other code.
        _link_dir = Path(tempfile.mkdtemp(prefix="persona-duckdb-extensions-"))
        atexit.register(shutil.rmtree, _link_dir, True)
    link = _link_dir / f"{real_name}.duckdb_extension"
    if not link.is_symlink():
        link.symlink_to(target)
    return link


def _packaged_extension(name: str, package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LakeLocationError(
            f"the Python package {package} is not installed; pip install {package.replace('_', '-')}"
        )
    version = duckdb.__version__
    path = (
        Path(spec.submodule_search_locations[0]) / "extensions" / f"v{version}" / f"{name}.duckdb_extension"
    )
    if not path.is_file():
        raise LakeLocationError(f"{package} has no {name} extension for DuckDB {version} (looked for {path})")
    return path


def attach(con: duckdb.DuckDBPyConnection, location: str, data_path: str, deadline: float) -> None:
    """ATTACH the lake and make it the default catalog, so one set of SQL serves file and lake.

    Writers that start together on a new catalog race to create its metadata tables
    in PostgreSQL; the losers fail with a duplicate-key error and simply attach again.
    """
    # Data inlining (small inserts stored as rows in the catalog) reserves the column name
    # row_id, which every provenance table has; with it off, each write is a Parquet file.
    statement = (
        f"ATTACH {_sql_string(location)} AS {CATALOG_NAME} "
        f"(DATA_PATH {_sql_string(data_path_for_sql(data_path))}, DATA_INLINING_ROW_LIMIT 0)"
    )
    delay = 0.05
    while True:
        failure = None
        try:
            con.execute(statement)
        except duckdb.Error as exc:
            failure = exc
        if failure is None:
            break
        text = str(failure)
        racing = "initialize DuckLake" in text and ("duplicate key" in text or "already exists" in text)
        if not racing or time.monotonic() > deadline:
            # Raised outside the except block: the original error (which quotes the
            # connection string, password included) must not ride along as __context__.
            raise LakeLocationError(f"cannot attach the DuckLake {redact(location)}: {scrub(text, location)}")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    con.execute(f"USE {CATALOG_NAME}")


def is_conflict(exc: BaseException) -> bool:
    """Another transaction committed a change that overlaps ours: the whole transaction may run again.

    DuckLake checks at COMMIT (optimistic concurrency) and says "Transaction conflict";
    DuckDB's own write-write conflicts between connections say "conflict" too.
    """
    return isinstance(exc, duckdb.TransactionException) and "conflict" in str(exc).lower()
