#!/usr/bin/env bash
# Debian's PostgreSQL server for the DuckLake tests and benchmark (tests/test_ducklake.py,
# `persona bench warehouse`): each starts its own throwaway server from these binaries.
# Installed once; a machine without them and without apt-get says so, and those tests fail with this reason.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; then exit 0; fi
if ! command -v apt-get >/dev/null; then
  echo "postgres-deps: no apt-get here; install the PostgreSQL server (initdb, pg_ctl) another way" >&2
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "postgres-deps: installing postgresql (Debian package)" >&2
# The package's own cluster is not used; its service is not started in containers without an init system.
{ $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    postgresql >/dev/null; } || echo "postgres-deps: apt-get could not install postgresql" >&2
