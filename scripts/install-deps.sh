#!/usr/bin/env bash
# Installs what berth needs on Debian 12 to run and to be tested. Idempotent.
#
# Runtime: runc, crun (what berth's own shim runs by default), containerd-shim-runc-v2 (from
# Debian's containerd package; berth never starts the containerd daemon itself), CNI plugins,
# iptables, iproute2.
# Build: protobuf-compiler (the CRI protos are compiled at build time), pkg-config, gcc;
# libseccomp-dev for the current runc scripts/install-runc.sh builds.
# Tests: docker-registry (started by the tests on 127.0.0.1 only), busybox-static (test images),
# apache2-utils (htpasswd for the auth tests), openssl (certificates for the streaming TLS test),
# curl and netcat-openbsd (in the node e2e suite's images, as upstream's agnhost has them).
# prometheus (its daemon started by the metrics tests, on 127.0.0.1 only, never as a service).
# Images: umoci and skopeo build and move the DaemonSet image (scripts/build-deploy-image.sh).
set -euo pipefail

PACKAGES=(runc crun runsc containerd containernetworking-plugins iptables iproute2 util-linux
          protobuf-compiler pkg-config gcc libc6-dev
          docker-registry busybox-static apache2-utils openssl curl netcat-openbsd ca-certificates
          umoci skopeo libseccomp-dev prometheus)

[ "$(id -u)" = 0 ] || { echo "install-deps.sh: run as root" >&2; exit 1; }

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}" >&2
    # Packages must not start their daemons: docker-registry would listen on :5000 on every
    # interface and containerd on /run/containerd. A policy-rc.d forbids that while apt runs.
    added_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    trap '[ "$added_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# crun refuses a hybrid cgroup host (v1 controllers beside a cgroup2 hierarchy) that leaves
# any controller on the cgroup2 side ("drop all controllers from cgroupv2"). systemd's hybrid
# layout mounts every controller as v1; a host without systemd can leave one there (hugetlb
# on this project's CI machines). Each such controller is mounted as v1, as systemd would.
if [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = tmpfs ] && mountpoint -q /sys/fs/cgroup/unified; then
    for c in $(cat /sys/fs/cgroup/unified/cgroup.controllers); do
        mkdir -p "/sys/fs/cgroup/$c"
        if ! mountpoint -q "/sys/fs/cgroup/$c"; then
            mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" \
                || echo "install-deps: could not mount the $c controller as cgroup v1; crun will refuse this host" >&2
        fi
    done
fi

if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo is not on PATH; install a Rust toolchain (rustup) first" >&2
    exit 1
fi
