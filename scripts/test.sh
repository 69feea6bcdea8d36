#!/usr/bin/env bash
# Command 2: set up (with the dev extra), lint, then run the test suite.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh" dev
"$root/scripts/system-deps.sh"
cd "$root"
# Lint and format first: a style error fails in seconds, before the suite's minutes.
"$root/.venv/bin/ruff" check .
"$root/.venv/bin/ruff" format --check .
# Two workers (tests/conftest.py schedules them); pass -n 0 to run in one process.
exec "$root/.venv/bin/python" -m pytest -n 2 "$@"
