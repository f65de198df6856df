#!/usr/bin/env bash
# bench-device.sh: the many-core fan-out run of issue 9 (imd on 1, 2 and 4
# cores beside Redis, NATS and the seed), prepared on this machine and run
# on a lent many-core machine that has no Rust, no Go and no network.
#
#   scripts/bench-device.sh pack        (here) build stripped release imd and
#       examples/fanout_load, the seed's Go server, and copy redis-server and
#       nats-server, each with every library it loads (the C library and its
#       loader too), into target/dev/ (git-ignored). Each program gets a
#       wrapper in target/dev/bin/ that starts it with the bundled loader, so
#       it runs whatever the other machine's C library is.
#   scripts/bench-device.sh run PART    (there, with target/dev carried) run
#       one part of the plan below through scripts/bench-fanout.sh and leave
#       in $OUT (default bench-results/device) the table, a verdict against
#       issue 9's targets, and all raw JSON and server logs as one tar.gz:
#       the device tool returns at most 8 files.
#   scripts/bench-device.sh verdict DIR... re-read the JSON summaries that
#       `run` left (fanout-*.json) in the DIRs and print the verdict again,
#       e.g. for parts A and B fetched by two calls.
#
# The plan (REPEAT=3 runs per cell, rates 2.5, 5 and 10 M deliveries/s,
# 500 subscribers, one publisher, 100-byte lines, as in the issue):
#   part A: imd on 1 core and on 4 cores, Redis on 1 core. This is what the
#           targets compare: 4 cores vs 1 for imd, imd vs Redis's one core.
#   part B: imd on 2 cores; NATS and the seed on 4 cores.
#   part C: imd-nopace (--write-interval-ms 0, the writer before session 7)
#           on 1 core and on 4 cores: what the write interval changes, on
#           the cores that issue 9 is about. Only with device time left.
#   part all: A then B.
# Each part ends by itself before RUN_BUDGET seconds (default 540, under the
# device tool's 600 s per command): bench-fanout.sh's STOP_AT skips runs
# that would start later, and the table says so.
#
# CPUs: the server cores are chosen as distinct physical cores (from sysfs
# topology where there is one), the load generator gets every CPU that
# shares no core with the 4 server cores. Some lent machines run under a
# sandbox (gVisor) that may not enforce taskset; `run` checks whether
# pinning holds (4 busy processes on one CPU for 1 s must get about 1 CPU
# second, not 4) and says so in its output. Where it does not hold, each
# server is also told its thread count (SERVER_THREADS = its cores), so the
# parallelism is right even where the cores are not exclusive.
#
# Locally the whole flow can be tried on a small machine:
#   scripts/bench-device.sh pack && SMOKE=1 scripts/bench-device.sh run A
# (SMOKE: one core for the server, 1 run per cell, rate 1 M, 1 s.)
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=${DEV:-$PWD/target/dev}

# copy_with_libs NAME PATH: PATH into $DEV/real/NAME, its libraries into
# $DEV/lib, and a wrapper $DEV/bin/NAME that runs it with them.
copy_with_libs() {
    local name=$1 path=$2
    install -m 755 "$path" "$DEV/real/$name"
    strip "$DEV/real/$name" 2>/dev/null || true
    if ldd "$path" >/dev/null 2>&1; then
        ldd "$path" | awk '/=> \//{print $3} /^\t\/.*ld-linux/{print $1}' | while read -r lib; do
            cp -L "$lib" "$DEV/lib/"
        done
        cat >"$DEV/bin/$name" <<EOF
#!/usr/bin/env bash
d=\$(dirname "\$(dirname "\$(readlink -f "\$0")")")
exec "\$d/lib/ld-linux-x86-64.so.2" --library-path "\$d/lib" "\$d/real/$name" "\$@"
EOF
    else
        printf '#!/usr/bin/env bash\nexec "$(dirname "$(dirname "$(readlink -f "$0")")")/real/%s" "$@"\n' "$name" >"$DEV/bin/$name"
    fi
    chmod 755 "$DEV/bin/$name"
}

pack() {
    cargo build --release --locked --bin imd --example fanout_load >&2
    rm -rf "$DEV"
    mkdir -p "$DEV/bin" "$DEV/real" "$DEV/lib"
    copy_with_libs imd target/release/imd
    copy_with_libs fanout_load target/release/examples/fanout_load
    local seed_dir=${TMPDIR:-/tmp}/go-seed/bin
    if command -v go >/dev/null; then
        bash ../shared/reference/go-seed/build.sh "$seed_dir" >&2
    fi
    if [ -x "$seed_dir/im-seed-server" ]; then copy_with_libs seed "$seed_dir/im-seed-server"; fi
    for s in redis-server nats-server; do
        p=$(command -v "$s" || { [ -x "/usr/sbin/$s" ] && echo "/usr/sbin/$s"; } || true)
        if [ -n "$p" ]; then copy_with_libs "$s" "$p"; else echo "warning: no $s here, left out" >&2; fi
    done
    {
        echo "imd: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo ' (uncommitted changes in src)')"
        echo "built: $(date -u '+%Y-%m-%d %H:%M UTC') by $(rustc --version)"
        for s in redis-server nats-server; do
            if [ -x "$DEV/bin/$s" ]; then echo "$s: $("$DEV/bin/$s" --version | head -1)"; fi
        done
    } >"$DEV/MANIFEST"
    cat "$DEV/MANIFEST"
    du -sh "$DEV"
}

