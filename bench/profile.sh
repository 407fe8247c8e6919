#!/usr/bin/env bash
# Profiles one proxy with `perf` while proxybench drives one scenario through it alone.
#
#   bench/profile.sh TARGET SCENARIO [AFTER] [OUT]
#
#   TARGET    sockgate, haproxy or nginx
#   SCENARIO  a proxybench scenario number (1-7, see bench/README.md)
#   AFTER     record during the row that follows the row whose name contains this text
#             (proxybench prints a row's line when it ends); without it, the scenario's
#             first row. Example: `bench/profile.sh sockgate 3 "TLS bulk download, 8 conns"`
#             records during the handshake row, which follows it.
#   OUT       folder for perf.data and the summaries (default: a new temporary folder)
#
# Each row runs 12 s (1 s of warm-up); perf samples the proxy's processes for 6 s of it
# (`perf record -e cpu-clock -g`, 4,999 Hz), then prints where the time went by binary
# (kernel, proxy, libc, crypto library) and the top 40 functions. Open the full profile with
# `perf report -i OUT/perf.data`. Needs perf (Debian: linux-perf) and what bench/run.sh needs;
# it uses the release builds bench/run.sh makes (SOCKGATE=FILE picks another gateway binary).
# CALLGRAPH=dwarf records call chains from the stack (1,999 Hz, 3 s) instead of frame
# pointers, which the release build does not keep: slower to record, but `perf report -G` and
# `perf script` then show who called a function (who calls memcpy or malloc, for example).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 2 ]; then
    sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
fi
target=$1
scenario=$2
after=${3:-}
out=${4:-$(mktemp -d /tmp/sockgate-profile.XXXXXX)}
sockgate=$(realpath "${SOCKGATE:-$root/target/release/sockgate}")
proxybench=$root/bench/target/release/proxybench
case "$target" in
    sockgate | haproxy | nginx) ;;
    *) echo "profile.sh: TARGET is sockgate, haproxy or nginx, not '$target'" >&2; exit 2 ;;
esac
for program in perf "$sockgate" "$proxybench"; do
    if ! command -v "$program" >/dev/null; then
        echo "profile.sh: $program not found (bench/run.sh builds the binaries; perf is in linux-perf)" >&2
        exit 1
    fi
done

mkdir -p "$out"
log=$out/proxybench.log
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
"$proxybench" --scenarios "$scenario" --targets "$target" --sockgate "$sockgate" \
    -r 1 -d 12 --out "$out/proxybench" >"$log" 2>&1 &
bench=$!
trap 'kill $bench 2>/dev/null || true' EXIT

# proxybench prints its plan first and then one line per row as the row ends.
marker=${after:-proxybench: }
for _ in $(seq 600); do
    grep -qF -- "$marker" "$log" 2>/dev/null && break
    kill -0 $bench 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.2
done
grep -qF -- "$marker" "$log" || { echo "profile.sh: no row matched '$after'" >&2; exit 1; }
# Past the proxy's start and the row's warm-up.
sleep 2
case "$target" in
    sockgate) pids=$(pgrep -d, -f "^$sockgate --config") ;;
    haproxy) pids=$(pgrep -d, -x haproxy) ;;
    nginx) pids=$(pgrep -d, -x nginx) ;;
esac
[ -n "$pids" ] || { echo "profile.sh: no $target process found" >&2; exit 1; }
case "${CALLGRAPH:-fp}" in
    dwarf) record=(-F 1999 --call-graph dwarf,32768) seconds=3 ;;
    fp) record=(-F 4999 -g) seconds=6 ;;
    *) echo "profile.sh: CALLGRAPH is fp or dwarf, not '$CALLGRAPH'" >&2; exit 2 ;;
esac
perf record -e cpu-clock "${record[@]}" -p "$pids" -o "$out/perf.data" -- sleep "$seconds" 2>"$out/perf.err"
wait $bench || true
trap - EXIT

echo "== the row recorded (and the others proxybench ran)"
grep -E '^ +1/1 ' "$log" || true
echo "== CPU time by binary"
perf report -i "$out/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null |
    grep '%' | head -8 | tee "$out/by-binary.txt"
echo "== top functions ([k] kernel, [.] user space)"
perf report -i "$out/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null |
    grep '%' | head -40 | tee "$out/top-functions.txt"
echo "== in $out"
