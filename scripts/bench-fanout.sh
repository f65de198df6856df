#!/usr/bin/env bash
# bench-fanout.sh: open-loop pub/sub fan-out, imd vs Redis vs NATS, side by
# side in one run.
#
# Shape: PUBLISHERS publishers (default 1) each send SIZE-byte messages at a
# fixed rate for DURATION seconds to SUBSCRIBERS subscribers (default 500)
# that read as fast as they can. RATES are requested *deliveries* per
# second; each publisher sends RATE / SUBSCRIBERS / PUBLISHERS messages/s.
# The load generator is examples/fanout_load.rs (the library code behind
# `imc bench --subscribers`), the same binary for all three servers.
#
# For each CONFIG (SERVER_CPUS:LOAD_CPUS, for taskset -c), each rate and
# each of REPEAT rounds, every server in SERVERS gets a fresh process,
# pinned to SERVER_CPUS, with the load generator pinned to LOAD_CPUS; the
# servers alternate within each rate. The table shows the median run (by
# deliveries) of each cell; every run's JSON report, with the server logs,
# goes to $OUT/fanout-TIMESTAMP/ and all of them together to
# $OUT/fanout-TIMESTAMP.json.
#
# Environment (defaults for a 2-core machine):
#   CONFIGS="1:0 0-1:0-1"   server on cpu 1 / load on cpu 0; then both share both
#   RATES="2500000 5000000 10000000"
#   SUBSCRIBERS=500 PUBLISHERS=1 SIZE=100 DURATION=3 DRAIN=10 REPEAT=3
#   SERVERS="imd redis nats"   (also: imd-before, seed, and imd-nopace:
#       the same imd with --write-interval-ms 0, its writers unpaced)
#   OUT=bench-results BIN=target/release BUILD=1 (0: do not run cargo build)
#   BASE_BIN=path/to/an/older/imd   for SERVERS containing imd-before: the
#       same load against another build, for before/after figures
#   QUOTA=25   limit the server to this % of one core (a cgroup's CPU quota;
#       needs a writable cgroup v1 cpu controller or cgroup v2): puts the
#       server far past its capacity while the load generator keeps up
#   HOGS=7   start this many busy loops on the first CONFIG's server CPUs for the whole
#       run (each ends by itself after an hour at most, and with the
#       script): the server then gets about 1/(HOGS+1) of its cores while
#       the load generator keeps its own. Far past capacity where QUOTA
#       cannot be used (a read-only cgroup); not with a shared layout.
#   SEED_BIN=path/to/im-seed-server for SERVERS containing seed (default:
#       built by ../shared/reference/go-seed/build.sh when Go is there)
#   REDIS_BIN, NATS_BIN   the redis-server / nats-server to run (default:
#       the ones on PATH or in /usr/sbin)
#   STOP_AT=EPOCH_SECONDS   start no run after this time; the table shows
#       the runs made (scripts/bench-device.sh uses it to fit a time limit)
#   SERVER_THREADS=4   run the server with this many threads whatever its
#       cores (imd: TOKIO_WORKER_THREADS; NATS and the seed: GOMAXPROCS;
#       Redis: no effect). Default: the servers' own choice, one per core
#       of SERVER_CPUS. More threads than cores shows what extra workers
#       cost on a machine too small to give them cores of their own; it is
#       no substitute for a run on more cores.
#
# Servers: imd (target/release/imd, --idle-timeout 0); redis-server (Debian
# package; --save '' --appendonly no --protected-mode no, its default
# client-output-buffer-limit for pubsub, 32mb 8mb 60, stays: that is its
# slow-consumer rule); nats-server (Debian package; defaults). Server
# write system calls come from `perf stat` (needs perf and permission to
# use syscall tracepoints, e.g. root); without it those columns are empty.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIGS=${CONFIGS:-"1:0 0-1:0-1"}
RATES=${RATES:-"2500000 5000000 10000000"}
SUBSCRIBERS=${SUBSCRIBERS:-500}
PUBLISHERS=${PUBLISHERS:-1}
SIZE=${SIZE:-100}
DURATION=${DURATION:-3}
DRAIN=${DRAIN:-10}
REPEAT=${REPEAT:-3}
SERVERS=${SERVERS:-"imd redis nats"}
OUT=${OUT:-$PWD/bench-results}
BIN=${BIN:-$PWD/target/release}
BUILD=${BUILD:-1}
LOAD=$BIN/examples/fanout_load
READY_TIMEOUT=30

