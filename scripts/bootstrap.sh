#!/usr/bin/env bash
# Idempotent set-up for `make demo` / `make test` on a fresh Debian/Ubuntu machine (as root):
# system packages (BCC, kernel headers, clients), then .venv/ built from Debian's python3 so that
# BCC's Python module (python3-bpfcc) is importable, with this package installed editable.
set -euo pipefail
cd "$(dirname "$0")/.."

SYS_PY=/usr/bin/python3
# nginx: a real h2 server for the integration tests (started by the tests themselves, on 127.0.0.1 with
# their own config; the package's service is never started, see below).
# binutils-aarch64-linux-gnu: the AArch64 locator's synthetic tests assemble and link arm64 programs.
# gcc, libc6-dev, libssl-dev: the C test clients (tests/integration/clients/*.c).
# tmux: a real terminal for the live view's tests (tests/integration/test_live.py).
APT_PKGS=(python3-bpfcc python3-venv python3-pip curl ca-certificates openssl nodejs nginx
          binutils-aarch64-linux-gnu gcc libc6-dev libssl-dev tmux)
EXTRA_PKGS=("$@")

need_apt=()
for p in "${APT_PKGS[@]}" "${EXTRA_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$p")
done
# nodejs may come from elsewhere (nodesource): a working `node` is what counts.
if command -v node >/dev/null 2>&1; then
    tmp=(); for p in "${need_apt[@]}"; do [ "$p" = nodejs ] || tmp+=("$p"); done; need_apt=("${tmp[@]}")
fi
# Kernel headers: the exact ones when the distribution has them, else the generic meta package
# (tracer builds a merged tree from it at run time; see `tracer doctor`).
kver=$(uname -r)
if [ ! -e "/lib/modules/$kver/build" ] && ! ls -d /usr/src/linux-headers-*-common >/dev/null 2>&1; then
    need_headers=1
else
    need_headers=0
fi

apt_updated=0
apt_update() { [ $apt_updated = 1 ] || { apt-get update -q >/dev/null; apt_updated=1; }; }
if [ ${#need_apt[@]} -gt 0 ] || [ $need_headers = 1 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "bootstrap: need root to install: ${need_apt[*]} kernel headers" >&2; exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt_update
    if [ ${#need_apt[@]} -gt 0 ]; then
        echo "bootstrap: apt-get install ${need_apt[*]}" >&2
        # Packaged daemons (nginx) must not start listening on this machine: deny service starts for
        # the install unless a policy is already in place.
        policy=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            policy=/usr/sbin/policy-rc.d
            printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"
        fi
        status=0
        apt-get install -y -q "${need_apt[@]}" >/dev/null || status=$?
        [ -z "$policy" ] || rm -f "$policy"
        [ $status = 0 ] || exit $status
    fi
    if [ $need_headers = 1 ]; then
        if apt-cache show "linux-headers-$kver" >/dev/null 2>&1; then
            hdr="linux-headers-$kver"
        else
            hdr="linux-headers-$(dpkg --print-architecture)"
        fi
        echo "bootstrap: apt-get install $hdr" >&2
        apt-get install -y -q "$hdr" >/dev/null
    fi
fi

# The virtualenv: rebuilt only when pyproject.toml changes.
stamp=.venv/.installed
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
    rm -rf .venv
    "$SYS_PY" -m venv --system-site-packages .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "bootstrap: pip install -e .[test]" >&2
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    touch "$stamp"
fi