# Prints "SRV1 SRV2 SRV4 LOAD" (taskset lists) for this machine, or for a
# small one (SMOKE) "1 1 1 0".
layout() {
    python3 - <<'EOF'
import os
cpus = sorted(os.sched_getaffinity(0))
def core(c):
    base = f"/sys/devices/system/cpu/cpu{c}/topology/"
    try:
        return (open(base + "physical_package_id").read().strip(), open(base + "core_id").read().strip())
    except OSError:
        return ("0", str(c))
seen, server = set(), []
for c in cpus:
    if core(c) not in seen and len(server) < 4:
        seen.add(core(c)); server.append(c)
load = [c for c in cpus if core(c) not in seen]
if len(server) < 4 or len(load) < 4:
    raise SystemExit(f"need 4 server cores and 4 load CPUs, have CPUs {cpus}")
j = lambda cs: ",".join(map(str, cs))
print(j(server[:1]), j(server[:2]), j(server[:4]), j(load))
EOF
}

# True when taskset really confines: 4 busy processes on one CPU for 1 s
# get about 1 CPU second between them.
pinning_holds() {
    python3 - <<'EOF'
import os, sys, time
cpu = min(os.sched_getaffinity(0))
kids = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        os.sched_setaffinity(0, {cpu})
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            pass
        os._exit(0)
    kids.append(pid)
used = 0.0
for pid in kids:
    _, _, ru = os.wait4(pid, 0)
    used += ru.ru_utime + ru.ru_stime
print(f"pinning check: 4 busy processes on cpu {cpu} for 1 s used {used:.2f} CPU s", file=sys.stderr)
sys.exit(0 if used < 2.0 else 1)
EOF
}

run_part() {
    local part=$1
    local out=${OUT:-$PWD/bench-results/device}
    mkdir -p "$out"
    local stop_at=$(($(date +%s) + ${RUN_BUDGET:-540}))
    export BUILD=0 BIN=$DEV/bin REDIS_BIN=$DEV/bin/redis-server NATS_BIN=$DEV/bin/nats-server \
        SEED_BIN=$DEV/bin/seed OUT=$out STOP_AT=$stop_at
    # bench-fanout.sh wants BIN/examples/fanout_load.
    mkdir -p "$DEV/bin/examples"
    ln -sf ../fanout_load "$DEV/bin/examples/fanout_load"
    # A machine without util-linux's taskset gets a stand-in that does the
    # same (`taskset -c CPUS PROGRAM ARGS...`) through sched_setaffinity.
    if ! command -v taskset >/dev/null; then
        mkdir -p "$DEV/shim"
        cat >"$DEV/shim/taskset" <<'EOF'
#!/usr/bin/env python3
import os, sys
cpus = set()
for part in sys.argv[2].split(","):
    lo, _, hi = part.partition("-")
    cpus.update(range(int(lo), int(hi or lo) + 1))
os.sched_setaffinity(0, cpus)
os.execvp(sys.argv[3], sys.argv[3:])
EOF
        chmod 755 "$DEV/shim/taskset"
        export PATH=$DEV/shim:$PATH
    fi
    local s1 s2 s4 load pinned=1
    if [ -n "${SMOKE:-}" ]; then
        read -r s1 s2 s4 load <<<"1 1 1 0"
        export REPEAT=1 RATES=1000000 DURATION=1
    else
        read -r s1 s2 s4 load < <(layout)
        export REPEAT=${REPEAT:-3} RATES=${RATES:-"2500000 5000000 10000000"}
    fi
    pinning_holds || pinned=0
    {
        echo "## Device run, part $part"
        echo
        echo "- machine: $(nproc) CPUs, $(sed -n 's/^model name\t*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)"
        echo "- binaries: $(tr '\n' ';' <"$DEV/MANIFEST")"
        echo "- server cores: 1 = cpu $s1, 2 = cpus $s2, 4 = cpus $s4; load generator on cpus $load"
        if [ "$pinned" = 1 ]; then
            echo "- taskset confines here (pinning check passed)"
        else
            echo "- **taskset does not confine here** (pinning check failed): each server also runs with as many threads as its cores (SERVER_THREADS)"
        fi
        echo
    } | tee "$out/part-$part.md"
    # one_config SERVERS CPUS CORES: one bench-fanout.sh invocation.
    one_config() {
        local threads=
        [ "$pinned" = 1 ] || threads=$3
        SERVERS=$1 CONFIGS="$2:$load" SERVER_THREADS=$threads bash scripts/bench-fanout.sh | tee -a "$out/part-$part.md"
    }
    case $part in
        A) one_config "imd redis" "$s1" 1; one_config imd "$s4" 4 ;;
        B) one_config imd "$s2" 2; one_config "nats seed" "$s4" 4 ;;
        C) one_config imd-nopace "$s1" 1; one_config imd-nopace "$s4" 4 ;;
        all) one_config "imd redis" "$s1" 1; one_config imd "$s4" 4
             one_config imd "$s2" 2; one_config "nats seed" "$s4" 4 ;;
        *) echo "unknown part $part (A, B, C or all)" >&2; exit 2 ;;
    esac
    verdict "$out" | tee -a "$out/part-$part.md"
    # Everything in one file; the summaries stay beside it for `verdict`.
    tar czf "$out/raw-$part.tar.gz" -C "$out" $(cd "$out" && ls -d fanout-*)
    for d in "$out"/fanout-*/; do rm -rf "$d"; done
}

