#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain: Debian's
# redis-server, for the cluster tests (tests/cluster.rs). Does nothing when
# it is already there.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi
sudo=
if [ "$(id -u)" != 0 ]; then
    sudo=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq redis-server >/dev/null
# The package may start a system Redis on 6379; the tests start their own
# on free ports and do not need it.
command -v redis-server
