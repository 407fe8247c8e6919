#!/usr/bin/env bash
# sockgate against HAProxy and nginx in one run (proxybench, see bench/README.md).
#
#   bench/run.sh             full run, about 15 minutes; writes bench/results/YYYY-MM-DD/
#   bench/run.sh --smoke     about a second per scenario; writes to a temporary folder
#   bench/run.sh --curves    costs against size, sockgate and HAProxy; about 10 minutes
#   bench/run.sh --protected --scenarios 2,6   adds rows with PROXY headers, balancing and limits
#   bench/run.sh --help      every option
#
# Installs HAProxy and nginx (with its stream module) from Debian packages when they are
# missing, builds the gateway (`cargo build --release` in the repo root, skipped when
# --sockgate FILE is given) and the bench crate (a debug build for --smoke), then runs
# proxybench with the arguments given here. In smoke mode a proxy that is missing and
# cannot be installed is left out and the table says so; a full run stops instead.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

smoke=0
sockgate_given=0
help=0
for arg in "$@"; do
    case "$arg" in
        --smoke) smoke=1 ;;
        --sockgate | --sockgate=*) sockgate_given=1 ;;
        -h | --help) help=1 ;;
    esac
done

# Debian installs both proxies in /usr/sbin, which a user's PATH may lack.
find_program() {
    command -v "$1" 2>/dev/null && return 0
    for dir in /usr/sbin /sbin /usr/local/sbin; do
        if [ -x "$dir/$1" ]; then
            echo "$dir/$1"
            return 0
        fi
    done
    return 1
}

# Debian's nginx has the stream module (TCP and TLS proxying) as a separate package.
nginx_lacks_stream() {
    local nginx
    nginx="$(find_program nginx)" || return 1
    "$nginx" -V 2>&1 | grep -q -- '--with-stream=dynamic' &&
        ! [ -e /usr/lib/nginx/modules/ngx_stream_module.so ]
}

install_proxies() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "run.sh: haproxy or nginx is missing, and installing needs root and apt-get" >&2
        return 1
    fi
    echo "run.sh: installing haproxy, nginx and libnginx-mod-stream from Debian packages" >&2
    # The packages would start their own services; only proxybench's instances may run.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        made_policy=1
    fi
    local status=0
    {
        apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx libnginx-mod-stream
    } >&2 || status=$?
    if [ "$made_policy" = 1 ]; then
        rm -f "$policy"
    fi
    return "$status"
}

if [ "$help" = 0 ]; then
    if ! find_program haproxy >/dev/null || ! find_program nginx >/dev/null || nginx_lacks_stream; then
        if ! install_proxies; then
            if [ "$smoke" = 1 ]; then
                echo "run.sh: going on without them (smoke mode)" >&2
            else
                echo "run.sh: cannot install haproxy and nginx; a full run needs both" >&2
                exit 1
            fi
        fi
    fi
fi

if [ "$sockgate_given" = 0 ] && [ "$help" = 0 ]; then
    (cd "$root" && cargo build --release --locked)
fi
# A smoke run checks that the suite works, not how fast: the bench crate's debug build
# compiles in about a third of the time of its release build.
if [ "$smoke" = 1 ]; then
    profile=debug
    cargo build --locked --manifest-path "$root/bench/Cargo.toml"
else
    profile=release
    cargo build --release --locked --manifest-path "$root/bench/Cargo.toml"
fi

# Up to the hard limit: scenario 5 holds 5,000 connections, two sockets each in the proxy.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

export PROXYBENCH_COMMAND="bench/run.sh${*:+ $*}"
exec "$root/bench/target/$profile/proxybench" "$@"
