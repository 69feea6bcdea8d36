"""Write the lock files that scripts/setup.sh installs: every distribution, its version and its sha256.

    .venv/bin/python scripts/lock.py            # both locks; locked versions are kept where they still fit
    .venv/bin/python scripts/lock.py --upgrade  # both from scratch: the newest versions pyproject.toml allows
    .venv/bin/python scripts/lock.py cpu        # one lock

pip resolves each lock without installing anything (`pip install --dry-run --report`) for CPython 3.11 on
x86_64 Linux with glibc 2.35 or newer (Debian 12, Ubuntu 22.04), whatever machine runs this; the report
names the file each distribution comes from and its sha256. The resolving pip is a pinned release
(RESOLVER_PIP, fetched and hash-checked on each run, run from its wheel), not the venv's: pip before 25.3
downloads every wheel even in a dry run (4.3 GB for gpu.lock), and where the index serves no PEP 658
metadata files even a new pip downloads them unless it reads each wheel's metadata through HTTP range
requests (`--use-feature=fast-deps`).
- cpu.lock: the project with the dev extra and the CPU build of torch, which must lie in a --find-links
  folder (PIP_FIND_LINKS; /opt/wheels on these machines): PyPI's Linux torch is the CUDA build.
- gpu.lock: the project with the dev and gpu extras and PyPI's (CUDA) torch. pip's configuration files and
  PIP_FIND_LINKS are ignored for it, so no local CPU build can stand in for the CUDA one.
Needs Python 3.11 (any: the venv's is at hand) and network access to PyPI; takes under a minute per lock.
tests/test_lock.py resolves gpu.lock the same way; it fails while the pins do not resolve or the result
differs from the lock.
"""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "requirements"
# The extras each lock holds (`setup.sh cpu|gpu` installs one); both hold dev, so either runs the tests.
TARGETS = {"cpu": ("dev",), "gpu": ("dev", "gpu")}
PYTHON_VERSION = "3.11"
# The platform tags pip accepts for the target machines: x86_64 Linux, glibc 2.35 down to the oldest
# manylinux tags (pip does not derive the older tags from a newer one when --platform is given).
PLATFORMS = [
    *(f"manylinux_2_{minor}_x86_64" for minor in range(35, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]
PROJECT = "persona-platform"
# The pip that resolves: 25.3 and newer read metadata only in a dry run (pypa/pip#13482), and with fast-deps
# they read it from the wheels by HTTP range requests where the index serves no PEP 658 .metadata files.
RESOLVER_PIP = (
    "https://files.pythonhosted.org/packages/07/25/ee8c38ae72d66b844ce8eb9711ba905dba21ca1a8a0c960057c41cd23337/"
    "pip-26.3-py3-none-any.whl",
    "f3b60b20ffaadd4415ed7957212a38ac63fa4c5fa375bd0f4a797777940fad13",
)


class ResolveError(Exception):
    """pip found no set of versions that meets the requirements (its explanation is the message)."""


def resolver_pip(folder: Path) -> list[str]:
    """The command that runs RESOLVER_PIP, its wheel fetched into folder and checked against its sha256."""
    url, sha256 = RESOLVER_PIP
    wheel = folder / url.rsplit("/", 1)[1]
    if not wheel.exists():
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise RuntimeError(f"{url}: sha256 is not {sha256}")
        wheel.write_bytes(data)
    return [sys.executable, str(wheel / "pip")]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(extras: tuple[str, ...]) -> list[str]:
    """The project's direct requirements with these extras, as written in pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    return [*project["dependencies"], *(req for extra in extras for req in optional[extra])]


def locked_pins(lock: Path) -> list[str]:
    """`name==version` of every line of an existing lock, to keep those versions (pip constraints)."""
    if not lock.exists():
        return []
    return [line.split()[0] for line in lock.read_text().splitlines() if line and not line.startswith("#")]


def resolve(
    target: str,
    constraints: list[str],
    tmp: Path,
    reqs: list[str] | None = None,
    timeout: float | None = None,
) -> list[dict]:
    """pip's installation report for one lock: one entry per distribution it would install.

    reqs replaces the lock's requirements (pyproject.toml's, with the target's extras); a resolution that
    fails raises ResolveError with pip's explanation."""
    reqs = requirements(TARGETS[target]) if reqs is None else list(reqs)
    env = dict(os.environ)
    if target == "cpu":
        # Name the CPU build outright: the CUDA build on PyPI satisfies `torch==X` just as well.
        (torch,) = [r for r in reqs if re.match(r"torch\s*==", r)]
        reqs.append(torch.replace(" ", "") + "+cpu")
        # Where setup.sh finds it too.
        if not env.get("PIP_FIND_LINKS") and Path("/opt/wheels").is_dir():
            env["PIP_FIND_LINKS"] = "/opt/wheels"
    else:
        # PyPI only: the CPU torch in a find-links folder would satisfy `torch==X` too.
        env["PIP_CONFIG_FILE"] = os.devnull
        for name in ("PIP_FIND_LINKS", "PIP_CONSTRAINT", "PIP_EXTRA_INDEX_URL"):
            env.pop(name, None)
    (tmp / "requirements.txt").write_text("\n".join(reqs) + "\n")
    (tmp / "constraints.txt").write_text("".join(pin + "\n" for pin in constraints))
    report = tmp / "report.json"
    argv = [
        *resolver_pip(tmp),
        "install",
        # Not --quiet: pip explains a conflict ("The conflict is caused by: ...") at the info level.
        "--disable-pip-version-check",
        # Nothing worth caching: metadata read by range requests is not cached, and no wheel is downloaded.
        "--no-cache-dir",
        "--use-feature=fast-deps",
        "--dry-run",
        "--ignore-installed",
        # --platform needs a --target; nothing is written there in a dry run.
        "--target",
        str(tmp / "target"),
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        PYTHON_VERSION,
        *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
        "--report",
        str(report),
        "-r",
        str(tmp / "requirements.txt"),
        "-c",
        str(tmp / "constraints.txt"),
    ]
    result = subprocess.run(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )
    if result.returncode != 0:
        # pip's explanation starts at its first error; before it, a line per distribution collected.
        lines = result.stdout.splitlines()
        errors = [i for i, line in enumerate(lines) if line.startswith("ERROR:")]
        first = errors[0] if errors else max(0, len(lines) - 40)
        raise ResolveError("\n".join(lines[first:]).strip())
    return json.loads(report.read_text())["install"]


def lock_lines(target: str, install: list[dict]) -> list[str]:
    lines = {}
    for item in install:
        name, version = normalize(item["metadata"]["name"]), item["metadata"]["version"]
        url = item["download_info"]["url"]
        digest = item["download_info"].get("archive_info", {}).get("hashes", {}).get("sha256")
        if not digest:
            sys.exit(f"lock: {target}.lock: pip reported no sha256 for {name} ({url})")
        if name == "torch" and (target == "cpu") != version.endswith("+cpu"):
            sys.exit(f"lock: {target}.lock: torch {version} from {url} is the wrong build")
        if name == "torch" and target == "cpu" and not url.startswith("file:"):
            sys.exit(f"lock: cpu.lock: torch {version} comes from {url}, not from a find-links folder")
        lines[name] = f"{name}=={version} --hash=sha256:{digest}"
    lines.pop(PROJECT, None)  # the project itself is installed from the checkout, not from the lock
    return [lines[name] for name in sorted(lines)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help="cpu, gpu (default: both)")
    parser.add_argument("--upgrade", action="store_true", help="ignore the versions locked now")
    parser.add_argument(
        "-c", "--constraint", type=Path, help="a pip constraints file to honour as well (e.g. a pip freeze)"
    )
    args = parser.parse_args()
    if f"{sys.version_info.major}.{sys.version_info.minor}" != PYTHON_VERSION:
        sys.exit(f"lock: run with Python {PYTHON_VERSION} (its pip writes the report), not {sys.version}")
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        sys.exit(f"lock: no such lock: {', '.join(sorted(unknown))} (choose from {', '.join(TARGETS)})")
    LOCKS.mkdir(exist_ok=True)
    for target in args.targets or TARGETS:
        lock = LOCKS / f"{target}.lock"
        constraints = [] if args.upgrade else locked_pins(lock)
        if args.constraint:
            constraints += [
                line.strip()
                for line in args.constraint.read_text().splitlines()
                if line.strip() and not line.startswith(("#", "-e"))
            ]
        with tempfile.TemporaryDirectory() as tmp:
            try:
                install = resolve(target, constraints, Path(tmp))
            except ResolveError as error:
                hint = " (a locked version may conflict with a changed pin: add --upgrade)"
                hint = hint if constraints else ""
                sys.exit(f"lock: pip could not resolve {target}.lock{hint}:\n{error}")
        extras = ",".join(TARGETS[target])
        header = [
            f"# persona-platform[{extras}] for CPython {PYTHON_VERSION} on x86_64 Linux (glibc >= 2.35).",
            "# Written by scripts/lock.py from pyproject.toml; refresh with `python3 scripts/lock.py`.",
            "# Installed by scripts/setup.sh: pip install --require-hashes --no-deps -r <this file>",
        ]
        lines = lock_lines(target, install)
        lock.write_text("\n".join(header + lines) + "\n")
        print(f"lock: wrote {lock.relative_to(ROOT)} ({len(lines)} distributions)")


if __name__ == "__main__":
    main()