if [ "$BUILD" = 1 ]; then
    cargo build --release --locked --bin imd --example fanout_load >&2
fi
[ -x "$LOAD" ] || { echo "no $LOAD: cargo build --release --example fanout_load" >&2; exit 2; }

# Where each server is; a missing one is left out, with a word.
find_cmd() { command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; } || true; }
SEED_BIN=${SEED_BIN:-${TMPDIR:-/tmp}/go-seed/bin/im-seed-server}
if [[ " $SERVERS " == *" seed "* ]] && [ ! -x "$SEED_BIN" ] && command -v go >/dev/null; then
    bash ../shared/reference/go-seed/build.sh "$(dirname "$SEED_BIN")" >&2
fi
declare -A server_bin=([imd]=$BIN/imd [imd-nopace]=$BIN/imd [imd-before]=${BASE_BIN:-} [seed]=$SEED_BIN
    [redis]=${REDIS_BIN:-$(find_cmd redis-server)} [nats]=${NATS_BIN:-$(find_cmd nats-server)})
# The protocol the load generator speaks to each kind.
declare -A proto_of=([imd]=imd [imd-nopace]=imd [imd-before]=imd [seed]=imd [redis]=redis [nats]=nats)
servers=()
for s in $SERVERS; do
    if [ -n "${server_bin[$s]:-}" ] && [ -x "${server_bin[$s]}" ]; then
        servers+=("$s")
    else
        echo "warning: no binary for $s, left out (imd: cargo build --release; Debian: apt-get install redis-server nats-server)" >&2
    fi
done
[ "${#servers[@]}" -gt 0 ] || { echo "no server to run" >&2; exit 2; }

stamp=$(date +%Y%m%d-%H%M%S)
runs_dir=$OUT/fanout-$stamp
mkdir -p "$runs_dir"

SPID=
HOG_PIDS=()
cleanup() {
    if [ -n "$SPID" ]; then
        kill "$SPID" 2>/dev/null || true
        wait "$SPID" 2>/dev/null || true
    fi
    for p in "${HOG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ -n "${CGROUP:-}" ]; then rmdir "$CGROUP" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_server KIND CPUS LOG: a fresh server; sets SPID and SPORT.
start_server() {
    local kind=$1 cpus=$2 log=$3
    SPORT=$(free_port)
    local threads=()
    if [ -n "${SERVER_THREADS:-}" ]; then
        threads=(env "TOKIO_WORKER_THREADS=$SERVER_THREADS" "GOMAXPROCS=$SERVER_THREADS")
    fi
    case $kind in
        imd | imd-before | imd-nopace)
            local pace=()
            [ "$kind" = imd-nopace ] && pace=(--write-interval-ms 0)
            "${threads[@]}" taskset -c "$cpus" "${server_bin[$kind]}" --ip 127.0.0.1 --port "$SPORT" --idle-timeout 0 \
                "${pace[@]}" >"$log" 2>&1 & ;;
        seed) "${threads[@]}" taskset -c "$cpus" "${server_bin[seed]}" -port "$SPORT" >"$log" 2>&1 & ;;
        redis) taskset -c "$cpus" "${server_bin[redis]}" --bind 127.0.0.1 --port "$SPORT" \
            --save '' --appendonly no --protected-mode no >"$log" 2>&1 & ;;
        nats) "${threads[@]}" taskset -c "$cpus" "${server_bin[nats]}" -a 127.0.0.1 -p "$SPORT" >"$log" 2>&1 & ;;
    esac
    SPID=$!
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$SPORT") 2>/dev/null; then
            return 0
        fi
        kill -0 "$SPID" 2>/dev/null || break
        sleep 0.05
    done
    echo "$kind did not start listening on $SPORT; log:" >&2
    cat "$log" >&2
    exit 1
}

QUOTA=${QUOTA:-}
CGROUP=
if [ -n "$QUOTA" ]; then
    if [ -w /sys/fs/cgroup/cpu ]; then
        CGROUP=/sys/fs/cgroup/cpu/imchat-bench-$$
        mkdir -p "$CGROUP"
        echo 100000 >"$CGROUP/cpu.cfs_period_us"
        echo $((QUOTA * 1000)) >"$CGROUP/cpu.cfs_quota_us"
    elif [ -w /sys/fs/cgroup/cgroup.procs ]; then
        CGROUP=/sys/fs/cgroup/imchat-bench-$$
        mkdir -p "$CGROUP"
        echo "$((QUOTA * 1000)) 100000" >"$CGROUP/cpu.max"
    else
        echo "QUOTA needs a writable cgroup cpu controller" >&2
        exit 2
    fi
