#!/usr/bin/env bash
# Builds cosign (github.com/sigstore/cosign/v2) from the Go module proxy into a cache
# directory, so that a second run costs nothing. The signed-image tests sign their images with
# it (keys made by cosign itself, no transparency log: nothing here reaches the internet).
#
#   scripts/install-cosign.sh [VERSION]      # default v2.6.5
#
# Prints the directory holding `cosign`.
set -euo pipefail
. "$(dirname "$0")/go-tools.sh"

version="${1:-v2.6.5}"
out="$berth_tools_cache/cosign-$version"
go_tool_prepare install-cosign "$out" cosign
echo "install-cosign: building github.com/sigstore/cosign/v2/cmd/cosign@$version" >&2
GOBIN="$out" GOFLAGS="-mod=mod" go install "github.com/sigstore/cosign/v2/cmd/cosign@$version" >&2
"$out/cosign" version >&2 || true
echo "$out"
