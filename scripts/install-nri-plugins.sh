#!/usr/bin/env bash
# Builds the NRI plugins the tests run against berth:
#  - NRI's sample ulimit-adjuster, from the Go module proxy (github.com/containerd/nri's
#    plugins/ulimit-adjuster; v0.4.0 is the last release that carries the sample plugins in
#    the module the proxy serves), into the tools cache, so that a second run costs nothing;
#  - berth's own test plugin (e2e/nri-plugin, built on NRI's plugin stub v0.12.3, what
#    containerd 2.4 speaks), into target/.
#
#   scripts/install-nri-plugins.sh        # prints the two paths
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/go-tools.sh

version=v0.4.0
out="$berth_tools_cache/nri-plugins-$version"
command -v go >/dev/null || { echo "install-nri-plugins: go is not on PATH" >&2; exit 1; }
export GOPATH="$berth_tools_cache/go" GOCACHE="$berth_tools_cache/go-build" GOFLAGS="-mod=mod"
if [ ! -x "$out/ulimit-adjuster" ]; then
    mkdir -p "$out"
    echo "install-nri-plugins: building github.com/containerd/nri/plugins/ulimit-adjuster@$version" >&2
    # The module has a replace directive, so `go install` refuses it: built from a throwaway
    # module that requires it and repeats its replaces (read from its own go.mod).
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    gomod=$(go mod download -json "github.com/containerd/nri@$version" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
    [ -n "$gomod" ] || { echo "install-nri-plugins: github.com/containerd/nri@$version not served" >&2; exit 1; }
    (
        cd "$work"
        go mod init berth.invalid/nri-plugins >/dev/null 2>&1
        go mod edit -require="github.com/containerd/nri@$version"
        sed -n 's#^replace \([^ ]*\) \([^ ]*\) => \([^ ]*\) \([^ ]*\)$#\1@\2=\3@\4#p' "$gomod" |
            while read -r r; do go mod edit -replace="$r"; done
        printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/containerd/nri/plugins/ulimit-adjuster"\n' > tools.go
        go mod tidy >&2
        go build -o "$out/ulimit-adjuster" github.com/containerd/nri/plugins/ulimit-adjuster >&2
    )
fi
mkdir -p target
go build -C e2e/nri-plugin -o "$PWD/target/nri-test-plugin" . >&2
echo "$out/ulimit-adjuster"
echo "$PWD/target/nri-test-plugin"
