#!/usr/bin/env bash
# Create .venv and install exactly the versions of a lock file into it, then the project itself (editable).
#   setup.sh cpu   requirements/cpu.lock: the project with its dev tools and the CPU build of torch
#   setup.sh gpu   requirements/gpu.lock: the same plus the gpu extra (CUDA torch, vLLM), for a GPU machine
#   setup.sh [dev] the lock the venv has now (cpu for a new venv): both locks hold the dev extra
# Re-running is cheap: nothing is reinstalled while the lock, pyproject.toml and setup.py are unchanged.
# The locks are written by scripts/lock.py.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
python=${PYTHON:-python3}
case "${1:-}" in
  cpu | gpu) target=$1 ;;
  "" | dev) target=$(cat "$venv/.lock" 2>/dev/null || echo cpu) ;;
  *) echo "setup: unknown argument '$1' (cpu, gpu or dev)" >&2; exit 2 ;;
esac
lock="$root/requirements/$target.lock"
# The CPU build of torch lies on disk on these machines; PyPI's torch is a multi-GB CUDA build.
if [ -d /opt/wheels ] && [ -z "${PIP_FIND_LINKS:-}" ]; then export PIP_FIND_LINKS=/opt/wheels; fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# Every locked wheel is built for CPython 3.11: another Python fails the hash check with a long message.
"$venv/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
  echo "setup: the locks are for Python 3.11 but $venv has $("$venv/bin/python" -V); remove it and set PYTHON" >&2
  exit 1
}

pip() {
  # This machine's pip configuration names local index folders that may not exist; drop those warnings.
  "$venv/bin/python" -m pip --quiet --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "^WARNING: Location 'file:" || true; }
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "setup: pip $1 failed" >&2; exit 1; }
}

want=$(cat "$lock" "$root/pyproject.toml" "$root/setup.py" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$venv/.lock" 2>/dev/null)" != "$target" ] || [ "$(cat "$venv/.installed" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing requirements/$target.lock and persona-platform into $venv" >&2
  rm -f "$venv/.installed"
  pip install --require-hashes --no-deps -r "$lock"
  # setuptools (the build backend) comes from the lock too, so nothing unhashed is downloaded.
  pip install --no-deps --no-build-isolation -e "$root"
  # Exactly the lock: what an earlier lock or a manual install left behind goes.
  extra=$("$venv/bin/python" - "$lock" <<'EOF'
import re
import sys
from importlib.metadata import distributions

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

with open(sys.argv[1]) as lock:
    keep = {norm(line.split("==")[0]) for line in lock if line.strip() and not line.startswith("#")}
keep |= {"pip", "persona-platform"}
print(" ".join(sorted({norm(d.metadata["Name"]) for d in distributions()} - keep)))
EOF
  )
  if [ -n "$extra" ]; then
    echo "setup: removing what $target.lock does not hold: $extra" >&2
    # shellcheck disable=SC2086  # one argument per package name
    pip uninstall --yes $extra
  fi
  echo "$target" > "$venv/.lock"
  echo "$want" > "$venv/.installed"
fi
