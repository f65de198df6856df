#!/usr/bin/env bash
# Black-box integration run of the shipped binaries.
#
# Builds the release binaries, starts `imd` as a process on a free port,
# runs the scripts in scripts/, a few `imc` one-shot pipelines and the
# scenario files against it, checks their output and exit codes, runs the
# bench once in a tiny configuration (figures not asserted), and stops the
# server even when a step fails. Exit 0 only if every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --bins
BIN=$PWD/target/release
export IMD=$BIN/imd IMC=$BIN/imc

work=$(mktemp -d)
imd_pid=
cleanup() {
    if [ -n "$imd_pid" ]; then
        kill "$imd_pid" 2>/dev/null || true
        wait "$imd_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Nothing from the machine's IMD_*/IMC_* settings (IMD_REDIS would make
# this a cluster run, IMC_NAME would rename every imc below).
for var in $(compgen -e); do
    case $var in IMD_* | IMC_*) unset "$var" ;; esac
done
export HOME=$work IMC_HISTORY=$work/history NO_COLOR=1 IMC_TIMEOUT=10

step() { printf '\n== %s\n' "$*"; }
# fail writes to the script's own stderr (fd 3), so a step that sends a
# command's stderr to a file (expect_status ... 2>FILE) cannot hide it.
exec 3>&2
fail() {
    echo "FAIL: $*" >&3
    echo "--- imd log ---" >&3
    cat "$work/imd.log" >&3 || true
    exit 1
}
# expect_status WANT CMD...: runs CMD, fails unless it exits WANT.
expect_status() {
    local want=$1 got=0
    shift
    "$@" || got=$?
    [ "$got" = "$want" ] || fail "'$*' exited $got, expected $want"
}

step "start imd on a free port"
"$IMD" --ip 127.0.0.1 --port 0 --idle-timeout 0 >"$work/imd.out" 2>"$work/imd.log" &
imd_pid=$!
for _ in $(seq 200); do
    grep -q '^imd listening on ' "$work/imd.out" 2>/dev/null && break
    kill -0 "$imd_pid" 2>/dev/null || fail "imd exited at start"
    sleep 0.05
