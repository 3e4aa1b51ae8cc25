#!/usr/bin/env bash
# Runs critest (cri-tools v1.37.0, scripts/install-cri-tools.sh) against a private berth on
# the critest world (a local registry mirroring every image critest pulls, a certs.d tree and a
# CNI conflist: see shared/critest-world/README.md beside this checkout), and prints critest's
# summary. berth runs with the current runc first on its $PATH (scripts/install-runc.sh), as
# the e2e tests run it, and its NRI socket is given to critest (`-nri-socket`), so that the
# NRI specs run too.
#
#   scripts/critest.sh [HANDLER]       # default: berth's default handler (crun)
#
# $CRITEST_WORLD names the world's directory (default ../shared/critest-world); $BERTH_BIN the
# berth binary (default target/debug/berth); extra critest flags go in $CRITEST_FLAGS. The
# full log is kept in target/critest-<handler>.log, berth's in
# target/critest-<handler>-berth.log. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
handler="${1:-crun}"
world="${CRITEST_WORLD:-$(cd .. && pwd)/shared/critest-world}"
[ -x "$world/setup.sh" ] || { echo "critest.sh: no critest world at $world (set CRITEST_WORLD)" >&2; exit 1; }
berth="${BERTH_BIN:-$PWD/target/debug/berth}"
[ -x "$berth" ] || { echo "critest.sh: $berth is missing: cargo build -p berth first" >&2; exit 1; }
tools=$(scripts/install-cri-tools.sh)
runc_dir=$(scripts/install-runc.sh)
"$world/setup.sh" >/dev/null

dir=$(mktemp -d /tmp/berth-critest.XXXXXX)
# A pod in a user namespace must reach its root filesystem under berth's state directory.
chmod 0711 "$dir"
log="$PWD/target/critest-$handler.log"
mkdir -p target
berth_pid=
cleanup() {
    if [ -n "$berth_pid" ] && kill -0 "$berth_pid" 2>/dev/null; then
        # What critest left (it removes its own pods; a failed spec may not).
        "$tools/crictl" --runtime-endpoint "unix://$dir/berth.sock" rmp -fa >/dev/null 2>&1 || true
        kill "$berth_pid" 2>/dev/null || true
        wait "$berth_pid" 2>/dev/null || true
    fi
    cp "$dir/berth.log" "$PWD/target/critest-$handler-berth.log" 2>/dev/null || true
    # Only what this run mounted, deepest first.
    awk -v d="$dir" '$5 ~ "^"d {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$dir"
}
trap cleanup EXIT

cat > "$dir/config.toml" <<EOF
sandbox_image = "registry.k8s.io/pause:3.9"
[registry]
config_path = "$world/hosts.d"
[cni]
conf_dir = "$world/cni"
bin_dirs = ["/usr/lib/cni"]
[runtime]
default_handler = "$handler"
[cadvisor]
containerd_socket = ""
[nri]
socket_path = "$dir/nri.sock"
plugin_path = "$dir/nri-plugins"
plugin_config_path = "$dir/nri-conf.d"
EOF
PATH="$runc_dir:$PATH" "$berth" --config "$dir/config.toml" --root "$dir/root" --state "$dir/state" \
    --address "$dir/berth.sock" > "$dir/berth.log" 2>&1 &
berth_pid=$!
for _ in $(seq 100); do
    [ -S "$dir/berth.sock" ] && break
    sleep 0.1
done
[ -S "$dir/berth.sock" ] || { cat "$dir/berth.log" >&2; exit 1; }

set +e
# shellcheck disable=SC2086
"$tools/critest" --runtime-endpoint "unix://$dir/berth.sock" --image-endpoint "unix://$dir/berth.sock" \
    -nri-socket "$dir/nri.sock" --ginkgo.no-color ${CRITEST_FLAGS:-} > "$log" 2>&1
rc=$?
set -e
echo "critest ($handler): $(grep -E '^Ran [0-9]+ of [0-9]+ Specs' "$log" | tail -1)"
grep -E '^(SUCCESS|FAIL)! .*Passed' "$log" | tail -1 || true
grep -E '^\s*\[FAIL\]' "$log" | sed 's/^/  /' || true
echo "log: $log"
exit "$rc"
