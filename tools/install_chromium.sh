#!/usr/bin/env bash
# The headless browser tests/test_dashboards.py opens the HTML report in: Debian's chromium and
# chromium-driver (Selenium drives it; nothing is downloaded by Selenium itself). Installed only
# when missing, with apt-get, which needs root (or password-less sudo). Where that cannot be
# done this says so and succeeds: the browser test then skips, naming the reason.
set -uo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "chromium: not installed and no apt-get here; the HTML report's browser test will skip" >&2
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "chromium: not installed and installing needs root (apt-get install chromium chromium-driver);" \
        "the HTML report's browser test will skip" >&2
    exit 0
fi
echo "installing chromium and chromium-driver (apt-get), once per machine"
export DEBIAN_FRONTEND=noninteractive
# the package lists of a fresh machine may be empty or stale: update once if the install fails
"${SUDO[@]}" apt-get install -y -qq chromium chromium-driver >/dev/null \
    || { "${SUDO[@]}" apt-get update -qq \
         && "${SUDO[@]}" apt-get install -y -qq chromium chromium-driver >/dev/null; } \
    || echo "chromium: apt-get could not install it; the HTML report's browser test will skip" >&2
exit 0
