#!/usr/bin/env bash
# Idempotent set-up of a machine for meshadapter development and CI.
#
#   bash scripts/setup.sh
#
# 1. system packages: redis-server, haproxy, nginx-light, iproute2 (and
#    nodejs/npm if `node` is missing) -- apt only when something is missing;
#    as non-root it prints what to install instead and goes on.  Services
#    are NOT started by the install (a temporary policy-rc.d forbids it):
#    tests start their own instances on free loopback ports.
# 2. python: pip install -e '.[test]'          (uses $PYTHON, default python3)
# 3. node:   npm ci (npm install without a lock file) -> ./node_modules
#
# Nothing else is touched.  Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
say() { printf '\n=== setup: %s\n' "$*"; }
warn() { printf '\n!!! setup WARNING: %s\n' "$*" >&2; }

have() {  # a binary on PATH or in an sbin dir (often missing from a user's PATH)
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

# ---------------------------------------------------------------- apt
say "system packages"
missing=()
have redis-server || missing+=(redis-server)
have haproxy      || missing+=(haproxy)
have nginx        || missing+=(nginx-light)
have ip           || missing+=(iproute2)
have unshare      || missing+=(util-linux)
if ! have node || ! have npm; then missing+=(nodejs npm); fi
# MESHADAPTER_SETUP_FORCE_APT=1: run the apt step anyway (to test this script)
if [ "${MESHADAPTER_SETUP_FORCE_APT:-0}" = 1 ] && [ ${#missing[@]} -eq 0 ]; then
    missing=(redis-server haproxy nginx-light iproute2)
fi

if [ ${#missing[@]} -eq 0 ]; then
    echo "all present (redis-server haproxy nginx ip unshare node npm); skipping apt"
elif [ "$(id -u)" -ne 0 ]; then
    warn "not root: cannot install ${missing[*]}.
    Run:  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}
    Tests that need them will fail until then."
else
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' maintainer scripts from starting system services
    # (a system redis on :6379 / nginx on :80 is a side effect we do not want).
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        created_policy=1
    fi
    cleanup_policy() { if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi; }
    trap cleanup_policy EXIT
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    cleanup_policy
    created_policy=0
    trap - EXIT
fi

# ---------------------------------------------------------------- python
say "python: $PYTHON -m pip install -e '.[test]'"
"$PYTHON" --version
"$PYTHON" -m pip install --disable-pip-version-check --root-user-action=ignore --no-input -q -e '.[test]'
# pyenv only sees the new `meshadapter` console script after a rehash.
if have pyenv; then pyenv rehash || true; fi

# ---------------------------------------------------------------- node
say "node: socket.io-client for tests/js"
if have npm; then
    node --version
    if [ -f package-lock.json ]; then
        npm ci --no-audit --no-fund --loglevel=error
    else
        npm install --no-audit --no-fund --loglevel=error
    fi
    node -e "console.log('socket.io-client', require('socket.io-client/package.json').version)"
else
    warn "npm is missing: the JS client tests (tests/js) cannot run"
fi

say "done"
