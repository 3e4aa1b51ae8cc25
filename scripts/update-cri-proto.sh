#!/usr/bin/env bash
# Takes the CRI's api.proto from a release of the Go module k8s.io/cri-api (through the Go
# module proxy, into the tools cache) and puts it in cri-api/proto/, where cri-api/build.rs
# compiles it. Run it to move berth to a newer CRI; the build itself needs no Go.
#
#   scripts/update-cri-proto.sh [VERSION]     # default v0.37.0 (Kubernetes 1.37)
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-v0.37.0}"
command -v go >/dev/null || { echo "update-cri-proto: go is not on PATH" >&2; exit 1; }
cache="${BERTH_TOOLS_CACHE:-/var/cache/berth-tools}"
export GOPATH="$cache/go" GOCACHE="$cache/go-build" GOFLAGS="-mod=mod"
dir=$(go mod download -json "k8s.io/cri-api@$version" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
[ -n "$dir" ] || { echo "update-cri-proto: k8s.io/cri-api@$version not downloaded" >&2; exit 1; }
mkdir -p cri-api/proto
# Two Go-only options go: the gogoproto ones of older releases, and `debug_redact` (it keeps
# credentials out of Go's logs; Debian 12's protoc predates it, and berth never logs them).
grep -v 'gogoproto' "$dir/pkg/apis/runtime/v1/api.proto" |
    sed -e 's/ *\[debug_redact *= *true\]//' >cri-api/proto/api.proto
printf "%s" "$version" >cri-api/proto/VERSION
echo "update-cri-proto: cri-api/proto/api.proto from k8s.io/cri-api@$version"
