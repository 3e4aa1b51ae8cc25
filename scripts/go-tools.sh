# Sourced by the scripts that build Go tools from the module proxy into a cache
# (install-kubelet.sh, install-cri-tools.sh, install-containerd.sh).
#
#   go_tool_prepare NAME OUT FILE...
#
# When every FILE is already built in OUT, prints OUT and ends the script: a second run costs
# nothing. Otherwise checks that Go is there, creates OUT and points Go's module and build
# caches into the cache directory ($BERTH_TOOLS_CACHE, default /var/cache/berth-tools), where
# the next build finds them.

berth_tools_cache="${BERTH_TOOLS_CACHE:-/var/cache/berth-tools}"

go_tool_prepare() {
    local name="$1" out="$2" f built=1
    shift 2
    for f in "$@"; do
        [ -x "$out/$f" ] || built=0
    done
    if [ "$built" = 1 ]; then
        echo "$out"
        exit 0
    fi
    command -v go >/dev/null || { echo "$name: go is not on PATH" >&2; exit 1; }
    export GOPATH="$berth_tools_cache/go"
    export GOCACHE="$berth_tools_cache/go-build"
    mkdir -p "$out" "$GOPATH" "$GOCACHE"
}
