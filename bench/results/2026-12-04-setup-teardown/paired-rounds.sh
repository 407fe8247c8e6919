#!/usr/bin/env bash
# Paired rounds of scenario 6's plain row, run from the repo root after bench/run.sh built
# proxybench:  bash bench/results/2026-12-04-setup-teardown/paired-rounds.sh N GATEWAY_A GATEWAY_B
# Each round runs HAProxy, the two gateways (their order alternating between rounds) and
# HAProxy again, 5 s each, and prints each gateway's CPU per connection divided by the mean
# of the round's two HAProxy runs.
n=$1; a=$2; b=$3
ulimit -n 20000
run() { # target bin
  bench/target/release/proxybench --scenarios 6 --targets $1 --sockgate $2 -r 1 -d 5 --out ${TMPDIR:-/tmp}/paired-out 2>&1 | grep "^ .*1/1 .*plain, 16" | sed -E 's/.* ([0-9,]+) conn\/s +CPU\/op ([0-9.]+).*/\2/'
}
for i in $(seq $n); do
  if [ $((i % 2)) = 1 ]; then order="$a $b"; else order="$b $a"; fi
  h=$(run haproxy $a)
  declare -A r
  for x in $order; do r[$x]=$(run sockgate $x); done
  h2=$(run haproxy $a)
  echo "round $i haproxy $h $h2 $(basename $a) ${r[$a]} $(basename $b) ${r[$b]}"
done | tee /tmp/ab3.log | awk '{hm=($4+$5)/2; ra=$7/hm; rb=$9/hm; sa+=ra; sb+=rb; n++; printf "%s  ÷HAProxy: %s %.3f  %s %.3f\n",$0,$6,ra,$8,rb} END {printf "mean ÷HAProxy: A %.3f  B %.3f over %d\n", sa/n, sb/n, n}'
