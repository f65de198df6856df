#!/usr/bin/env bash
# demo.sh: a short conversation on a private server.
#
# Starts imd on a free port (read from its first line, "imd listening on
# IP:PORT"), then alice, bob and carol chat with imc one-shot commands and
# the REPL: public messages, a whisper, a rename and `who`. carol listens
# all along; what she saw is printed at the end. imd is stopped by PID on
# exit, whatever happens.
#
# Environment: IMD and IMC, the binaries (default `imd` and `imc` on PATH).
set -euo pipefail

IMD=${IMD:-imd}
IMC=${IMC:-imc}
dir=$(mktemp -d)
server=
listener=
cleanup() {
    if [ -n "$listener" ]; then kill "$listener" 2>/dev/null || true; fi
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
        echo "== imd (pid $server) stopped"
    fi
    rm -rf "$dir"
}
trap cleanup EXIT

# Shows a command, then runs it.
run() {
    local shown="\$ imc" arg
    for arg in "$@"; do
        case $arg in
            *" "*) shown+=" '$arg'" ;;
            *) shown+=" $arg" ;;
        esac
    done
    echo "$shown"
    "$IMC" "$@"
}

mkfifo "$dir/imd.out"
"$IMD" --ip 127.0.0.1 --port 0 >"$dir/imd.out" 2>"$dir/imd.log" &
server=$!
exec 3<"$dir/imd.out"
if ! read -r -t 10 first <&3; then
    echo "demo: imd did not start:" >&2
    cat "$dir/imd.log" >&2
    exit 1
fi
addr=${first#imd listening on }
export IMC_IP=${addr%:*} IMC_PORT=${addr##*:}
echo "== imd (pid $server) listening on $addr"

# carol listens until she has seen 4 messages.
IMC_NAME=carol "$IMC" listen --count 4 --timeout 20 >"$dir/carol.txt" &
listener=$!
for _ in $(seq 100); do
    if "$IMC" who | grep -qx carol; then break; fi
    sleep 0.1
done

echo "== alice says hello to everyone"
run --name alice send "hello everyone"
echo "== alice renames herself (a connection of her own, so a rename notice)"
run --name alice rename alicia
echo "== bob answers in the REPL (menu 1: public talk), input piped in"
echo "\$ printf '1\\nhi alice, welcome\\nexit\\n0\\n' | imc --name bob"
printf '1\nhi alice, welcome\nexit\n0\n' | "$IMC" --name bob | sed 's/^/    /'
echo "== who is online"
run who
echo "== bob whispers to carol"
run --name bob whisper carol "psst, lunch at noon?"
echo "== alice says goodbye"
run --name alice send "bye all"

wait "$listener"
listener=
echo "== what carol saw"
sed 's/^/    /' "$dir/carol.txt"