fi
# Puts the server (all its threads) under the CPU quota, if one is set.
limit_server() {
    [ -n "$CGROUP" ] || return 0
    for t in /proc/"$SPID"/task/*; do echo "${t##*/}" >"$CGROUP/tasks" 2>/dev/null || echo "$SPID" >"$CGROUP/cgroup.procs"; done
}

stop_server() {
    kill "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
    SPID=
}

HOGS=${HOGS:-}
if [ -n "$HOGS" ]; then
    hog_cpus=${CONFIGS%%:*}
    for _ in $(seq "$HOGS"); do
        timeout 3600 taskset -c "$hog_cpus" python3 -c 'while True: pass' &
        HOG_PIDS+=($!)
    done
fi

model=$( (lscpu 2>/dev/null || true) | sed -n 's/^Model name: *//p' | head -1)
echo "# Open-loop pub/sub fan-out: ${servers[*]}"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), host: $(uname -sr), nproc: $(nproc), CPU: ${model:-unknown}"
echo "- shape: $PUBLISHERS publisher(s), $SUBSCRIBERS subscribers, $SIZE-byte messages, $DURATION s per run, drain timeout $DRAIN s, $REPEAT run(s) per cell (median by deliveries shown)"
for c in $CONFIGS; do
    echo "- taskset layout ${c}: server on cpu(s) ${c%%:*}, load generator on cpu(s) ${c##*:}"
done
if [ -n "$QUOTA" ]; then
    echo "- server CPU quota: $QUOTA% of one core (cgroup $CGROUP)"
fi
if [ -n "$HOGS" ]; then
    echo "- $HOGS busy loops share the server's cpu(s) ${CONFIGS%%:*} for the whole run"
fi
if [ -n "${SERVER_THREADS:-}" ]; then
    echo "- server threads: $SERVER_THREADS (TOKIO_WORKER_THREADS / GOMAXPROCS), whatever its cores"
fi
changed=$(git diff --name-only HEAD -- src 2>/dev/null | tr '\n' ' ')
echo "- imd: $(git rev-parse --short HEAD 2>/dev/null || echo '?')${changed:+ (uncommitted changes in: ${changed% })}" \
    "; redis: $([ -n "${server_bin[redis]}" ] && "${server_bin[redis]}" --version | sed -n 's/.*\(v=[^ ]*\).*/\1/p')" \
    "; nats: $([ -n "${server_bin[nats]}" ] && "${server_bin[nats]}" --version)"
echo "- raw JSON: $runs_dir/ and $runs_dir.json"
echo