# Reads every fanout-*.json under the DIRs and checks issue 9's targets.
verdict() {
    python3 - "$@" <<'EOF'
import glob, json, os, sys
medians = []
for d in sys.argv[1:]:
    for p in sorted(glob.glob(os.path.join(d, "fanout-*.json"))):
        medians += json.load(open(p))["medians"]
def cores(m):  # "0" -> 1, "0,2" -> 2, "0-3" -> 4
    n = 0
    for part in m["server_cpus"].split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n
cell = {}
for m in medians:
    if "error" not in m:
        cell[(m["server"], cores(m), m["requested_rate"])] = m
print("\n### Issue 9's targets\n")
def line(ok, text):
    print(f"- {'met' if ok else 'NOT met'}: {text}")
rates = sorted({r for (_, _, r) in cell})
for rate in rates:
    m = cell.get(("imd", 4, rate))
    if not m:
        continue
    line(m["delivered_pct"] >= 99.995 and m["disconnected"] == 0,
         f"imd on 4 cores at {rate/1e6:g} M/s: {m['delivered_pct']:.2f}% delivered, {m['disconnected']} disconnected")
    if rate <= 5e6:
        line(m["latency_us_p99"] <= 50_000, f"imd on 4 cores at {rate/1e6:g} M/s: p99 {m['latency_us_p99']/1000:.1f} ms (target <= 50 ms)")
    one = cell.get(("imd", 1, rate))
    if one and one.get("server_cpu_us_per_delivery") and m.get("server_cpu_us_per_delivery"):
        ratio = m["server_cpu_us_per_delivery"] / one["server_cpu_us_per_delivery"]
        line(ratio <= 1.2, f"CPU per delivery at {rate/1e6:g} M/s, 4 cores / 1 core: "
             f"{m['server_cpu_us_per_delivery']:.3f} / {one['server_cpu_us_per_delivery']:.3f} µs = {ratio:.2f} (target <= 1.2)")
for rate in rates:
    one, redis = cell.get(("imd", 1, rate)), cell.get(("redis", 1, rate))
    if one and redis and one.get("server_cpu_us_per_delivery") and redis.get("server_cpu_us_per_delivery"):
        line(one["server_cpu_us_per_delivery"] <= redis["server_cpu_us_per_delivery"],
             f"1 core at {rate/1e6:g} M/s, CPU per delivery imd {one['server_cpu_us_per_delivery']:.3f} µs vs Redis {redis['server_cpu_us_per_delivery']:.3f} µs")
for rate in rates:
    one, two = cell.get(("imd", 1, rate)), cell.get(("imd", 2, rate))
    if one and two:
        bound = one["latency_us_p99"] * 1.2 + 5000
        line(two["latency_us_p99"] <= bound, f"p99 at {rate/1e6:g} M/s, 2 cores {two['latency_us_p99']/1000:.1f} ms vs 1 core {one['latency_us_p99']/1000:.1f} ms (target <= 1.2x + 5 ms)")
for (server, n, rate), off in sorted(cell.items()):
    on = cell.get(("imd", n, rate))
    if server == "imd-nopace" and on and on.get("server_cpu_us_per_delivery") and off.get("server_cpu_us_per_delivery"):
        print(f"- write interval, {n} core(s) at {rate/1e6:g} M/s: CPU per delivery {on['server_cpu_us_per_delivery']:.3f} µs paced vs "
              f"{off['server_cpu_us_per_delivery']:.3f} µs unpaced; p99 {on['latency_us_p99']/1000:.1f} vs {off['latency_us_p99']/1000:.1f} ms")
redis_best = max((m["deliveries_per_sec"] for (s, c, _), m in cell.items() if s == "redis" and c == 1), default=None)
if redis_best:
    print(f"- Redis on one core delivered at most {redis_best/1e6:.2f} M/s in these runs")
EOF
}

case ${1:-} in
    pack) pack ;;
    run) run_part "${2:-A}" ;;
    verdict) shift; verdict "$@" ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
esac
