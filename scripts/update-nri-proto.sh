#!/usr/bin/env bash
# Takes NRI's api.proto from a release of the Go module github.com/containerd/nri (through the
# Go module proxy, into the tools cache) and puts it in nri/proto/, where nri/build.rs
# compiles it. Run it to move berth to a newer NRI; the build itself needs no Go.
#
#   scripts/update-nri-proto.sh [VERSION]     # default v0.12.3 (what containerd 2.4 speaks)
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-v0.12.3}"
command -v go >/dev/null || { echo "update-nri-proto: go is not on PATH" >&2; exit 1; }
cache="${BERTH_TOOLS_CACHE:-/var/cache/berth-tools}"
export GOPATH="$cache/go" GOCACHE="$cache/go-build" GOFLAGS="-mod=mod"
dir=$(go mod download -json "github.com/containerd/nri@$version" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
[ -n "$dir" ] || { echo "update-nri-proto: github.com/containerd/nri@$version not downloaded" >&2; exit 1; }
mkdir -p nri/proto
cp "$dir/pkg/api/api.proto" nri/proto/api.proto
chmod 644 nri/proto/api.proto
printf "%s" "$version" >nri/proto/VERSION
echo "update-nri-proto: nri/proto/api.proto from github.com/containerd/nri@$version"
