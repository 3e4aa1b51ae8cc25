//! One connected plugin: its registration, configuration and synchronization, and the calls
//! berth makes to it, each bounded by the request timeout.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;

use crate::proto::api;
use crate::wire::{self, CallError, Client, Mux, code};
use crate::{Host, Timeouts};

const PLUGIN_SERVICE: &str = "nri.pkg.api.v1alpha1.Plugin";

/// A registered, configured plugin.
pub(crate) struct Plugin {
    pub idx: String,
    pub base: String,
    /// The events it subscribed to: bit `e - 1` for event `e`.
    events: u32,
    client: Client,
    mux: Arc<Mux>,
    /// A plugin berth started from the plugin directory (killed when dropped).
    child: Mutex<Option<tokio::process::Child>>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plugin {}", self.name())
    }
}

/// Every event NRI defines (`Event_LAST` is one past the last).
pub(crate) const VALID_EVENTS: u32 = (1 << (api::Event::Last as u32 - 1)) - 1;

impl Plugin {
    pub fn name(&self) -> String {
        format!("{}-{}", self.idx, self.base)
    }

    /// The events it subscribed to, as a mask.
    pub fn events(&self) -> u32 {
        self.events
    }

    pub fn subscribed(&self, e: api::Event) -> bool {
        let bit = e as u32;
        bit > 0 && self.events & (1 << (bit - 1)) != 0
    }

    pub fn is_closed(&self) -> bool {
        self.mux.is_closed()
    }

    pub async fn closed(&self) {
        self.mux.closed().await
    }

    /// Closes the connection (and ends a plugin berth started).
    pub fn close(&self) {
        self.mux.close();
        if let Some(mut c) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = c.start_kill();
            // Reaped off this thread: it is gone in a moment.
            tokio::spawn(async move {
                let _ = c.wait().await;
            });
        }
    }

    /// Connects to a plugin on `stream`: waits for it to register (a plugin berth started
    /// must register as the name it was started under), then configures it with `config`.
    pub async fn connect(
        stream: tokio::net::UnixStream,
        launched: Option<(String, String, tokio::process::Child)>,
        config: impl FnOnce(&str, &str) -> String,
        host: Arc<dyn Host>,
        t: &Timeouts,
    ) -> Result<Plugin, String> {
        let (mux, plugin_in, runtime_in) = Mux::start(stream);
        let client = Client::start(mux.clone(), plugin_in);
        let (reg_tx, reg_rx) = tokio::sync::oneshot::channel::<(String, String)>();
        let reg_tx = Arc::new(Mutex::new(Some(reg_tx)));
        wire::serve(mux.clone(), runtime_in, move |method, payload: Bytes| {
            let (reg_tx, host) = (reg_tx.clone(), host.clone());
            async move {
                match method.as_str() {
                    "RegisterPlugin" => {
                        let req = api::RegisterPluginRequest::decode(payload)
                            .map_err(|e| (code::INVALID_ARGUMENT, e.to_string()))?;
                        check_index(&req.plugin_idx)
                            .and_then(|()| check_name(&req.plugin_name))
                            .map_err(|e| (code::INVALID_ARGUMENT, e))?;
                        let tx = reg_tx.lock().unwrap_or_else(|p| p.into_inner()).take();
                        match tx {
                            Some(tx) => {
                                let _ = tx.send((req.plugin_idx, req.plugin_name));
                                Ok(api::Empty {}.encode_to_vec())
                            }
                            None => Err((code::INVALID_ARGUMENT, "already registered".into())),
                        }
                    }
                    "UpdateContainers" => {
                        let req = api::UpdateContainersRequest::decode(payload)
                            .map_err(|e| (code::INVALID_ARGUMENT, e.to_string()))?;
                        if !req.evict.is_empty() {
                            tracing::warn!(
                                containers = req.evict.len(),
                                "an NRI plugin asked for evictions, which berth does not do"
                            );
                        }
                        let failed = host.update(req.update).await;
                        Ok(api::UpdateContainersResponse { failed }.encode_to_vec())
                    }
                    m => Err((code::UNIMPLEMENTED, format!("method {m} is not served"))),
                }
            }
        });
        let registered = tokio::select! {
            r = tokio::time::timeout(t.registration, reg_rx) => match r {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => { mux.close(); return Err("the connection closed before it registered".into()) }
                Err(_) => { mux.close(); return Err(format!("it did not register within {:?}", t.registration)) }
            },
            _ = mux.closed() => return Err("the connection closed before it registered".into()),
        };
        let (idx, base, child) = match launched {
            Some((idx, base, child)) => (idx, base, Some(child)),
            None => (registered.0, registered.1, None),
        };
        let mut p = Plugin {
            idx,
            base,
            events: 0,
            client,
            mux,
            child: Mutex::new(child),
        };
        let req = api::ConfigureRequest {
            config: config(&p.idx, &p.base),
            runtime_name: "berth".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            registration_timeout: t.registration.as_millis() as i64,
            request_timeout: t.request.as_millis() as i64,
            nri_version: crate::NRI_VERSION.into(),
        };
        let rpl: api::ConfigureResponse = match p.call("Configure", &req, t.request).await {
            Ok(r) => r,
            Err(e) => {
                p.close();
                return Err(format!("Configure: {e}"));
            }
        };
        let events = rpl.events as u32;
        if events & !VALID_EVENTS != 0 {
            p.close();
            return Err(format!(
                "it subscribed to unknown events (mask {events:#x})"
            ));
        }
        p.events = if events == 0 { VALID_EVENTS } else { events };
        Ok(p)
    }

    /// Calls `method` of the plugin's service.
    pub async fn call<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        method: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        self.client.call(PLUGIN_SERVICE, method, req, timeout).await
    }

    /// Synchronizes the plugin with every pod and container, in as many messages as their
    /// size needs; returns the updates it asks for.
    pub async fn synchronize(
        &self,
        pods: Vec<api::PodSandbox>,
        containers: Vec<api::Container>,
        timeout: Duration,
    ) -> Result<Vec<api::ContainerUpdate>, CallError> {
        let whole = api::SynchronizeRequest {
            pods,
            containers,
            more: false,
        };
        if whole.encoded_len() < wire::MAX_MESSAGE - 4096 {
            let rpl: api::SynchronizeResponse = self.call("Synchronize", &whole, timeout).await?;
            return Ok(rpl.update);
        }
        // Split: each message holds a share of both lists; only the last says `more: false`
        // and only its answer may carry updates, as NRI's protocol has it.
        let parts = whole.encoded_len() / (wire::MAX_MESSAGE / 2) + 1;
        let (pods, containers) = (whole.pods, whole.containers);
        let (pp, cp) = (pods.len().div_ceil(parts), containers.len().div_ceil(parts));
        let mut pods = pods.into_iter();
        let mut containers = containers.into_iter();
        for i in 0..parts {
            let req = api::SynchronizeRequest {
                pods: pods.by_ref().take(pp.max(1)).collect(),
                containers: containers.by_ref().take(cp.max(1)).collect(),
                more: i + 1 < parts,
            };
            let rpl: api::SynchronizeResponse = self.call("Synchronize", &req, timeout).await?;
            if !req.more {
                return Ok(rpl.update);
            }
            if !rpl.update.is_empty() || !rpl.more {
                return Err(CallError::Protocol(
                    "the plugin does not handle a Synchronize in parts".into(),
                ));
            }
        }
        Ok(vec![])
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.close();
    }
}

