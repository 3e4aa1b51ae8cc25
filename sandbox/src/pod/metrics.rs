//! ListPodSandboxMetrics: the metrics of [`crate::metrics`] for every ready pod (its network)
//! and each of its running containers.

use std::path::{Path, PathBuf};

use crate::container::{ContainerFilter, ContainerState};
use crate::metrics::{self, NetDev, Reading};
use crate::pod::{PodFilter, PodState};
use crate::runtime::Runtime;

/// One pod's metrics.
#[derive(Debug, Clone)]
pub struct PodMetrics {
    /// The sandbox id.
    pub pod_id: String,
    /// The pod's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its network interfaces (from the pause process's network namespace).
    pub network: Vec<NetDev>,
    /// Its running containers.
    pub containers: Vec<ContainerMetrics>,
}

/// One container's metrics.
#[derive(Debug, Clone)]
pub struct ContainerMetrics {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The image as the kubelet asked for it.
    pub image: String,
    /// (metric name, the labels it adds to the base ones, value).
    pub samples: Vec<(&'static str, Vec<String>, u64)>,
}

/// What is read of a container on the blocking thread.
struct Probe {
    cgroup: Option<String>,
    reading: Reading,
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Runtime {
    /// The metrics of every ready pod and its running containers. A pod or container that
    /// goes away meanwhile is reported with what could be read of it, or left out.
    pub async fn pod_metrics(&self) -> Vec<PodMetrics> {
        let pods = self.list(&PodFilter {
            state: Some(PodState::Ready),
            ..Default::default()
        });
        let mut out = Vec::new();
        let mut probes: Vec<(u32, Vec<Probe>)> = Vec::new();
        for p in &pods {
            let ctrs = self.list_containers(&ContainerFilter {
                pod_id: Some(p.id.clone()),
                state: Some(ContainerState::Running),
                ..Default::default()
            });
            let mut containers = Vec::new();
            let mut pod_probes = Vec::new();
            for c in ctrs {
                // The writable layer's size, measured at most once per TTL (shared with
                // ContainerStats).
                let (layer, layer_inodes) =
                    self.writable_layer_usage(&c.id).await.unwrap_or((0, 0));
                let r = &c.config.resources;
                let positive = |v: i64| u64::try_from(v).unwrap_or(0);
                pod_probes.push(Probe {
                    cgroup: c.cgroups_path().map(str::to_string),
                    reading: Reading {
                        fs: metrics::Fs {
                            usage: layer,
                            inodes_used: layer_inodes,
                            ..Default::default()
                        },
                        limits: metrics::Limits {
                            cpu_period: positive(r.cpu_period),
                            cpu_shares: positive(r.cpu_shares),
                            memory: positive(r.memory_limit),
                            memory_swap: positive(r.memory_swap_limit),
                        },
                        started_s: positive(c.started_ns) / 1_000_000_000,
                        ..Default::default()
                    },
                });
                containers.push(ContainerMetrics {
                    id: c.id.clone(),
                    name: c.config.name.clone(),
                    image: c.config.image.clone(),
                    samples: Vec::new(),
                });
            }
            probes.push((p.pid, pod_probes));
            out.push(PodMetrics {
                pod_id: p.id.clone(),
                name: p.config.meta.name.clone(),
                namespace: p.config.meta.namespace.clone(),
                network: Vec::new(),
                containers,
            });
        }
        // Kernel files, a few per container and one per pod: on a blocking thread.
        let fs_dir = self.images().snapshots_dir();
        let read = tokio::task::spawn_blocking(move || read_all(&fs_dir, probes)).await;
        let Ok(read) = read else {
            return out;
        };
        for (pod, (network, samples)) in out.iter_mut().zip(read) {
            pod.network = network;
            for (c, s) in pod.containers.iter_mut().zip(samples) {
                c.samples = s;
            }
        }
        out
    }
}

/// Reads every pod's network and every container's cgroup, processes and filesystem.
#[allow(clippy::type_complexity)]
fn read_all(
    fs_dir: &Path,
    probes: Vec<(u32, Vec<Probe>)>,
) -> Vec<(Vec<NetDev>, Vec<Vec<(&'static str, Vec<String>, u64)>>)> {
    let cgroup_root = PathBuf::from("/sys/fs/cgroup");
    let proc_root = Path::new("/proc");
    let fs = metrics::filesystem(fs_dir);
    probes
        .into_iter()
        .map(|(pause, ctrs)| {
            let network = if pause > 0 {
                metrics::parse_net_dev(
                    &std::fs::read_to_string(format!("/proc/{pause}/net/dev")).unwrap_or_default(),
                )
            } else {
                Vec::new()
            };
            let samples = ctrs
                .into_iter()
                .map(|mut p| {
                    if let Some(cg) = &p.cgroup {
                        p.reading.cgroup =
                            metrics::read_cgroup(&cgroup_root, cg).unwrap_or_default();
                        let pids = metrics::cgroup_pids(&cgroup_root, cg);
                        p.reading.processes = metrics::processes(proc_root, &pids);
                    }
                    p.reading.fs = metrics::Fs {
                        usage: p.reading.fs.usage,
                        inodes_used: p.reading.fs.inodes_used,
                        ..fs
                    };
                    p.reading.now_s = now_s();
                    let mut s: Vec<(&'static str, Vec<String>, u64)> =
                        metrics::container_samples(&p.reading)
                            .into_iter()
                            .map(|(n, v)| (n, Vec::new(), v))
                            .collect();
                    if let Some(cg) = &p.cgroup {
                        for d in metrics::read_io(&cgroup_root, cg) {
                            let name = metrics::device_name(d.major, d.minor);
                            s.extend(metrics::device_samples(&d, &name));
                        }
                    }
                    s
                })
                .collect();
            (network, samples)
        })
        .collect()
}