# The bound on one load run: readiness, publishing, drain, perf, slack.
bound=$((READY_TIMEOUT + ${DURATION%.*} + 1 + 2 * ${DRAIN%.*} + 30))
n=0
for cfg in $CONFIGS; do
    scpus=${cfg%%:*}
    lcpus=${cfg##*:}
    for rate in $RATES; do
        per_pub=$(python3 -c "print($rate / $SUBSCRIBERS / $PUBLISHERS)")
        for rep in $(seq "$REPEAT"); do
            for kind in "${servers[@]}"; do
                if [ -n "${STOP_AT:-}" ] && [ "$(date +%s)" -ge "$STOP_AT" ]; then
                    echo "  STOP_AT reached: $kind srv $scpus $rate run $rep and later runs not made"
                    break 4
                fi
                n=$((n + 1))
                name="$(printf %03d "$n")-$kind-srv${scpus}-load${lcpus}-r${rate}-${rep}"
                log=$runs_dir/$name.log
                start_server "$kind" "$scpus" "$log"
                limit_server
                rc=0
                timeout -k 5 "$bound" taskset -c "$lcpus" "$LOAD" --proto "${proto_of[$kind]}" \
                    --addr "127.0.0.1:$SPORT" --publishers "$PUBLISHERS" \
                    --subscribers "$SUBSCRIBERS" --rate "$per_pub" --duration "$DURATION" \
                    --size "$SIZE" --drain-timeout "$DRAIN" --ready-timeout "$READY_TIMEOUT" \
                    --server-pid "$SPID" --json >"$runs_dir/$name.json" 2>"$runs_dir/$name.err" || rc=$?
                stop_server
                python3 - "$runs_dir/$name.json" "$kind" "$scpus" "$lcpus" "$rate" "$rep" "$rc" "$log" "$runs_dir/$name.err" "$n" <<'EOF'
import json, re, sys
path, kind, scpus, lcpus, rate, rep, rc, log, err, seq = sys.argv[1:]
try:
    d = json.load(open(path))
except Exception:
    d = {"proto": kind, "error": (open(err).read().strip() or f"no report (exit {rc})")[-500:]}
text = open(log, errors="replace").read()
d.update(seq=int(seq), server=kind, server_cpus=scpus, load_cpus=lcpus, requested_rate=float(rate),
         repeat=int(rep), exit_status=int(rc),
         server_log_slow_consumer_lines=len(re.findall(r"(?i)slow consumer|output buffer limits|too slow", text)))
json.dump(d, open(path, "w"))
if "error" in d:
    print(f"  {kind:5} srv {scpus} load {lcpus} {float(rate)/1e6:g}M run {rep}: FAILED (exit {rc}): {d['error']}")
else:
    print(f"  {kind:5} srv {scpus} load {lcpus} {float(rate)/1e6:g}M run {rep}: delivered {d['delivered_pct']:.2f}%"
          f"  disconnected {d['disconnected']}  publish {d['achieved_publish_pct']:.1f}%"
          f"  p99 {d['latency_us_p99']/1000:.1f} ms{'  STALLED' if d['stalled'] else ''}")
EOF
            done
        done
    done
done

echo
python3 - "$runs_dir" "$runs_dir.json" <<'EOF'
import glob, json, os, sys
runs_dir, summary = sys.argv[1:]
runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(runs_dir, "*.json")))]
cells = {}
order = []
for r in sorted(runs, key=lambda r: r["seq"]):
    key = (r["server_cpus"], r["load_cpus"], r["requested_rate"], r["server"])
    if key not in cells:
        order.append(key)
    cells.setdefault(key, []).append(r)
def median(rs):
    ok = [r for r in rs if "error" not in r]
    if not ok:
        return rs[0]
    ok.sort(key=lambda r: r["deliveries"])
    return ok[(len(ok) - 1) // 2]
def f(v, fmt):
    return "n/a" if v is None else format(v, fmt)
print("| server | cores (server / load) | requested M deliveries/s | delivered % | disconnected | achieved publish % | p50 ms | p99 ms | M deliveries/s | server CPU % | µs CPU / delivery | write syscalls / delivery | probe max ms (unanswered) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
medians = []
for key in order:
    scpus, lcpus, rate, server = key
    rs = cells[key]
    m = median(rs)
    medians.append(m)
    cores = f"{scpus} / {lcpus}"
    if "error" in m:
        print(f"| {server} | {cores} | {rate/1e6:g} | failed: {m['error'][:60]} | | | | | | | | | |")
        continue
    stalled = " (stalled)" if m["stalled"] else ""
    print(f"| {server} | {cores} | {rate/1e6:g} | {m['delivered_pct']:.2f}{stalled} | {m['disconnected']} | "
          f"{m['achieved_publish_pct']:.1f} | {m['latency_us_p50']/1000:.1f} | {m['latency_us_p99']/1000:.1f} | "
          f"{m['deliveries_per_sec']/1e6:.2f} | {f(m['server_cpu_pct'], '.0f')} | "
          f"{f(m['server_cpu_us_per_delivery'], '.3f')} | {f(m['write_syscalls_per_delivery'], '.4f')} | "
          f"{m.get('probe_ms_max', 0):.1f} ({m.get('probes_failed', 0)}) |")
notes = [(r["server"], r["server_cpus"], r["requested_rate"], r["repeat"], n) for r in runs for n in r.get("notes", [])]
reasons = [(r["server"], r["server_cpus"], r["requested_rate"], r["repeat"], k, v) for r in runs for k, v in r.get("disconnect_reasons", {}).items()]
if reasons:
    print("\nDisconnect reasons (all runs):")
    for s, c, rate, rep, k, v in reasons:
        print(f"- {s} srv {c} {rate/1e6:g}M run {rep}: {v} x {k}")
if notes:
    print("\nNotes (all runs):")
    for s, c, rate, rep, n in notes:
        print(f"- {s} srv {c} {rate/1e6:g}M run {rep}: {n}")
json.dump({"runs": runs, "medians": medians}, open(summary, "w"), indent=1)
EOF
