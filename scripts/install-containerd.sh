#!/usr/bin/env bash
# Builds containerd 2.x and its runc shim from the Go module proxy, into a cache directory,
# so that a second run costs nothing: the baseline users run today, beside Debian's 1.6.
#
#   scripts/install-containerd.sh [VERSION]     # default v2.4.2
#
# Prints the directory holding `containerd` and `containerd-shim-runc-v2`.
set -euo pipefail
. "$(dirname "$0")/go-tools.sh"

version="${1:-v2.4.2}"
out="$berth_tools_cache/containerd-$version"
go_tool_prepare install-containerd "$out" containerd containerd-shim-runc-v2
export GOBIN="$out"
echo "install-containerd: building containerd $version" >&2
go install "github.com/containerd/containerd/v2/cmd/containerd@$version" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$version" >&2
echo "$out"
