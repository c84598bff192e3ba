#!/usr/bin/env bash
# Installs what the browser tests need, and only what is missing (safe to run again):
# Debian's headless Chromium, its WebDriver and a CJK font (apt-get), and the web/ npm
# packages pinned by web/package-lock.json (npm ci). Called by tests/it/browser.rs before
# the tests that need it; run it by hand on a fresh machine to install ahead of time.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
[ -e /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ] || missing+=(fonts-noto-cjk)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "test-deps: installing ${missing[*]} with apt-get" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q >&2
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# npm ci only when node_modules was not installed from this very lockfile (a stamp copy of
# the lockfile is kept in node_modules after a successful install).
if ! cmp -s web/package-lock.json web/node_modules/.dangan-installed-lock 2>/dev/null; then
    echo "test-deps: npm ci in web/" >&2
    (cd web && npm ci --no-audit --no-fund >&2 && cp package-lock.json node_modules/.dangan-installed-lock)
fi
