#!/usr/bin/env bash
# One entry point for a fresh Debian machine with Python 3.11: installs what is missing, then
#   ./dev.sh run  [cachetap run options]   runs cachetap (all-in-one, embedded defaults)
#   ./dev.sh test [pytest options]         runs the whole test suite
set -euo pipefail
cd "$(dirname "$0")"

RUN_DEBS=(libpcap0.8 aria2 iproute2)
TEST_DEBS=(tcpdump tcpreplay curl wget socat nginx-light ffmpeg systemd logrotate wrk chromium)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing_debs() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

install_debs() {
    local need
    need=$(missing_debs "$@")
    [ -z "$need" ] && return 0
    echo "dev.sh: installing Debian packages: $need" >&2
    as_root apt-get update -qq
    # shellcheck disable=SC2086
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >&2
}

ensure_venv() {
    local py=${PYTHON:-python3}
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "dev.sh: Python 3.11 or newer is needed ($py is $("$py" --version 2>&1))" >&2; exit 1; }
    if [ ! -x .venv/bin/python ]; then
        "$py" -m venv .venv 2>/dev/null || { install_debs python3-venv; rm -rf .venv; "$py" -m venv .venv; }
    fi
    # Reinstall only when the project's metadata changed since the last install.
    local stamp=.venv/.cachetap-installed want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        .venv/bin/python -m pip install -q --upgrade pip >&2
        .venv/bin/python -m pip install -q -e ".[test,bench]" >&2
        echo "$want" > "$stamp"
    fi
}

cmd=${1:-}
shift || true
case "$cmd" in
    run)
        install_debs "${RUN_DEBS[@]}"
        ensure_venv
        exec .venv/bin/cachetap run "$@"
        ;;
    test)
        install_debs "${RUN_DEBS[@]}" "${TEST_DEBS[@]}"
        ensure_venv
        exec .venv/bin/python -m pytest "$@"
        ;;
    *)
        echo "usage: ./dev.sh run [options] | ./dev.sh test [pytest options]" >&2
        exit 2
        ;;
esac
