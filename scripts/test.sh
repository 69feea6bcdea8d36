#!/usr/bin/env bash
# Command 2: set up (with the dev extra), then run the test suite.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh" dev
"$root/scripts/system-deps.sh"
cd "$root"
exec "$root/.venv/bin/python" -m pytest "$@"
