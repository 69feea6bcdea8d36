"""The lock files (requirements/*.lock, written by scripts/lock.py) against pyproject.toml and (gpu.lock)
against what pip resolves from PyPI, and the running environment against the lock scripts/setup.sh
installed into it."""

import importlib.util
import re
import sys
import tomllib
import urllib.error
import urllib.request
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
# The resolving tests ask PyPI (its index and its file host); pip's retries on a dead network would take
# minutes, so a probe of each decides first.
PYPI_PROBES = ("https://pypi.org/simple/pip/", "https://files.pythonhosted.org/")


def load_lock_script():
    """scripts/lock.py as a module: the tests resolve exactly as it does."""
    spec = importlib.util.spec_from_file_location("lock_script", ROOT / "scripts" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pypi():
    """scripts/lock.py, once PyPI answered within a few seconds; the test skips otherwise."""
    for url in PYPI_PROBES:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5).close()
        except urllib.error.HTTPError:
            pass  # an answer, even an error status, means the host is reachable
        except OSError as error:
            pytest.skip(f"PyPI cannot be reached ({url}: {error}); resolving the locks needs it")
    return load_lock_script()


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


@pytest.mark.network
@pytest.mark.timeout(600)
def test_pip_resolves_the_gpu_lock_from_pypi_to_exactly_its_pins(pypi, tmp_path):
    """pip's resolver, for the GPU image's target (CPython 3.11, x86_64 manylinux, wheels only), given the
    project's requirements with the dev and gpu extras and gpu.lock's pins as constraints: the pins must
    resolve together (vLLM pins torch exactly), and to the same distributions, versions and files as the lock.
    Metadata only: no wheel is downloaded (40-55 s, mostly index pages and range requests)."""
    lock = LOCKS["gpu"]
    try:
        install = pypi.resolve("gpu", pypi.locked_pins(lock), tmp_path, timeout=540)
    except pypi.ResolveError as error:
        message = f"pip cannot resolve gpu.lock's pins together with pyproject.toml:\n{error}"
        pytest.fail(message, pytrace=False)
    resolved = pypi.lock_lines("gpu", install)
    locked = [line for line in lock.read_text().splitlines() if not line.startswith("#")]
    missing, extra = sorted(set(locked) - set(resolved)), sorted(set(resolved) - set(locked))
    assert not missing and not extra, (
        "gpu.lock differs from what pip resolves (refresh it with scripts/lock.py gpu):\n"
        + "\n".join([*(f"- {line}" for line in missing), *(f"+ {line}" for line in extra)])
    )


@pytest.mark.network
@pytest.mark.timeout(300)
def test_resolving_fails_naming_the_conflict_when_vllm_pins_another_torch(pypi, tmp_path):
    """The check above can fail: vLLM 0.10.0 requires torch==2.7.1, which the project's torch pin excludes.
    (The pin as a constraint: pip then meets the conflict after vLLM's own metadata, in about 10 s.)"""
    with pytest.raises(pypi.ResolveError) as error:
        pypi.resolve("gpu", ["torch==2.13.0"], tmp_path, reqs=["vllm==0.10.0"], timeout=240)
    message = str(error.value)
    assert "ResolutionImpossible" in message, message
    assert "vllm 0.10.0 depends on torch==2.7.1" in message and "torch==2.13.0" in message, message