done
addr=$(sed -n 's/^imd listening on //p' "$work/imd.out")
[ -n "$addr" ] || fail "imd did not report its address"
export IMC_IP=${addr%:*} IMC_PORT=${addr##*:}
echo "imd at $addr (pid $imd_pid)"

# wait_online NAME: until `imc who` lists NAME (bounded).
wait_online() {
    for _ in $(seq 200); do
        "$IMC" who | grep -qx "$1" && return 0
        sleep 0.05
    done
    fail "$1 never came online"
}

step "imc send | listen: three messages arrive, in order, as JSON"
"$IMC" --name watcher listen --count 3 --json >"$work/listen.json" &
listen_pid=$!
wait_online watcher
for m in one two three; do "$IMC" --name ci send "build step $m"; done
wait "$listen_pid" || fail "listen exited $?"
python3 - "$work/listen.json" <<'EOF' || fail "listen output"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
texts = [r["text"] for r in rows if r["kind"] == "public"]
assert texts == ["build step one", "build step two", "build step three"], rows
assert all(r["from"] == "ci" for r in rows if r["kind"] == "public"), rows
EOF

step "imc whisper: delivered to bob only; to nobody exits 1 with the reason"
"$IMC" --name bob listen --count 1 >"$work/bob.txt" &
bob_pid=$!
wait_online bob
"$IMC" --name alice whisper bob "psst from ci"
wait "$bob_pid" || fail "bob's listen exited $?"
grep -qx '\*alice\* psst from ci' "$work/bob.txt" || fail "bob got: $(cat "$work/bob.txt")"
expect_status 1 "$IMC" whisper nobody hi 2>"$work/err.txt"
grep -qF "(no-such-user)" "$work/err.txt" || fail "reason: $(cat "$work/err.txt")"

step "imc who --json and rename, seen by a user online"
"$IMC" --name roster listen --count 1 >"$work/roster.txt" &
r_pid=$!
wait_online roster
"$IMC" who --json | python3 -c 'import json,sys; assert json.load(sys.stdin) == ["roster"]' ||
    fail "who --json does not list exactly roster"
"$IMC" rename ci-check | grep -qx 'you are now ci-check' || fail "rename output"
expect_status 1 "$IMC" rename 'bad name' 2>"$work/err.txt"
grep -qF "(bad-name)" "$work/err.txt" || fail "reason: $(cat "$work/err.txt")"
"$IMC" --name fence send "roster fence"
wait "$r_pid" || fail "roster's listen exited $?"
grep -q ' is now known as ci-check$' "$work/roster.txt" || fail "roster saw: $(cat "$work/roster.txt")"
! grep -q 'bad name' "$work/roster.txt" || fail "a refused rename was announced: $(cat "$work/roster.txt")"
grep -qx '<fence> roster fence' "$work/roster.txt" || fail "roster saw: $(cat "$work/roster.txt")"

step "scripts/notify.sh posts a command's output"
"$IMC" --name notices listen --count 3 >"$work/notices.txt" &
n_pid=$!
wait_online notices
IMC_NAME=builder scripts/notify.sh printf 'compiling\nlinking\n'
wait "$n_pid" || fail "notices listen exited $?"
grep -q '^<builder> .*compiling' "$work/notices.txt" || fail "notify: $(cat "$work/notices.txt")"
grep -q '^<builder> .*finished (exit 0)' "$work/notices.txt" || fail "notify: $(cat "$work/notices.txt")"

step "scripts/wait-for.sh acts on a named user's message"
IMC_NAME=waiter WAIT_TIMEOUT=20 scripts/wait-for.sh deployer '^deploy (done|ok)' >"$work/waited.txt" &
w_pid=$!
wait_online waiter
"$IMC" --name deployer send "deploy done"
wait "$w_pid" || fail "wait-for exited $?"
grep -q 'deploy done' "$work/waited.txt" || fail "wait-for printed: $(cat "$work/waited.txt")"

step "scenario files pass against the running imd"
"$IMC" scenario tests/scenarios/*.chat >"$work/scenarios.txt" || {
    cat "$work/scenarios.txt"
    fail "scenarios"
}
grep -c '^PASS' "$work/scenarios.txt"

step "the REPL from piped input"
"$IMC" --name audience listen --count 1 >"$work/audience.txt" &
a_pid=$!
wait_online audience
printf '1\nhello from the repl\nexit\n0\n' | "$IMC" --name repl >/dev/null
wait "$a_pid" || fail "audience listen exited $?"
grep -qx '<repl> hello from the repl' "$work/audience.txt" || fail "repl: $(cat "$work/audience.txt")"

step "bench, tiny configuration (figures not asserted)"
"$IMC" bench --clients 5 --senders 2 --messages 300 --window 8 --bench-timeout 30 --server-pid "$imd_pid"

step "scripts/demo.sh runs its own server"
scripts/demo.sh >"$work/demo.txt" || fail "demo exited $?"
# What carol saw (indented), not the demo's own "== alice says" banners.
for want in '    <alice> hello everyone' '    *** alice is now known as alicia' \
    '    <bob> hi alice, welcome' '    *bob* psst, lunch at noon?' '    <alice> bye all'; do
    grep -qxF -- "$want" "$work/demo.txt" || fail "demo: no '$want' in: $(cat "$work/demo.txt")"
done

step "SIGTERM: graceful shutdown, exit 0, a stopped server gives exit 3"
"$IMC" --name last listen >"$work/last.txt" &
l_pid=$!
wait_online last
kill -TERM "$imd_pid"
st=0
wait "$imd_pid" || st=$?
imd_pid=
[ "$st" = 0 ] || fail "imd exited $st on SIGTERM"
l_st=0
wait "$l_pid" || l_st=$?
[ "$l_st" = 3 ] || fail "listen exited $l_st after shutdown, expected 3"
grep -q 'bye: server shutting down' "$work/last.txt" || fail "no bye: $(cat "$work/last.txt")"
expect_status 3 "$IMC" send "anyone?" 2>/dev/null

printf '\nci/integration.sh: all checks passed\n'
