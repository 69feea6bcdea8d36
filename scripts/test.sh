#!/usr/bin/env bash
# Command 2: set up (with the dev extra), then run the test suite.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh" dev
"$root/scripts/browser-deps.sh"
"$root/scripts/postgres-deps.sh"
cd "$root"
exec "$root/.venv/bin/python" -m pytest "$@"
