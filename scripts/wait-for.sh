#!/usr/bin/env bash
# wait-for.sh NAME PATTERN [COMMAND [ARG...]]
#
# Waits (with `imc listen`) for a message from NAME, public or private,
# whose text matches PATTERN (a bash extended regular expression), then
# prints the text, or, if a COMMAND is given, runs it with IMC_FROM and
# IMC_TEXT set and exits with its status.
#
#   scripts/wait-for.sh alice '^deploy (done|ok)' ./restart-service
#
# Exit status: 0 found (or the command's), 2 usage, 3 cannot connect or
# connection lost, 4 nothing matching within WAIT_TIMEOUT seconds.
#
# Environment: IMC (the imc binary, default `imc` on PATH); IMC_HOST
# (or IMC_IP), IMC_PORT, IMC_NAME as for imc (IMC_NAME names the waiting connection);
# WAIT_TIMEOUT, seconds to wait (default 60).
set -u

if [ $# -lt 2 ]; then
    echo "usage: wait-for.sh NAME PATTERN [COMMAND [ARG...]]" >&2
    exit 2
fi
name=$1
pattern=$2
shift 2
IMC=${IMC:-imc}
timeout=${WAIT_TIMEOUT:-60}

dir=$(mktemp -d)
listener=
cleanup() {
    if [ -n "$listener" ]; then
        kill "$listener" 2>/dev/null
        wait "$listener" 2>/dev/null
    fi
    rm -rf "$dir"
}
trap cleanup EXIT

# A FIFO rather than a pipe into `while`, so the listener's PID is known:
# it is stopped as soon as the message is found, and its exit status tells
# a timeout from a lost connection.
mkfifo "$dir/events"
"$IMC" listen --timeout "$timeout" >"$dir/events" &
listener=$!
exec 3<"$dir/events"

while IFS= read -r line <&3; do
    case $line in
        "<$name> "*) text=${line#"<$name> "} ;;
        "*$name* "*) text=${line#"*$name* "} ;;
        *) continue ;;
    esac
    if [[ $text =~ $pattern ]]; then
        kill "$listener" 2>/dev/null
        wait "$listener" 2>/dev/null
        listener=
        if [ $# -gt 0 ]; then
            IMC_FROM=$name IMC_TEXT=$text "$@"
            exit
        fi
        printf '%s\n' "$text"
        exit 0
    fi
done

# The listener ended: its time is up (exit 0), or it failed.
wait "$listener"
status=$?
listener=
if [ "$status" -eq 0 ]; then
    echo "wait-for: no message from $name matching /$pattern/ within ${timeout}s" >&2
    exit 4
fi
exit "$status"
