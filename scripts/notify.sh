#!/usr/bin/env bash
# notify.sh: send the output of a command (or stdin) to the chat, one
# message per line, with `imc send -`.
#
#   scripts/notify.sh cargo build        # the build log, then
#                                        # "cargo: finished (exit N)"
#   make 2>&1 | scripts/notify.sh        # the lines of stdin
#
# With a command: runs it (stdout and stderr both go to the chat), then
# sends "COMMAND: finished (exit N)" and exits with the command's status.
# If imc fails, exits with imc's status instead (see `imc --help`).
# Blank lines are skipped.
#
# Environment: IMC (the imc binary, default `imc` on PATH); IMC_HOST
# (or IMC_IP), IMC_PORT, IMC_NAME, IMC_TIMEOUT as for imc; NOTIFY_PREFIX, text put
# before each line (e.g. "[build] ").
set -u -o pipefail

IMC=${IMC:-imc}
prefix=${NOTIFY_PREFIX:-}

# Prefixes each line; a last line without "\n" is kept too.
add_prefix() {
    local line
    while IFS= read -r line || [ -n "$line" ]; do
        printf '%s%s\n' "$prefix" "$line"
    done
}

if [ $# -eq 0 ]; then
    add_prefix | "$IMC" send -
    exit
fi

"$@" 2>&1 | add_prefix | "$IMC" send -
statuses=("${PIPESTATUS[@]}")
command_status=${statuses[0]}
imc_status=${statuses[2]}
if [ "$imc_status" -ne 0 ]; then
    exit "$imc_status"
fi
"$IMC" send "${prefix}$(basename -- "$1"): finished (exit $command_status)" || exit
exit "$command_status"
