#!/usr/bin/env bash
# Builds a current runc from the Go module proxy, with seccomp, into a cache directory, so that
# a second run costs nothing. Debian 12's runc (1.1.5) and crun (1.8.1) have no `features`
# command, no recursive read-only mounts (`rro`) and no idmapped mounts, which user namespaces
# and KEP-3857 need; berth's `runc` handler and its own shim run this one where it is installed
# (see `runtime_path` / `BinaryName` in the handler's config).
#
#   scripts/install-runc.sh [VERSION]        # default v1.5.3 (the newest 1.x release served)
#
# Prints the directory holding `runc`. The cache is
# $BERTH_TOOLS_CACHE (default /var/cache/berth-tools)/runc-<version>. Needs libseccomp-dev
# (scripts/install-deps.sh installs it) and cgo.
set -euo pipefail
. "$(dirname "$0")/go-tools.sh"

version="${1:-v1.5.3}"
out="$berth_tools_cache/runc-$version"
go_tool_prepare install-runc "$out" runc
pkg-config --exists libseccomp || { echo "install-runc: libseccomp-dev is missing (scripts/install-deps.sh)" >&2; exit 1; }
echo "install-runc: building github.com/opencontainers/runc@$version" >&2
GOBIN="$out" CGO_ENABLED=1 go install -tags seccomp "github.com/opencontainers/runc@$version" >&2
"$out/runc" --version >&2
echo "$out"
