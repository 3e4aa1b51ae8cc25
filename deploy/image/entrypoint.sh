#!/bin/sh
# The berth-deploy image's entrypoint: what the DaemonSet's pod does on each node.
#
# 1. `berth install` onto the host root mounted at $BERTH_HOST_ROOT (default /host): the
#    binaries to /opt/berth/bin, /etc/berth/config.toml where there is none, the systemd unit.
# 2. Where the host runs systemd (seen through PID 1's mount namespace: the pod runs with
#    hostPID), reload it and (re)start berth.service.
# 3. Inside a cluster (NODE_NAME and the service account present), label the node.
# 4. Stay up, so the DaemonSet shows the node as done; exit on SIGTERM.
set -eu

host="${BERTH_HOST_ROOT:-/host}"

berth install --host-root "$host"

if nsenter --target 1 --mount -- test -d /run/systemd/system 2>/dev/null; then
    nsenter --target 1 --mount -- systemctl daemon-reload
    nsenter --target 1 --mount -- systemctl enable berth.service
    nsenter --target 1 --mount -- systemctl restart berth.service
else
    echo "berth-deploy: the host does not run systemd; start $host/opt/berth/bin/berth yourself" >&2
fi

if [ -n "${NODE_NAME:-}" ] && [ -n "${KUBERNETES_SERVICE_HOST:-}" ]; then
    # shellcheck disable=SC2046 # one label per word
    kubectl label node "$NODE_NAME" --overwrite $(berth install --host-root "$host" --print-labels)
fi

echo "berth-deploy: berth is installed on this node"
trap 'exit 0' TERM INT
while :; do
    sleep 3600 &
    wait $! || true
done
