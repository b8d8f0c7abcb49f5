#!/usr/bin/env bash
# Idempotent set-up of Arize Phoenix (the OTLP backend the OpenTelemetry export tests send spans to) in a
# virtualenv of its own, outside the repository: its many dependencies must not touch tracer's pins.
#
#   scripts/bootstrap-phoenix.sh            prints the venv's python on success
#   PHOENIX_VENV=/path scripts/bootstrap-phoenix.sh
#
# Default location: /var/cache/tracer/phoenix-venv-<version> (root-owned, shared with other checkouts;
# pip's own cache makes a rebuild cheap). The venv is used only once complete (stamp file), is built
# under a lock (concurrent test runs), and is refused if anyone but root could have written to it.
set -euo pipefail

PHOENIX_VERSION=20.26.1
SYS_PY=/usr/bin/python3
CACHE_ROOT=/var/cache/tracer
VENV=${PHOENIX_VENV:-$CACHE_ROOT/phoenix-venv-$PHOENIX_VERSION}
STAMP="$VENV/.tracer-installed-$PHOENIX_VERSION"

owned_by_root_only() {   # path and its parents: root-owned, not group/world-writable
    local p=$1
    while [ "$p" != "/" ] && [ -n "$p" ]; do
        if [ -e "$p" ]; then
            [ "$(stat -c %u "$p")" = 0 ] || return 1
            local mode; mode=$(stat -c %a "$p")
            # group/other write bits (sticky /tmp-like dirs are not acceptable either)
            (( (8#$mode & 8#022) == 0 )) || return 1
        fi
        p=$(dirname "$p")
    done
}

if [ -f "$STAMP" ] && [ -x "$VENV/bin/phoenix" ]; then
    if [ "$(id -u)" = 0 ] && ! owned_by_root_only "$VENV"; then
        echo "bootstrap-phoenix: $VENV is writable by someone other than root; refusing to use it" >&2
        exit 1
    fi
    echo "$VENV/bin/python"
    exit 0
fi

if [ "$(id -u)" = 0 ]; then
    install -d -m 0755 -o root -g root "$CACHE_ROOT"
    dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q "install ok installed" || {
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null; apt-get install -y -q python3-venv >/dev/null; }
fi
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
if [ ! -f "$STAMP" ]; then
    echo "bootstrap-phoenix: installing arize-phoenix==$PHOENIX_VERSION into $VENV (first time: a few minutes)" >&2
    rm -rf "$VENV"
    "$SYS_PY" -m venv "$VENV"
    log=$(mktemp)
    if ! "$VENV/bin/pip" install -q --disable-pip-version-check "arize-phoenix==$PHOENIX_VERSION" >"$log" 2>&1; then
        tail -30 "$log" >&2; rm -f "$log"; exit 1
    fi
    rm -f "$log"
    touch "$STAMP"
fi
echo "$VENV/bin/python"
