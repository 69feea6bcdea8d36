#!/usr/bin/env bash
# Create .venv and install the project (with the given extras) into it.
# Re-running is cheap: nothing is reinstalled while pyproject.toml is unchanged.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
extras=${1:-}
venv="$root/.venv"
python=${PYTHON:-python3}
# The CPU build of torch lies on disk on these machines; PyPI's torch is a multi-GB CUDA build.
if [ -d /opt/wheels ] && [ -z "${PIP_FIND_LINKS:-}" ]; then export PIP_FIND_LINKS=/opt/wheels; fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.installed${extras:+-$extras}"
want=$(cat "$root/pyproject.toml" "$root/setup.py" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing persona-platform${extras:+[$extras]} into $venv" >&2
  # This machine's pip configuration names local index folders that may not exist; drop those warnings.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root${extras:+[$extras]}" 2>&1 \
    | { grep -v "^WARNING: Location 'file:" || true; }
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "setup: pip install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
