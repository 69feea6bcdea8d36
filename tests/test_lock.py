"""The lock files (requirements/*.lock, written by scripts/lock.py) against pyproject.toml, and the running
environment against the lock scripts/setup.sh installed into it."""

import re
import sys
import tomllib
from importlib.metadata import distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {name: ROOT / "requirements" / f"{name}.lock" for name in ("cpu", "gpu")}
LINE = re.compile(r"^(?P<name>[a-z0-9-]+)==(?P<version>\S+) --hash=sha256:[0-9a-f]{64}$")
# The first line of a lock names the extras it holds: "# persona-platform[dev,gpu] for CPython 3.11 ...".
HEADER = re.compile(r"^# persona-platform\[(?P<extras>[a-z,]+)\] for CPython 3\.11 ")


def read_lock(path: Path) -> tuple[list[str], dict[str, Version]]:
    """The extras a lock holds and its pins; a malformed line fails naming the file and line."""
    lines = path.read_text().splitlines()
    header = HEADER.match(lines[0])
    assert header, f"{path.name}:1: no '# persona-platform[extras] for CPython 3.11' header"
    pins = {}
    for number, line in enumerate(lines, start=1):
        if line.startswith("#"):
            continue
        match = LINE.match(line)
        assert match, f"{path.name}:{number}: not 'name==version --hash=sha256:<64 hex>': {line!r}"
        assert match["name"] not in pins, f"{path.name}:{number}: {match['name']} locked twice"
        pins[match["name"]] = Version(match["version"])
    return header["extras"].split(","), pins


def direct_requirements(extras: list[str]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    return [Requirement(r) for r in [*project["dependencies"], *(r for e in extras for r in optional[e])]]


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_direct_dependency_is_locked_at_a_version_pyproject_allows(lock):
    extras, pins = read_lock(LOCKS[lock])
    # setup.sh installs either lock for the test suite (`setup.sh dev`): both must hold the dev tools.
    assert "dev" in extras, f"{lock}.lock: no dev extra"
    problems = []
    for req in direct_requirements(extras):
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req}: not in {lock}.lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req}: {lock}.lock has {pins[name]}")
    assert not problems, "pyproject.toml and the lock disagree (run scripts/lock.py):\n" + "\n".join(problems)


def test_the_locks_hold_the_builds_of_torch_each_machine_needs():
    _, cpu = read_lock(LOCKS["cpu"])
    gpu_extras, gpu = read_lock(LOCKS["gpu"])
    # The CPU build lies on disk (a find-links folder); PyPI's build is the CUDA one that vLLM needs.
    assert cpu["torch"].local == "cpu"
    assert gpu["torch"].local is None and "vllm" in gpu and "gpu" in gpu_extras
    assert "vllm" not in cpu


def test_the_environment_holds_exactly_the_lock_it_was_set_up_from():
    """setup.sh records the lock it installed in the venv (.venv/.lock); other environments skip."""
    recorded = Path(sys.prefix) / ".lock"
    if not recorded.is_file():
        pytest.skip(f"{sys.prefix} was not set up by scripts/setup.sh")
    lock = recorded.read_text().strip()
    assert lock in LOCKS, f"{recorded}: unknown lock {lock!r}"
    _, pins = read_lock(LOCKS[lock])
    installed = {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in distributions()}
    installed = {name: v for name, v in installed.items() if name not in ("pip", "persona-platform")}
    differ = sorted(n for n in installed.keys() | pins.keys() if installed.get(n) != pins.get(n))
    assert not differ, f"installed vs {lock}.lock: " + ", ".join(
        f"{n} {installed.get(n)} vs {pins.get(n)}" for n in differ
    )
