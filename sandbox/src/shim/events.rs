//! The events service shims publish to: `containerd.services.events.ttrpc.v1.Events/Forward`
//! on berth's ttrpc socket. Task events are decoded and broadcast to whoever tracks tasks, so
//! exits are learned as they happen, without polling.

use std::path::Path;
use std::sync::Arc;

use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim_async::{Events, create_events};
use containerd_shim_protos::{api, ttrpc};
use tokio::sync::broadcast;

use crate::error::{Error, Result};

/// A task event berth acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    /// `/tasks/exit`: a task's (or exec's) process exited.
    Exit {
        /// The container (task) id.
        container_id: String,
        /// The process id within the task (the task id itself for its init process).
        id: String,
        /// Its pid.
        pid: u32,
        /// Its exit status.
        exit_status: u32,
        /// When, in Unix nanoseconds.
        exited_at_ns: i64,
    },
    /// `/tasks/oom`: the task's cgroup hit its memory limit.
    Oom {
        /// The container id.
        container_id: String,
    },
    /// Any other topic (create, start, delete, exec-*), by name.
    Other {
        /// The topic.
        topic: String,
        /// The container id, where the event names one.
        container_id: String,
    },
}

/// Receives forwarded events and broadcasts them.
#[derive(Debug, Clone)]
pub struct EventHub {
    tx: broadcast::Sender<TaskEvent>,
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub {
            tx: broadcast::channel(1024).0,
        }
    }
}

impl EventHub {
    /// A new subscription; it sees events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.tx.subscribe()
    }

    fn decode(
        topic: &str,
        any: &containerd_shim_protos::protobuf::well_known_types::any::Any,
    ) -> Option<TaskEvent> {
        let v = &any.value;
        Some(match topic {
            "/tasks/exit" => {
                let e = ev::TaskExit::parse_from_bytes(v).ok()?;
                let at = e
                    .exited_at
                    .as_ref()
                    .map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
                    .unwrap_or(0);
                TaskEvent::Exit {
                    container_id: e.container_id,
                    id: e.id,
                    pid: e.pid,
                    exit_status: e.exit_status,
                    exited_at_ns: at,
                }
            }
            "/tasks/oom" => TaskEvent::Oom {
                container_id: ev::TaskOOM::parse_from_bytes(v).ok()?.container_id,
            },
            "/tasks/create" => TaskEvent::Other {
                topic: topic.into(),
                container_id: ev::TaskCreate::parse_from_bytes(v).ok()?.container_id,
            },
            "/tasks/start" => TaskEvent::Other {
                topic: topic.into(),
                container_id: ev::TaskStart::parse_from_bytes(v).ok()?.container_id,
            },
            "/tasks/delete" => TaskEvent::Other {
                topic: topic.into(),
                container_id: ev::TaskDelete::parse_from_bytes(v).ok()?.container_id,
            },
            _ => TaskEvent::Other {
                topic: topic.into(),
                container_id: String::new(),
            },
        })
    }
}

#[async_trait::async_trait]
impl Events for EventHub {
    async fn forward(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: api::ForwardRequest,
    ) -> ttrpc::Result<api::Empty> {
        if let Some(env) = req.envelope.as_ref() {
            match env
                .event
                .as_ref()
                .and_then(|any| Self::decode(&env.topic, any))
            {
                Some(e) => {
                    tracing::debug!(topic = env.topic, event = ?e, "shim event");
                    // No subscriber is fine: nobody tracks that task any more.
                    let _ = self.tx.send(e);
                }
                None => tracing::debug!(topic = env.topic, "undecodable shim event ignored"),
            }
        }
        Ok(api::Empty::new())
    }
}

/// Serves the events service on the unix socket `path` (replacing a stale one). Keep the
/// returned server alive for as long as events should be received.
pub async fn serve(path: &Path, hub: EventHub) -> Result<ttrpc::asynchronous::Server> {
    if path.exists() {
        std::fs::remove_file(path)
            .map_err(|e| Error::io(format!("remove stale {}", path.display()), e))?;
    }
    let service = create_events(Arc::new(hub));
    let mut server = ttrpc::asynchronous::Server::new()
        .bind(&format!("unix://{}", path.display()))
        .map_err(|e| {
            Error::io(
                format!("bind {}", path.display()),
                std::io::Error::other(e.to_string()),
            )
        })?
        .register_service(service);
    server.start().await.map_err(|e| {
        Error::io(
            format!("serve events on {}", path.display()),
            std::io::Error::other(e.to_string()),
        )
    })?;
    Ok(server)
}
