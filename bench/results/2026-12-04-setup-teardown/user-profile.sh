#!/usr/bin/env bash
# User-space profile of the gateway alone on scenario 6's plain row, from the repo root:
#   bash bench/results/2026-12-04-setup-teardown/user-profile.sh GATEWAY OUT
# perf samples user-space time only (cpu-clock:u), with call chains from the stack, for 12 s
# of the 20 s row. Then: perf script -i OUT/perf.data -F ip,sym > OUT/script.txt and
#   python3 categorize.py OUT/script.txt MICROSECONDS_PER_CONNECTION
sg=${1:-/tmp/sg-cur}; out=${2:-/tmp/uprof}
mkdir -p $out; ulimit -n 20000
bench/target/release/proxybench --scenarios 6 --targets sockgate --sockgate $sg -r 1 -d 20 --out $out/pb > $out/log 2>&1 &
b=$!
for _ in $(seq 300); do grep -q "proxybench: " $out/log && break; sleep 0.2; done
sleep 3
pids=$(pgrep -d, -f "^$sg --config")
perf record -e cpu-clock:u -F 3999 --call-graph dwarf,16384 -p $pids -o $out/perf.data -- sleep 12 2>$out/perf.err
wait $b
grep -m1 plain $out/log
