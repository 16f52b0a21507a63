#!/usr/bin/env bash
# The full test suite. Tests start their own redis-server, nats-server and
# Postgres (through tiercache-testkit) on free loopback ports; this script
# installs the binaries where they are missing, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need+=(postgresql)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# The loom models of the in-process concurrency (tiercache-core's cache/loom_tests.rs).
RUSTFLAGS="--cfg tiercache_loom" CARGO_TARGET_DIR=target/loom cargo test -p tiercache-core --release --lib loom_tests

cargo test --workspace --no-fail-fast "$@"
