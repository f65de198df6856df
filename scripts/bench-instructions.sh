#!/usr/bin/env bash
# Instructions imd executes per delivery on a fixed open-loop fan-out load,
# counted by valgrind's callgrind (wall-clock and CPU time are noisy on a
# shared machine; instruction counts are not). For comparing two builds:
#
#   scripts/bench-instructions.sh LABEL=PATH/TO/imd [LABEL=PATH ...]
#
# Each imd runs under callgrind on a free port; `imc bench --subscribers`
# sends SUBSCRIBERS readers RATE messages/s for each of DURATIONS seconds
# (a fresh server each), then imd is stopped with SIGTERM and callgrind's
# total is read. The marginal cost, (Ir_long - Ir_short) / (deliveries_long
# - deliveries_short), cancels start-up, the subscribers' joins and the
# shutdown, and leaves what each further delivery costs. REPEAT rounds,
# builds alternated. Prints a markdown table; raw files in OUT.
#
# Needs valgrind and a release imc (IMC, default target/release/imc).
set -euo pipefail

IMC=${IMC:-target/release/imc}
SUBSCRIBERS=${SUBSCRIBERS:-100}
RATE=${RATE:-200}
SHORT=${SHORT:-2}
LONG=${LONG:-6}
REPEAT=${REPEAT:-2}
OUT=${OUT:-bench-results/instructions-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

# run LABEL BIN SECONDS ROUND: prints "IR DELIVERIES".
run() {
    local label=$1 bin=$2 secs=$3 round=$4
    local f="$OUT/$label-${secs}s-r$round"
    nice valgrind --tool=callgrind --callgrind-out-file="$f.callgrind" \
        "$bin" --port 0 --idle-timeout 0 >"$f.stdout" 2>"$f.log" &
    local vg=$!
    local port=""
    for _ in $(seq 600); do
        port=$(sed -n 's/^imd listening on .*:\([0-9]*\)$/\1/p' "$f.stdout")
        [ -n "$port" ] && break
        sleep 0.1
    done
    [ -n "$port" ] || { echo "imd did not start: $f.log" >&2; kill "$vg"; exit 1; }
    "$IMC" --port "$port" bench --subscribers "$SUBSCRIBERS" --rate "$RATE" \
        --duration "$secs" --drain-timeout 60 --json >"$f.json"
    kill -TERM "$vg"
    wait "$vg" || true
    local ir deliveries
    ir=$(sed -n 's/^totals: \([0-9]*\).*/\1/p' "$f.callgrind")
    deliveries=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["deliveries"])' "$f.json")
    echo "$ir $deliveries"
}

echo "| build | round | Ir, ${SHORT} s | deliveries | Ir, ${LONG} s | deliveries | marginal Ir per delivery |"
echo "|---|---|---|---|---|---|---|"
for round in $(seq "$REPEAT"); do
    for spec in "$@"; do
        label=${spec%%=*}
        bin=${spec#*=}
        read -r ir_s del_s < <(run "$label" "$bin" "$SHORT" "$round")
        read -r ir_l del_l < <(run "$label" "$bin" "$LONG" "$round")
        per=$(python3 -c "print(f'{($ir_l - $ir_s) / ($del_l - $del_s):.1f}')")
        echo "| $label | $round | $ir_s | $del_s | $ir_l | $del_l | $per |"
    done
done
