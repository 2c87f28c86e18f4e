#!/usr/bin/env bash
# THE test command:   bash scripts/test.sh [pytest args]   (default: -q tests)
#
# Runs `python -m pytest` inside a fresh, private network namespace
# (`unshare --net`, needs root or CAP_SYS_ADMIN) that has only a loopback
# interface, with multicast (224.0.0.0/4) routed to it.  So nothing the tests
# do -- TCP, ZeroMQ, mDNS/zeroconf multicast -- can leave the machine, and
# concurrent runs cannot see each other's mDNS announcements.
# Inside, MESHADAPTER_TEST_NETNS=1 is exported.
#
# Without permission for `unshare --net` it runs pytest directly, with
# MESHADAPTER_TEST_NO_NETNS=1 exported and a loud warning.
#
# Exit code: pytest's.  "No tests collected" (pytest's 5) is a failure too.
# After pytest, any process still alive in the namespace is a leftover of
# the tests: it is listed loudly and killed (MESHADAPTER_TEST_STRICT_LEFTOVERS=1
# makes that a failure).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
export PATH="$PATH:/usr/sbin:/sbin"

if [ $# -eq 0 ]; then
    set -- -q tests
fi

banner() { printf '\n%s\n%s\n%s\n' "########################################################################" "$*" "########################################################################" >&2; }

run_pytest() {
    local rc=0
    "$PYTHON" -m pytest "$@" || rc=$?
    if [ "$rc" -eq 5 ]; then
        banner "test.sh: pytest collected NO tests (exit 5) -- treated as a FAILURE"
    fi
    return "$rc"
}

# Kill what the tests left behind in *this* network namespace (only ours:
# every process in it was started by this run).
sweep_leftovers() {
    local me=$$ found=0 p pid cmd
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        [ "$pid" = "$me" ] && continue
        [ "$p/ns/net" -ef /proc/$me/ns/net ] 2>/dev/null || continue
        cmd=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
        [ -n "$cmd" ] || continue   # kernel threads / already gone
        if [ $found -eq 0 ]; then
            banner "test.sh: LEFTOVER PROCESSES after pytest (a test or fixture did not clean up):"
        fi
        found=$((found + 1))
        echo "  pid $pid: $cmd" >&2
        kill -TERM "$pid" 2>/dev/null
    done
    if [ $found -gt 0 ]; then
        local i
        for i in $(seq 1 50); do   # at most 5 s, then SIGKILL
            local alive=0
            for p in /proc/[0-9]*; do
                pid=${p#/proc/}
                [ "$pid" = "$me" ] && continue
                [ "$p/ns/net" -ef /proc/$me/ns/net ] 2>/dev/null || continue
                [ -n "$(tr -d '\0' < "$p/cmdline" 2>/dev/null)" ] || continue
                alive=1
                [ "$i" -eq 50 ] && kill -KILL "$pid" 2>/dev/null
            done
            [ $alive -eq 0 ] && break
            sleep 0.1
        done
    fi
    return $found
}

if [ "${_MESHADAPTER_IN_NETNS:-}" = "1" ]; then
    # ---- inside the namespace -------------------------------------------------
    unset _MESHADAPTER_IN_NETNS
    ip link set lo up || { banner "test.sh: cannot bring lo up in the namespace"; exit 1; }
    ip link set lo multicast on 2>/dev/null || true
    ip route add 224.0.0.0/4 dev lo 2>/dev/null || ip route replace 224.0.0.0/4 dev lo
    export MESHADAPTER_TEST_NETNS=1
    echo "test.sh: private network namespace ready (lo only, multicast via lo)" >&2
    run_pytest "$@"
    rc=$?
    left=0
    sweep_leftovers || left=$?
    if [ "$left" -gt 0 ] && [ "${MESHADAPTER_TEST_STRICT_LEFTOVERS:-0}" = "1" ] && [ "$rc" -eq 0 ]; then
        banner "test.sh: $left leftover process(es) and MESHADAPTER_TEST_STRICT_LEFTOVERS=1 -> FAILURE"
        rc=1
    fi
    exit "$rc"
fi

if command -v unshare >/dev/null 2>&1 && command -v ip >/dev/null 2>&1 \
        && unshare --net true 2>/dev/null; then
    echo "test.sh: running pytest $* in a private network namespace" >&2
    _MESHADAPTER_IN_NETNS=1 unshare --net -- bash "${BASH_SOURCE[0]}" "$@"
    exit $?
fi

banner "WARNING: test.sh cannot create a network namespace (unshare --net not permitted,
or unshare/ip missing). Running pytest DIRECTLY on the host network:
mDNS multicast from the tests may reach the LAN and other runs may interfere.
MESHADAPTER_TEST_NO_NETNS=1 is exported so tests can adapt."
export MESHADAPTER_TEST_NO_NETNS=1
run_pytest "$@"
exit $?
