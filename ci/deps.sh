#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain: Debian's
# redis-server, for the cluster tests (tests/cluster.rs) and the fan-out
# bench's Redis test, and nats-server, for the fan-out bench's NATS test
# (tests/bench.rs). Installs only what is missing; does nothing when both
# are there.
set -euo pipefail
missing=()
for pkg in redis-server nats-server; do
    # Debian installs nats-server in /usr/sbin, which a non-root PATH may lack.
    command -v "$pkg" >/dev/null 2>&1 || [ -x "/usr/sbin/$pkg" ] || missing+=("$pkg")
done
if [ "${#missing[@]}" = 0 ]; then
    exit 0
fi
sudo=
if [ "$(id -u)" != 0 ]; then
    sudo=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${missing[@]}" >/dev/null
# The packages may start a system Redis on 6379 or NATS on 4222; the tests
# start their own on free ports and do not need them.
command -v redis-server
command -v nats-server || ls /usr/sbin/nats-server
