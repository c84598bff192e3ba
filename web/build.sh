#!/usr/bin/env bash
# Builds the browser bundle into web/dist (or into $1): the portal and verify pages and the
# console's QR scanner (console/scan.js; the rest of the console is plain files served as
# they are), their scripts bundled by esbuild from web/lib, web/ui and the pinned npm
# packages (no CDN, nothing fetched at run time), and the stylesheet. The output is
# committed so `cargo build` never needs npm; `it::browser::the_committed_bundle_is_a_fresh_build`
# rebuilds and compares. Needs `npm ci` first (scripts/test-deps.sh runs it).
set -euo pipefail
cd "$(dirname "$0")"
out="${1:-dist}"
rm -rf "$out"
mkdir -p "$out/portal" "$out/verify" "$out/assets"
./node_modules/.bin/esbuild portal/portal.js verify/verify.js console/scan.js \
    --bundle --format=esm --target=es2022 --minify --legal-comments=none \
    --charset=utf8 --entry-names=[name] --log-level=warning --outdir="$out/assets"
cp portal/index.html "$out/portal/index.html"
cp verify/index.html "$out/verify/index.html"
cp ui/style.css "$out/assets/style.css"
