#!/usr/bin/env bash
# Instructions imd executes per delivery on a fixed fan-out load, counted
# by valgrind's callgrind (wall-clock and CPU time are noisy on a shared
# machine; instruction counts much less so). For comparing builds:
#
#   scripts/bench-instructions.sh LABEL=PATH/TO/imd [LABEL=PATH ...]
#
# Each imd runs under callgrind on a free port, with one tokio worker
# (TOKIO_WORKER_THREADS=1: fewer cross-thread wake-ups, whose number
# depends on timing). The load is closed-loop and fixed: `imc bench
# --clients CLIENTS --senders 1 --window 1`, one sender whose every line
# goes to every client before it sends the next, SHORT and then LONG
# messages (a fresh server each); imd is then stopped with SIGTERM and
# callgrind's total read. The marginal cost, (Ir_long - Ir_short) /
# (deliveries_long - deliveries_short), cancels start-up, the joins and
# the shutdown, and leaves what each further delivery costs. Also shown:
# the instructions inside `hub::fan_out` (the push into every queue) per
# delivery. REPEAT rounds, builds alternated; a markdown table on stdout,
# raw files in OUT.
#
# Needs valgrind (callgrind_annotate) and a release imc (IMC, default
# target/release/imc).
set -euo pipefail

IMC=${IMC:-target/release/imc}
CLIENTS=${CLIENTS:-50}
SHORT=${SHORT:-400}
LONG=${LONG:-1200}
REPEAT=${REPEAT:-2}
OUT=${OUT:-bench-results/instructions-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

# run LABEL BIN MESSAGES ROUND: prints "IR DELIVERIES FAN_OUT_IR".
run() {
    local label=$1 bin=$2 messages=$3 round=$4
    local f="$OUT/$label-$messages-r$round"
    TOKIO_WORKER_THREADS=1 nice valgrind --tool=callgrind --callgrind-out-file="$f.callgrind" \
        "$bin" --port 0 --idle-timeout 0 >"$f.stdout" 2>"$f.log" &
    local vg=$!
    local port=""
    for _ in $(seq 600); do
        port=$(sed -n 's/^imd listening on .*:\([0-9]*\)$/\1/p' "$f.stdout")
        [ -n "$port" ] && break
        sleep 0.1
    done
    [ -n "$port" ] || { echo "imd did not start: $f.log" >&2; kill "$vg"; exit 1; }
    "$IMC" --port "$port" bench --clients "$CLIENTS" --senders 1 \
        --messages "$messages" --window 1 --json >"$f.json"
    kill -TERM "$vg"
    wait "$vg" || true
    local ir deliveries fan_out
    ir=$(sed -n 's/^totals: \([0-9]*\).*/\1/p' "$f.callgrind")
    deliveries=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["deliveries"])' "$f.json")
    fan_out=$(callgrind_annotate --inclusive=yes "$f.callgrind" 2>/dev/null |
        awk '/:imchat::server::hub::fan_out( |$)/ && !n++ { gsub(",", "", $1); print $1 }')
    echo "$ir $deliveries ${fan_out:-0}"
}

echo "| build | round | Ir, ${SHORT} messages | deliveries | Ir, ${LONG} messages | deliveries | marginal Ir per delivery | fan_out Ir per delivery |"
echo "|---|---|---|---|---|---|---|---|"
for round in $(seq "$REPEAT"); do
    for spec in "$@"; do
        label=${spec%%=*}
        bin=${spec#*=}
        read -r ir_s del_s _ < <(run "$label" "$bin" "$SHORT" "$round")
        read -r ir_l del_l fan_l < <(run "$label" "$bin" "$LONG" "$round")
        per=$(python3 -c "print(f'{($ir_l - $ir_s) / ($del_l - $del_s):.1f}')")
        fan=$(python3 -c "print(f'{$fan_l / $del_l:.1f}')")
        echo "| $label | $round | $ir_s | $del_s | $ir_l | $del_l | $per | $fan |"
    done
done
