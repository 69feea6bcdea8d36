#!/usr/bin/env bash
# The Debian packages the test suite needs beyond Python, installed once with one apt-get run:
# chromium and chromium-driver (tests/persona_assets/test_browser.py) and the PostgreSQL server (DuckLake tests and
# `persona bench warehouse`, which start their own throwaway servers from its binaries).
# A machine without them and without apt-get says so; the tests that need them then fail saying what is missing.
set -euo pipefail
missing=()
{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || missing+=(chromium chromium-driver)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "system-deps: no apt-get here; install ${missing[*]} another way" >&2
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "system-deps: installing ${missing[*]} (Debian packages)" >&2
# A failed install leaves the rest of the suite to run. PostgreSQL's own cluster is not used.
{ $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null; } || echo "system-deps: apt-get could not install ${missing[*]}" >&2
