#!/usr/bin/env bash
# Builds containerd 2.x and its runc shim from the Go module proxy, into a cache directory,
# so that a second run costs nothing: the baseline users run today, beside Debian's 1.6.
#
#   scripts/install-containerd.sh [VERSION]     # default v2.4.2
#
# Prints the directory holding `containerd` and `containerd-shim-runc-v2`.
set -euo pipefail

version="${1:-v2.4.2}"
cache="${BERTH_TOOLS_CACHE:-/var/cache/berth-tools}"
out="$cache/containerd-$version"
if [ -x "$out/containerd" ] && [ -x "$out/containerd-shim-runc-v2" ]; then
    echo "$out"
    exit 0
fi
command -v go >/dev/null || { echo "install-containerd: go is not on PATH" >&2; exit 1; }

export GOPATH="$cache/go"
export GOCACHE="$cache/go-build"
export GOBIN="$out"
mkdir -p "$out" "$GOPATH" "$GOCACHE"
echo "install-containerd: building containerd $version" >&2
go install "github.com/containerd/containerd/v2/cmd/containerd@$version" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$version" >&2
echo "$out"
