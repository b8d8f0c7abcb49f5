#!/usr/bin/env bash
# Idempotent set-up for the viewer's real-browser tests (tests/browser): Debian's chromium and the small
# Node harness (playwright-core, driving /usr/bin/chromium; no browser download). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "bootstrap-browser: need root to install: ${need[*]}" >&2; exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    echo "bootstrap-browser: apt-get install ${need[*]}" >&2
    apt-get install -y -q "${need[@]}" >/dev/null
fi

# npm ci only when the lock file changed since the last install: the harness (playwright-core), and
# viewer-src (esbuild & co.) so that a test can check the committed assets rebuild byte for byte.
for dir in tests/browser/harness viewer-src; do
    stamp="$dir/node_modules/.installed"
    if [ ! -f "$stamp" ] || [ "$dir/package-lock.json" -nt "$stamp" ]; then
        echo "bootstrap-browser: npm ci in $dir" >&2
        (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error \
            --cache "${NPM_CACHE:-/var/cache/tracer/npm}" >/dev/null)
        touch "$stamp"
    fi
done
