#!/usr/bin/env bash
# Kubernetes' node conformance suite (e2e_node, v1.34.4) against berth under both of its
# handlers and against containerd 2.4.2, one after the other on this machine, with the
# suite's images from a local registry; prints one table and the specs that fail on berth
# but pass on containerd. About 35 minutes a runtime on 2 cores.
#
#   scripts/node-e2e.sh                         # NodeConformance, all three runtimes
#   scripts/node-e2e.sh --runtime berth         # one runtime (repeatable)
#   scripts/node-e2e.sh --focus 'Density' --skip '\[Flaky\]'    # any other selection
#   scripts/node-e2e.sh --features              # the node features' specs (user namespaces,
#                                               # supplemental groups policy, in-place resize,
#                                               # recursive read-only mounts)
#   scripts/node-e2e.sh --node-features         # the [Feature:…] sets containerd's node CI
#                                               # runs (sidecars, image volumes, stop signals,
#                                               # RuntimeHandler, GC, …), Serial ones included
#
# Every option of `node-e2e` is passed on (see e2e/src/bin/node-e2e.rs). The specs that
# cannot pass on this machine whatever the runtime are skipped, with their reasons, from
# scripts/node-e2e-skips.txt; reports go to target/node-e2e/<runtime>/. Needs root; one run
# at a time (the suite's kubelet has a fixed root, ports and cgroups).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/install-kubelet.sh >/dev/null
scripts/install-containerd.sh >/dev/null
scripts/install-e2e-node.sh >/dev/null
scripts/install-runc.sh >/dev/null
if [ "${1:-}" = --node-features ]; then
    shift
    set -- --runtime berth --runtime containerd \
        --focus '\[Feature(Gate)?:(RuntimeHandler|SidecarContainers|ImageVolume|ContainerStopSignals|ProcMountType|GarbageCollect|ImageID|OOMScoreAdj|SeccompDefault|PodReadyToStartContainersCondition|ResourceMetrics)\]' \
        --skip '\[Flaky\]|\[Feature:(CPUManager|DevicePlugin|PodResourcesAPI)\]' \
        --feature-gates 'ImageVolume=true,ContainerStopSignals=true,ProcMountType=true' "$@"
fi
if [ "${1:-}" = --features ]; then
    shift
    set -- --runtime berth --runtime berth-runc --runtime containerd \
        --focus 'Security Context When creating a pod with HostUsers|SupplementalGroupsPolicy|Pod InPlace Resize Container|Mount recursive read-only' \
        --skip '\[Serial\]|\[Slow\]|\[Flaky\]' "$@"
fi
cargo build --release --locked -p berth -p berth-e2e --bin berth --bin node-e2e --bin cadvisor-standin
scripts/build-shim.sh release >/dev/null
BERTH_BIN="$PWD/target/release/berth" exec target/release/node-e2e \
    --skip-file scripts/node-e2e-skips.txt "$@"
