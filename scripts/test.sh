#!/usr/bin/env bash
# Runs every check and test berth has: format, lints, unit tests beside the code, and the
# end-to-end tests (a real berth and a real registry on 127.0.0.1, driven over CRI, by crictl
# and by a real kubelet).
# Needs root (the tests unpack layers with their owners and device nodes, and later create
# namespaces and mounts).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# The real clients the e2e tests drive berth with: the kubelet (and kubectl, which the
# DaemonSet image ships) and crictl, built from the Go module proxy into a cache; a second
# run costs nothing.
echo "== tools: kubelet, kubectl, crictl"
scripts/install-kubelet.sh >/dev/null
scripts/install-cri-tools.sh >/dev/null
echo "== tools: berth-estargz (the upstream estargz package, for the lazy-pull tests)"
scripts/install-estargz.sh >/dev/null
echo "== tools: Kubernetes' node e2e suite (e2e_node.test, ginkgo, agnhost for its images)"
scripts/install-e2e-node.sh >/dev/null
echo "== tools: a current runc (user namespaces need idmapped mounts; Debian's runc 1.1.5 has none)"
scripts/install-runc.sh >/dev/null
echo "== tools: NRI plugins (NRI's sample ulimit-adjuster, berth's test plugin on NRI's stub)"
scripts/install-nri-plugins.sh >/dev/null
echo "== tools: cosign (signs the signed-image tests' images, offline)"
scripts/install-cosign.sh >/dev/null

# A CI run starts from a clean clone and builds everything once: incremental state would only
# cost disk (it was most of the target directory).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build"
cargo build --workspace --all-targets --locked
# berth's shim, statically linked, beside the berth under test (as a release install has it).
scripts/build-shim.sh debug >/dev/null
echo "== tests"
# e2e tests start their own berth processes and registries on ephemeral ports; two at a time
# keeps a 2-core machine responsive. One real Prometheus scrapes every berth they start, every
# second (suite-prometheus): a failed scrape of a berth that was meant to serve fails the run.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
target/debug/suite-prometheus --keep target/suite-scrape -- \
    env BERTH_BIN="$PWD/target/debug/berth" cargo test --workspace --all-targets --locked --no-fail-fast -- --test-threads 2 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
# The default handler is berth's own shim with crun. The lifecycle tests (restart, OOM, exec,
# attach, logs, stats, the kubelet's, lazily pulled layers) run once more under containerd's
# runc shim, which stays a supported handler.
echo "== e2e again under containerd's runc shim (BERTH_E2E_HANDLER=runc)"
target/debug/suite-prometheus --keep target/suite-scrape-runc -- \
    env BERTH_E2E_HANDLER=runc BERTH_BIN="$PWD/target/debug/berth" cargo test --locked --no-fail-fast -p berth-e2e \
    --test containers --test streaming --test pods --test faults --test kubelet --test lazy -- --test-threads 2 2>&1 | tee -a "$log"
rc2=${PIPESTATUS[0]}
[ "$rc" = 0 ] && rc=$rc2
# Kubernetes' node conformance suite against berth, a real kubelet in API mode: the specs
# that take under 75 s each (217 of 236, about 12 minutes); the slow ones, both handlers
# and containerd's side run in scripts/node-e2e.sh. Any failure fails the run.
echo "== Kubernetes' node conformance suite (e2e_node v1.34.4), the CI subset"
BERTH_BIN="$PWD/target/debug/berth" target/debug/node-e2e --runtime berth \
    --skip-file scripts/node-e2e-skips.txt --skip-file scripts/node-e2e-ci-skips.txt \
    --require-pass --report-dir target/node-e2e-ci 2>&1 | tee -a "$log"
rc3=${PIPESTATUS[0]}
[ "$rc" = 0 ] && rc=$rc3
# The node features' specs, where the kubelet drives them through its API server: pods with
# hostUsers: false, both supplemental-groups policies, in-place resize, recursive read-only
# mounts (about 4 minutes a handler), under the default handler (crun, whose binds berth
# idmaps) and the runc one (the current runc, which idmaps them itself).
echo "== Kubernetes' node e2e: user namespaces, supplemental groups policy, in-place resize, rro"
BERTH_BIN="$PWD/target/debug/berth" target/debug/node-e2e --runtime berth --runtime berth-runc \
    --focus 'Security Context When creating a pod with HostUsers|SupplementalGroupsPolicy|Pod InPlace Resize Container|Mount recursive read-only' \
    --skip '\[Serial\]|\[Slow\]|\[Flaky\]' --skip-file scripts/node-e2e-skips.txt \
    --require-pass --report-dir target/node-e2e-features 2>&1 | tee -a "$log"
rc4=${PIPESTATUS[0]}
[ "$rc" = 0 ] && rc=$rc4
set -e
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
node=$(grep -Eo '^node-e2e: berth: [0-9]+ passed, [0-9]+ failed' "$log" | head -1)
features=$(grep -Eo '^node-e2e: berth(-runc)?: [0-9]+ passed, [0-9]+ failed' "$log" | tail -n +2 |
    sed 's/^node-e2e: //' | paste -sd ';' | sed 's/;/, /g')
scrapes=$(grep -Eo '^suite-prometheus: [0-9]+ berths, [0-9]+ scrapes, [0-9]+ failed' "$log" | awk '{b+=$2; s+=$4; f+=$6} END {if (s) print b " berths, " s " scrapes, " f " failed"}')
echo
[ -n "$scrapes" ] && echo "prometheus: $scrapes"
echo "tests: $passed passed, $failed failed${node:+; ${node#node-e2e: }}${features:+; node features: $features}"
exit "$rc"
