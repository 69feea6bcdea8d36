#!/usr/bin/env bash
# Command 1: set up, then materialize every asset for every partition of the sample data.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
exec "$root/.venv/bin/persona" run "$@"
