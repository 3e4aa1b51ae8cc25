#!/usr/bin/env bash
# Builds berth-estargz (scripts/estargz-build/main.go: berth's own few lines around the
# upstream estargz package, github.com/containerd/stargz-snapshotter/estargz, taken from the
# Go module proxy) into a cache directory, so that a second run costs nothing. The lazy-pull
# tests and benchmarks convert their layers with it.
#
#   scripts/install-estargz.sh [VERSION]          # default v0.19.1
#
# Prints the directory holding `berth-estargz`. The cache is $BERTH_TOOLS_CACHE (default
# /var/cache/berth-tools)/estargz-<version>-<hash of main.go>.
set -euo pipefail
. "$(dirname "$0")/go-tools.sh"

version="${1:-v0.19.1}"
src="$(cd "$(dirname "$0")" && pwd)/estargz-build/main.go"
sum=$(sha256sum "$src" | cut -c1-12)
out="$berth_tools_cache/estargz-$version-$sum"
go_tool_prepare install-estargz "$out" berth-estargz
export GOFLAGS="-mod=mod"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
go mod init berth.invalid/estargz-build >/dev/null 2>&1
cp "$src" main.go
echo "install-estargz: fetching github.com/containerd/stargz-snapshotter/estargz@$version" >&2
go get "github.com/containerd/stargz-snapshotter/estargz@$version" >&2
go mod tidy >&2
go build -o "$out/berth-estargz" .
echo "$out"
