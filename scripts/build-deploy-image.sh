#!/usr/bin/env bash
# Builds the image deploy/daemonset.yaml runs (berth-deploy), with no container daemon:
# umoci assembles an OCI image layout, skopeo writes it out as an oci-archive tarball.
#
#   scripts/build-deploy-image.sh [--berth PATH] [--out DIR] [--tag TAG]
#
# The image holds:
#   /usr/local/bin/berth                    --berth (default target/release/berth)
#   /usr/local/bin/containerd-shim-berth-v1 berth's own shim, beside --berth
#   /usr/local/bin/containerd-shim-runc-v2  this machine's (Debian's containerd package);
#                                           `berth install` copies the shims beside berth
#   /usr/local/bin/kubectl                  scripts/install-kubelet.sh's build, to label the node
#   /usr/local/bin/berth-deploy             deploy/image/entrypoint.sh, the entrypoint
#   /bin/busybox                            Debian's static busybox: sh, nsenter, sleep, test
# and the shared libraries the dynamically linked ones need, as `ldd` lists them.
#
# Prints the layout reference (DIR/layout:TAG); DIR/berth-deploy-TAG.tar is the archive
# (`skopeo copy oci-archive:DIR/berth-deploy-TAG.tar docker://REGISTRY/berth/berth-deploy:TAG`).
set -euo pipefail
cd "$(dirname "$0")/.."

berth=target/release/berth
out=target/deploy-image
tag="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
while [ $# -gt 0 ]; do
    case "$1" in
        --berth) berth="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        *) echo "build-deploy-image: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "build-deploy-image: run as root (umoci keeps file owners)" >&2; exit 1; }
for t in umoci skopeo ldd; do
    command -v "$t" >/dev/null || { echo "build-deploy-image: $t missing (scripts/install-deps.sh)" >&2; exit 1; }
done
[ -x "$berth" ] || { echo "build-deploy-image: $berth missing (cargo build --release -p berth)" >&2; exit 1; }
kubectl="$(scripts/install-kubelet.sh)/kubectl"
shim=$(command -v containerd-shim-runc-v2) || { echo "build-deploy-image: containerd-shim-runc-v2 missing" >&2; exit 1; }
own_shim="$(dirname "$berth")/containerd-shim-berth-v1"
[ -x "$own_shim" ] || { echo "build-deploy-image: $own_shim missing (cargo build --release -p berth-shim)" >&2; exit 1; }

mkdir -p "$out"
out=$(cd "$out" && pwd)
layout="$out/layout"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$layout"
umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci unpack --image "$layout:$tag" "$work/bundle" >/dev/null
root="$work/bundle/rootfs"

mkdir -p "$root/bin" "$root/usr/local/bin" "$root/tmp" "$root/etc" "$root/host"
chmod 1777 "$root/tmp"
install -m 0755 /bin/busybox "$root/bin/busybox"
for applet in sh nsenter sleep test cat echo env ls mkdir; do
    ln -f "$root/bin/busybox" "$root/bin/$applet"
done
install -m 0755 "$berth" "$root/usr/local/bin/berth"
install -m 0755 "$shim" "$root/usr/local/bin/containerd-shim-runc-v2"
install -m 0755 "$own_shim" "$root/usr/local/bin/containerd-shim-berth-v1"
install -m 0755 "$kubectl" "$root/usr/local/bin/kubectl"
install -m 0755 deploy/image/entrypoint.sh "$root/usr/local/bin/berth-deploy"
echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"

# The libraries (and the loader) of every dynamically linked binary, at their own paths.
for bin in "$root/usr/local/bin/berth" "$root/usr/local/bin/containerd-shim-runc-v2" \
           "$root/usr/local/bin/containerd-shim-berth-v1" "$root/usr/local/bin/kubectl"; do
    # A static binary (berth's shim) has none: ldd and grep then fail, which is fine.
    { ldd "$bin" 2>/dev/null || true; } | { grep -Eo '/[^ ]+' || true; } | while read -r lib; do
        [ -e "$root$lib" ] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
done

umoci repack --image "$layout:$tag" "$work/bundle" >/dev/null
umoci config --image "$layout:$tag" \
    --config.entrypoint /usr/local/bin/berth-deploy \
    --config.env PATH=/usr/local/bin:/usr/bin:/bin \
    --config.label "org.opencontainers.image.title=berth-deploy" \
    --config.label "org.opencontainers.image.version=$tag" \
    --architecture amd64 --os linux
umoci gc --layout "$layout"
rm -f "$out/berth-deploy-$tag.tar"
skopeo copy --quiet "oci:$layout:$tag" "oci-archive:$out/berth-deploy-$tag.tar:berth/berth-deploy:$tag" >&2
echo "$layout:$tag"