fn check_index(idx: &str) -> Result<(), String> {
    if idx.len() == 2 && idx.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!("plugin index {idx:?} is not two digits"))
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err(format!("plugin name {name:?}: 1 to 128 characters"));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+')))
    {
        Some(c) => Err(format!("plugin name {name:?} holds {c:?}")),
        None => Ok(()),
    }
}

/// `NN-name` of a plugin file: its index and name.
pub(crate) fn parse_file_name(file: &str) -> Result<(String, String), String> {
    let (idx, base) = file
        .split_once('-')
        .ok_or_else(|| format!("{file:?} is not <index>-<name>"))?;
    check_index(idx)?;
    check_name(base)?;
    Ok((idx.into(), base.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_indices() {
        assert_eq!(
            parse_file_name("10-logger"),
            Ok(("10".into(), "logger".into()))
        );
        assert!(parse_file_name("1-x").is_err());
        assert!(parse_file_name("ab-x").is_err());
        assert!(parse_file_name("10-a/b").is_err());
        assert!(parse_file_name("logger").is_err());
        assert_eq!(VALID_EVENTS, (1 << 14) - 1);
        let _ = code::DEADLINE_EXCEEDED;
    }
}

#[cfg(test)]
mod hostile {
    //! A plugin's side of the connection is hostile: frames and messages over their limits,
    //! bytes that decode to nothing, or silence end the connection promptly, never with a
    //! panic or an allocation of what the peer claims.

    use super::*;
    use tokio::io::AsyncWriteExt;

    struct NoHost;

    impl Host for NoHost {
        fn snapshot(&self) -> (Vec<api::PodSandbox>, Vec<api::Container>) {
            (vec![], vec![])
        }
        fn update(
            &self,
            updates: Vec<api::ContainerUpdate>,
        ) -> std::pin::Pin<Box<dyn Future<Output = Vec<api::ContainerUpdate>> + Send + '_>>
        {
            Box::pin(async move { updates })
        }
    }

    /// Connects berth's side to a peer that writes `bytes`; returns what connect said.
    async fn connect_to(bytes: Vec<u8>) -> Result<Plugin, String> {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let t = Timeouts {
            registration: Duration::from_millis(300),
            request: Duration::from_millis(300),
        };
        let writer = tokio::spawn(async move {
            let _ = theirs.write_all(&bytes).await;
            // Kept open: berth must not wait for the peer to close.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let r = Plugin::connect(ours, None, |_, _| String::new(), Arc::new(NoHost), &t).await;
        writer.abort();
        r
    }

    fn frame(conn: u32, len: u32, body: &[u8]) -> Vec<u8> {
        let mut f = conn.to_be_bytes().to_vec();
        f.extend_from_slice(&len.to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    #[tokio::test]
    async fn hostile_peers_are_refused_promptly() {
        let ttrpc_header = |len: u32, stream: u32, kind: u8| {
            let mut h = len.to_be_bytes().to_vec();
            h.extend_from_slice(&stream.to_be_bytes());
            h.extend_from_slice(&[kind, 0]);
            h
        };
        // (what, bytes, whether berth closes at once rather than waiting out registration)
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("a frame claiming 4 GiB", frame(2, u32::MAX, b""), true),
            (
                "a ttrpc message claiming 4 GiB",
                frame(2, 10, &ttrpc_header(u32::MAX, 1, 1)),
                true,
            ),
            (
                "a request that does not decode",
                frame(
                    2,
                    13,
                    &[ttrpc_header(3, 1, 1), vec![0xff, 0xff, 0xff]].concat(),
                ),
                true,
            ),
            ("garbage", (0..=255u8).cycle().take(10_000).collect(), true),
            ("silence", vec![], false),
        ];
        for (what, bytes, at_once) in cases {
            let e = connect_to(bytes).await.map(drop).unwrap_err();
            if at_once {
                assert_eq!(e, "the connection closed before it registered", "{what}");
            } else {
                assert_eq!(e, "it did not register within 300ms", "{what}");
            }
        }
    }
}
