#!/usr/bin/env bash
# Installs what the tests and CI need beyond the Rust toolchain, on a
# Debian-like machine, and only what is missing (it does nothing when all
# is there):
#
# - redis-server: the cluster tests (tests/cluster.rs) and the fan-out
#   bench's Redis test; redis-cli (Debian: redis-tools, which redis-server
#   pulls in): cluster tests that set up or read Redis keys directly;
# - nats-server: the fan-out bench's NATS test (tests/bench.rs);
# - python3: the pseudo-terminal driver of the REPL tests (tests/tty.rs,
#   tests/support/pty_drive.py) and ci/integration.sh's JSON checks;
# - the rustfmt and clippy components, for .ci/run (through rustup, when
#   the toolchain came from rustup; Debian's own toolchain gets the
#   rustfmt and rust-clippy packages).
set -euo pipefail

sudo=
if [ "$(id -u)" != 0 ]; then
    sudo=sudo
fi

# Debian installs nats-server in /usr/sbin, which a non-root PATH may lack.
have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]
}

packages=()
for tool in redis-server nats-server python3; do
    have "$tool" || packages+=("$tool")
done
have redis-cli || packages+=(redis-tools)

components=()
cargo fmt --version >/dev/null 2>&1 || components+=(rustfmt)
cargo clippy --version >/dev/null 2>&1 || components+=(clippy)
if [ "${#components[@]}" != 0 ]; then
    if command -v rustup >/dev/null 2>&1; then
        rustup component add "${components[@]}"
    else
        for c in "${components[@]}"; do
            case $c in
                rustfmt) packages+=(rustfmt) ;;
                clippy) packages+=(rust-clippy) ;;
            esac
        done
    fi
fi

if [ "${#packages[@]}" != 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
    # The packages may start a system Redis on 6379 or NATS on 4222; the
    # tests start their own and do not need them.
fi

for tool in redis-server redis-cli nats-server python3; do
    have "$tool" || {
        echo "ci/deps.sh: $tool is still missing" >&2
        exit 1
    }
done
cargo fmt --version >/dev/null
cargo clippy --version >/dev/null
