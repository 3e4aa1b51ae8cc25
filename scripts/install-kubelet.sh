#!/usr/bin/env bash
# Builds the kubelet (and kubectl, which the DaemonSet image ships) of a given Kubernetes
# version from the Go module proxy, into a cache directory, so that a second run costs
# nothing.
#
#   scripts/install-kubelet.sh [VERSION]     # default v1.34.4 (1.35+ refuse cgroup v1 hosts
#                                            # unless told otherwise; 1.34 only warns)
#
# Prints the directory holding `kubelet` and `kubectl`. k8s.io/kubernetes replaces its staging modules
# (k8s.io/api, client-go, kubelet, cri-api, …) with directories of its own tree, so
# `go install` refuses it; this builds it from a throwaway module that requires it and
# points each staging module at its published release (v0.X.Y for vX.Y). The list of staging
# modules is read from the version's own go.mod.
set -euo pipefail
. "$(dirname "$0")/go-tools.sh"

version="${1:-v1.34.4}"
out="$berth_tools_cache/kubelet-$version"
go_tool_prepare install-kubelet "$out" kubelet kubectl
export GOFLAGS="-mod=mod"
staging="v0.${version#v1.}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
go mod init berth.invalid/kubelet >/dev/null 2>&1

echo "install-kubelet: reading k8s.io/kubernetes@$version's go.mod" >&2
gomod=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
[ -n "$gomod" ] || { echo "install-kubelet: k8s.io/kubernetes@$version not served" >&2; exit 1; }
mods=$(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$gomod" | sort -u)
[ -n "$mods" ] || { echo "install-kubelet: no staging replaces found in $gomod" >&2; exit 1; }
go mod edit -require="k8s.io/kubernetes@$version"
for m in $mods; do
    go mod edit -replace="$m=$m@$staging"
done
cat > tools.go <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
EOF
go mod tidy >&2
echo "install-kubelet: building kubelet and kubectl $version" >&2
# The version a release build stamps in (kubelet --version, the node's kubeletVersion).
minor="${version#v1.}"
minor="${minor%%.*}"
v=k8s.io/component-base/version
for cmd in kubelet kubectl; do
    go build -ldflags "-X $v.gitVersion=$version -X $v.gitMajor=1 -X $v.gitMinor=$minor" \
        -o "$out/$cmd" "k8s.io/kubernetes/cmd/$cmd"
done
echo "$out"
