#!/usr/bin/env bash
# Command 1: set up, then materialize every asset for every partition of the sample data.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
# Two worker processes for the model steps (each loads the model once; one torch thread per core): on 2 CPU
# cores that finishes in about two thirds of one process's time. A --parallel given here overrides it.
exec "$root/.venv/bin/persona" run --parallel 2 "$@"
