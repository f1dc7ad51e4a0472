#!/usr/bin/env bash
# Debian's Chromium and its driver, for the console's browser tests (tests/gateway/api/test_console_browser.py,
# which Playwright drives by executable path: no browser is downloaded by Playwright itself).
# Idempotent: does nothing when /usr/bin/chromium is there already.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install-chromium: no apt-get here; install Chromium at /usr/bin/chromium yourself" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q chromium chromium-driver
/usr/bin/chromium --version
