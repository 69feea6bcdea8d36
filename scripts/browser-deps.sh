#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver for the browser test (tests/test_browser.py).
# Installed once; a machine without them and without apt-get says so, and that test fails with this reason.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi
if ! command -v apt-get >/dev/null; then
  echo "browser-deps: no apt-get here; install chromium and chromium-driver another way" >&2
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "browser-deps: installing chromium and chromium-driver (Debian packages)" >&2
# A failed install leaves the rest of the suite to run; the browser test then fails saying what is missing.
{ $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver >/dev/null; } || echo "browser-deps: apt-get could not install them" >&2
