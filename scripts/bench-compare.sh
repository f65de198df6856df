#!/usr/bin/env bash
# bench-compare.sh [TARGET...]
#
# Runs `imc bench` against imd and against the seed's Go server, side by
# side in one run with the same arguments, for the targets of BENCHMARKS.md
# (1 fan-out, 2 flat out, 3 frozen client, 4 many connections, 5 one-shot
# send vs nc, 6 two imd nodes on Redis vs one). Each target gets a fresh
# server process of each kind, and the two servers alternate. Figures go to stdout; raw JSON reports to
# $OUT (default ./bench-results).
#
# Needs: release binaries (cargo build --release), Go to build the seed
# (Debian: golang-go), nc (netcat-openbsd) for target 5, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-$PWD/target/release}
OUT=${OUT:-$PWD/bench-results}
SEED_DIR=${SEED_DIR:-${TMPDIR:-/tmp}/go-seed/bin}
targets=("${@:-1 2 3 4 5 6}")
targets=(${targets[@]})
mkdir -p "$OUT"

if [ ! -x "$SEED_DIR/im-seed-server" ]; then
    bash ../shared/reference/go-seed/build.sh "$SEED_DIR" >/dev/null
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start KIND -> sets PORT and PID
start() {
    PORT=$(free_port)
    case $1 in
        imd) "$BIN/imd" --port "$PORT" --idle-timeout 0 --max-connections 20000 >/dev/null 2>"$OUT/imd.log" & ;;
        seed) "$SEED_DIR/im-seed-server" -port "$PORT" >/dev/null 2>"$OUT/seed.log" & ;;
    esac
    PID=$!
    pids+=("$PID")
    for _ in $(seq 100); do
        nc -z 127.0.0.1 "$PORT" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "$1 did not start" >&2
    exit 1
}
stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }

# summarize FILE: the figures of one JSON report, on two or three lines.
summarize() {
    python3 - "$1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"  deliveries/s {d['deliveries_per_sec']:,.0f}  ({d['deliveries']:,} of {d['deliveries_expected']:,})"
      f"  p50 {d['latency_us_p50']/1000:.2f} ms  p99 {d['latency_us_p99']/1000:.2f} ms  max {d['latency_us_max']/1000:.2f} ms")
print(f"  lost {d['lost']}  dup {d['duplicated']}  out-of-order {d['out_of_order']}  corrupted {d['corrupted']}"
      f"  disconnected {d['disconnected']}  frozen cut {d['frozen_disconnected']}/{d['frozen']}"
      f"  joins settled {d['join_settle_secs']:.2f} s  stalled {d['stalled']}")
if d.get('server_cpu_us_per_delivery') is not None:
    print(f"  server CPU {d['server_cpu_us_per_delivery']:.3f} us per delivery")
if d['cross_node_deliveries']:
    print(f"  cross-node deliveries {d['cross_node_deliveries']:,}  p50 {d['cross_node_latency_us_p50']/1000:.2f} ms  p99 {d['cross_node_latency_us_p99']/1000:.2f} ms")
if d['connections']:
    print(f"  idle connections reached {d['connections_reached']}/{d['connections']}  RSS {d['server_rss_kib_before']} -> {d['server_rss_kib_after']} KiB"
          f"  = {d['server_rss_bytes_per_connection'] or 0:,.0f} bytes/connection")
EOF
}

# run NAME KIND BENCH-ARGS...: one bench run, human output + JSON file.
run() {
    local name=$1 kind=$2
    shift 2
    start "$kind"
    echo "--- $kind: imc bench $*"
    "$BIN/imc" --port "$PORT" bench "$@" --server-pid "$PID" --json >"$OUT/$name-$kind.json" || true
    summarize "$OUT/$name-$kind.json"
    stop
}

for t in "${targets[@]}"; do
    case $t in
    1)
        echo "=== target 1: 100 clients, 10 senders, 64-byte messages, window 16"
        for kind in imd seed imd seed; do
            run t1 "$kind" --clients 100 --senders 10 --messages 2000 --size 64 --window 16 --bench-timeout 60
        done
        ;;
    2)
        echo "=== target 2: open loop, senders flat out"
        for kind in imd seed; do
            run t2 "$kind" --clients 100 --senders 10 --messages 2000 --size 64 --bench-timeout 60
        done
        ;;
    3)
        echo "=== target 3: 50 clients, without and with 1 frozen client"
        for kind in imd seed; do
            run t3-nofrozen "$kind" --clients 50 --senders 10 --messages 5000 --size 64 --window 16 --bench-timeout 30
            run t3-frozen "$kind" --clients 50 --senders 10 --messages 5000 --size 64 --window 16 --frozen 1 --bench-timeout 30
        done
        ;;
    4)
        echo "=== target 4: 10,000 idle connections"
        run t4 imd --clients 10 --senders 1 --messages 10 --connections 10000 --bench-timeout 120
        run t4 seed --clients 10 --senders 1 --messages 10 --connections 10000 --bench-timeout 60
        ;;
    5)
        # imc needs imd's welcome line, so this one runs against imd only.
        echo "=== target 5: imc send vs nc -N, one line, alternated, 100 runs each"
        for kind in imd; do
            start "$kind"
            python3 - "$BIN/imc" "$PORT" "$kind" <<'EOF'
import statistics, subprocess, sys, time
imc, port, kind = sys.argv[1:]
imc_t, nc_t = [], []
for i in range(100):
    t = time.perf_counter()
    subprocess.run(["nc", "-N", "127.0.0.1", port], input=b"hello from nc\n", stdout=subprocess.DEVNULL, check=False)
    nc_t.append(time.perf_counter() - t)
    t = time.perf_counter()
    r = subprocess.run([imc, "--port", port, "--timeout", "2", "send", "hello from imc"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    imc_t.append(time.perf_counter() - t)
m_nc, m_imc = statistics.median(nc_t) * 1000, statistics.median(imc_t) * 1000
print(f"  {kind}: nc -N median {m_nc:.2f} ms, imc send median {m_imc:.2f} ms (ratio {m_imc/m_nc:.2f}; imc last exit {r.returncode})")
EOF
            stop
        done
        ;;
    6)
        echo "=== cluster: target 1's load, one imd vs two imd nodes on one Redis"
        run t6-single imd --clients 100 --senders 10 --messages 2000 --size 64 --window 16 --bench-timeout 60
        rport=$(free_port)
        redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
        pids+=("$!")
        for _ in $(seq 100); do nc -z 127.0.0.1 "$rport" 2>/dev/null && break; sleep 0.05; done
        p1=$(free_port)
        "$BIN/imd" --port "$p1" --idle-timeout 0 --redis "redis://127.0.0.1:$rport" >/dev/null 2>"$OUT/node1.log" &
        pids+=("$!")
        p2=$(free_port)
        "$BIN/imd" --port "$p2" --idle-timeout 0 --redis "redis://127.0.0.1:$rport" >/dev/null 2>"$OUT/node2.log" &
        pids+=("$!")
        for p in "$p1" "$p2"; do
            for _ in $(seq 100); do nc -z 127.0.0.1 "$p" 2>/dev/null && break; sleep 0.05; done
        done
        echo "--- two nodes: imc bench --second-port (odd clients on node 2)"
        "$BIN/imc" --port "$p1" bench --clients 100 --senders 10 --messages 2000 --size 64 --window 16 --second-port "$p2" --bench-timeout 60 --json >"$OUT/t6-cluster.json" || true
        summarize "$OUT/t6-cluster.json"
        ;;
    esac
done
