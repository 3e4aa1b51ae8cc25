#!/usr/bin/env bash
# Sets up this machine and runs berth in the foreground on its embedded defaults
# (socket /run/berth/berth.sock, root /var/lib/berth, state /run/berth).
# Extra arguments go to berth, e.g. --log-level debug or --config /etc/berth/config.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release -p berth
scripts/build-shim.sh release >/dev/null   # berth's own shim, the default handler's, beside berth
exec target/release/berth "$@"
