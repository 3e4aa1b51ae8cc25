#!/usr/bin/env bash
# Builds Kubernetes' node e2e suite (the test binary of k8s.io/kubernetes/test/e2e_node) and
# the ginkgo CLI of the version it uses, from the Go module proxy, into a cache directory, so
# that a second run costs nothing.
#
#   scripts/install-e2e-node.sh [VERSION]    # default v1.34.4, the kubelet's version
#
# Prints the directory holding `e2e_node.test`, `ginkgo` and `agnhost` (the suite's test
# server, static, for the images `berth-node-e2e` builds). Like install-kubelet.sh, it
# builds from a throwaway module that requires k8s.io/kubernetes and points each staging
# module at its published release; it shares the kubelet's Go build cache, so the packages
# the two have in common are built once.
set -euo pipefail
. "$(dirname "$0")/go-tools.sh"

version="${1:-v1.34.4}"
out="$berth_tools_cache/e2e-node-$version"
go_tool_prepare install-e2e-node "$out" e2e_node.test ginkgo agnhost
export GOFLAGS="-mod=mod"
staging="v0.${version#v1.}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
go mod init berth.invalid/e2e-node >/dev/null 2>&1

echo "install-e2e-node: reading k8s.io/kubernetes@$version's go.mod" >&2
gomod=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
[ -n "$gomod" ] || { echo "install-e2e-node: k8s.io/kubernetes@$version not served" >&2; exit 1; }
mods=$(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$gomod" | sort -u)
[ -n "$mods" ] || { echo "install-e2e-node: no staging replaces found in $gomod" >&2; exit 1; }
ginkgo=$(sed -n 's#^[[:space:]]*github.com/onsi/ginkgo/v2 \(v[0-9.]*\).*#\1#p' "$gomod" | head -1)
[ -n "$ginkgo" ] || { echo "install-e2e-node: no ginkgo version in $gomod" >&2; exit 1; }
go mod edit -require="k8s.io/kubernetes@$version"
for m in $mods; do
    go mod edit -replace="$m=$m@$staging"
done
cat > tools.go <<EOF
//go:build tools

package tools

import (
	_ "github.com/onsi/ginkgo/v2/ginkgo"
	_ "k8s.io/kubernetes/test/e2e_node"
	_ "k8s.io/kubernetes/test/images/agnhost"
)
EOF
go mod tidy >&2
# The ginkgo CLI must be the version the suite was built with.
go mod edit -require="github.com/onsi/ginkgo/v2@$ginkgo"
go mod tidy >&2
echo "install-e2e-node: building the node e2e suite $version and ginkgo $ginkgo" >&2
minor="${version#v1.}"
minor="${minor%%.*}"
v=k8s.io/component-base/version
go test -c -ldflags "-X $v.gitVersion=$version -X $v.gitMajor=1 -X $v.gitMinor=$minor" \
    -o "$out/e2e_node.test" k8s.io/kubernetes/test/e2e_node
go build -o "$out/ginkgo" github.com/onsi/ginkgo/v2/ginkgo
CGO_ENABLED=0 go build -o "$out/agnhost" k8s.io/kubernetes/test/images/agnhost
echo "$out"
