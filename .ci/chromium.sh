#!/usr/bin/env bash
# Install Debian's `chromium`, once per machine, for the report's headless-browser test
# (tests/test_report.py drives /usr/bin/chromium; nothing downloads a browser at run time).
# A second run only checks `command -v chromium` (milliseconds).
#
#   .ci/chromium.sh            # as root, or with sudo available
#
# Environment: DOCROUTE_CHROMIUM (default: the `chromium` on PATH) names another binary to
# accept instead.
set -euo pipefail

log() { printf '[chromium.sh] %s\n' "$*"; }

if [[ -n "${DOCROUTE_CHROMIUM:-}" && -x "${DOCROUTE_CHROMIUM}" ]]; then
    log "using $DOCROUTE_CHROMIUM"
    exit 0
fi
if command -v chromium >/dev/null 2>&1; then
    log "found $(command -v chromium)"
    exit 0
fi

SUDO=()
if [[ "$(id -u)" != 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        log "chromium is missing and this is not root: run 'apt-get install -y chromium' as root"
        exit 1
    fi
    SUDO=(sudo)
fi
log "installing Debian's chromium and a font (apt-get update, then apt-get install)"
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
log "installed $(command -v chromium)"
