#!/usr/bin/env bash
# Builds cri-tools' crictl and critest at a given version from the Go module proxy, into a
# cache directory, so that a second run costs nothing.
#
#   scripts/install-cri-tools.sh [VERSION]        # default v1.37.0 (the proxy here refuses
#                                                 # v1.26.1: 403)
#
# Prints the directory holding `crictl` and `critest`. The cache is
# $BERTH_TOOLS_CACHE (default /var/cache/berth-tools)/cri-tools-<version>; Go's own module
# and build caches are kept under it too. critest is cri-tools' test binary: `go test -c` of
# cmd/critest, built from a throwaway module that requires cri-tools at that version.
set -euo pipefail
. "$(dirname "$0")/go-tools.sh"

version="${1:-v1.37.0}"
out="$berth_tools_cache/cri-tools-$version"
go_tool_prepare install-cri-tools "$out" crictl critest
export GOFLAGS="-mod=mod"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
go mod init berth.invalid/cri-tools >/dev/null 2>&1
# A blank import of the commands' packages makes `go mod tidy` keep what they need.
cat > tools.go <<'EOF'
//go:build tools

package tools

import (
	_ "sigs.k8s.io/cri-tools/cmd/crictl"
	_ "sigs.k8s.io/cri-tools/cmd/critest"
)
EOF
echo "install-cri-tools: fetching sigs.k8s.io/cri-tools@$version" >&2
go get "sigs.k8s.io/cri-tools@$version" >&2
go mod tidy >&2
go build -o "$out/crictl" sigs.k8s.io/cri-tools/cmd/crictl
go test -c -o "$out/critest" sigs.k8s.io/cri-tools/cmd/critest
echo "$out"
