#!/usr/bin/env bash
# Installs what the browser and S3 tests need, and only what is missing (safe to run again).
#   browser: Debian's headless Chromium, its WebDriver and a CJK font (apt-get), and the web/
#            npm packages pinned by web/package-lock.json (npm ci); called by
#            tests/it/browser.rs.
#   s3:      a Python venv (python3 -m venv, with Debian's python3-venv if it is missing)
#            holding boto3 and the AWS CLI from PyPI at the versions pinned below, in
#            $DANGAN_S3_VENV (default ~/.cache/dangan/s3-venv); called by tests/it/s3.rs.
#   hsm:     Debian's SoftHSM2 (a PKCS#11 token in files) and OpenSC's pkcs11-tool (apt-get);
#            called by tests/it/hsm.rs.
#   metrics: `promtool` from Debian's prometheus package (apt-get), which checks the metrics
#            exposition; called by tests/it/metrics.rs.
# Usage: scripts/test-deps.sh [browser|s3|hsm|metrics|all] (default all). Run it by hand on
# a fresh machine to install ahead of time. Without apt-get (or rights to use it) it fails
# and says so: the tests that need it fail rather than pass without checking.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"

# The one way packages are installed: Debian's apt-get, as root or through sudo.
apt_install() {
    echo "test-deps: installing $* with apt-get" >&2
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "test-deps: apt-get is not available here; install $* by hand" >&2
        exit 1
    fi
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q >&2
    $sudo apt-get install -y -q --no-install-recommends "$@" >&2
}

if [ "$what" = metrics ] || [ "$what" = all ]; then
    command -v promtool >/dev/null 2>&1 || apt_install prometheus
    [ "$what" = metrics ] && exit 0
fi

if [ "$what" = s3 ] || [ "$what" = all ]; then
    venv="${DANGAN_S3_VENV:-$HOME/.cache/dangan/s3-venv}"
    pins="boto3==1.44.* awscli==1.46.*"
    if ! cmp -s <(echo "$pins") "$venv/.dangan-installed" 2>/dev/null; then
        if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
            apt_install python3-venv
        fi
        echo "test-deps: making the S3 clients' venv in $venv" >&2
        python3 -m venv "$venv" >&2
        # shellcheck disable=SC2086
        "$venv/bin/pip" install -q --disable-pip-version-check $pins >&2
        echo "$pins" >"$venv/.dangan-installed"
    fi
    [ "$what" = s3 ] && exit 0
fi

if [ "$what" = hsm ] || [ "$what" = all ]; then
    missing=()
    [ -e /usr/lib/softhsm/libsofthsm2.so ] && command -v softhsm2-util >/dev/null 2>&1 \
        || missing+=(softhsm2)
    command -v pkcs11-tool >/dev/null 2>&1 || missing+=(opensc)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
    [ -e /usr/lib/softhsm/libsofthsm2.so ] || { echo "test-deps: no /usr/lib/softhsm/libsofthsm2.so" >&2; exit 1; }
    [ "$what" = hsm ] && exit 0
fi

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
[ -e /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ] || missing+=(fonts-noto-cjk)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
fi

# npm ci only when node_modules was not installed from this very lockfile (a stamp copy of
# the lockfile is kept in node_modules after a successful install).
if ! cmp -s web/package-lock.json web/node_modules/.dangan-installed-lock 2>/dev/null; then
    echo "test-deps: npm ci in web/" >&2
    (cd web && npm ci --no-audit --no-fund >&2 && cp package-lock.json node_modules/.dangan-installed-lock)
fi
