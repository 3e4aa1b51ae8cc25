//! PortForward: a connection to a port on the pod's loopback.

use crate::error::{Error, Result};
use crate::runtime::Runtime;

impl Runtime {
    /// PortForward: connects to `port` on the pod's loopback (the host's, for a
    /// host-network pod). The pod must be ready.
    pub async fn port_forward(&self, id: &str, port: u16) -> Result<tokio::net::TcpStream> {
        let id = self.resolve(id)?;
        let rec = self.get(&id)?;
        if !rec.state.can_host_containers() {
            return Err(Error::Precondition(format!(
                "pod sandbox {id} is not ready; port forwarding needs a running pod"
            )));
        }
        berth_network::netns::connect_loopback(rec.netns.as_deref(), port)
            .await
            .map_err(|e| Error::io(format!("connect to port {port} in pod {id}"), e))
    }
}
