//! Several plugins may adjust one container; no two may adjust the same thing (an
//! annotation, a mount's destination, an environment variable, a device, a resource, …), as
//! NRI's ownership rules have it. [`Claims`] records who adjusted what and names both plugins
//! when a second one tries.

use std::collections::HashMap;

use crate::Error;
use crate::proto::api;

/// What has been adjusted, and by whom.
#[derive(Debug, Default)]
pub struct Claims {
    owners: HashMap<String, String>,
}

/// `key` without NRI's removal marker (a leading `-`), and whether it had one.
pub fn removal(key: &str) -> (&str, bool) {
    match key.strip_prefix('-') {
        Some(k) => (k, true),
        None => (key, false),
    }
}

impl Claims {
    fn claim(&mut self, ctr: &str, what: String, plugin: &str) -> Result<(), Error> {
        match self.owners.get(&what) {
            Some(other) if other != plugin => Err(Error::Conflict(format!(
                "plugins {other} and {plugin} both adjust {what} of container {ctr}"
            ))),
            _ => {
                self.owners.insert(what, plugin.to_string());
                Ok(())
            }
        }
    }

    /// Claims what `a` adjusts for `plugin`.
    pub fn adjustment(
        &mut self,
        ctr: &str,
        a: &api::ContainerAdjustment,
        plugin: &str,
    ) -> Result<(), Error> {
        for k in a.annotations.keys() {
            self.claim(ctr, format!("annotation {}", removal(k).0), plugin)?;
        }
        for m in &a.mounts {
            self.claim(ctr, format!("mount {}", removal(&m.destination).0), plugin)?;
        }
        for e in &a.env {
            self.claim(
                ctr,
                format!("environment variable {}", removal(&e.key).0),
                plugin,
            )?;
        }
        for r in &a.rlimits {
            self.claim(ctr, format!("rlimit {}", r.r#type), plugin)?;
        }
        for d in &a.cdi_devices {
            self.claim(ctr, format!("CDI device {}", d.name), plugin)?;
        }
        if !a.args.is_empty() {
            self.claim(ctr, "args".into(), plugin)?;
        }
        if let Some(l) = &a.linux {
            for d in &l.devices {
                self.claim(ctr, format!("device {}", removal(&d.path).0), plugin)?;
            }
            if let Some(r) = &l.resources {
                self.resources(ctr, "", r, plugin)?;
            }
            if !l.cgroups_path.is_empty() {
                self.claim(ctr, "cgroups path".into(), plugin)?;
            }
            if l.oom_score_adj.is_some() {
                self.claim(ctr, "oom_score_adj".into(), plugin)?;
            }
            for k in l.sysctl.keys() {
                self.claim(ctr, format!("sysctl {}", removal(k).0), plugin)?;
            }
        }
        Ok(())
    }

    /// Claims what an update changes, per container.
    pub fn update(&mut self, u: &api::ContainerUpdate, plugin: &str) -> Result<(), Error> {
        if let Some(r) = u.linux.as_ref().and_then(|l| l.resources.as_ref()) {
            self.resources(&u.container_id, "update of ", r, plugin)?;
        }
        Ok(())
    }

    fn resources(
        &mut self,
        ctr: &str,
        prefix: &str,
        r: &api::LinuxResources,
        plugin: &str,
    ) -> Result<(), Error> {
        let mut fields: Vec<String> = vec![];
        if let Some(m) = &r.memory {
            for (set, name) in [
                (m.limit.is_some(), "memory limit"),
                (m.reservation.is_some(), "memory reservation"),
                (m.swap.is_some(), "memory swap limit"),
                (m.kernel.is_some(), "kernel memory limit"),
                (m.kernel_tcp.is_some(), "kernel TCP memory limit"),
                (m.swappiness.is_some(), "memory swappiness"),
                (m.disable_oom_killer.is_some(), "OOM killer"),
                (m.use_hierarchy.is_some(), "memory hierarchy"),
            ] {
                if set {
                    fields.push(name.into());
                }
            }
        }
        if let Some(c) = &r.cpu {
            for (set, name) in [
                (c.shares.is_some(), "CPU shares"),
                (c.quota.is_some(), "CPU quota"),
                (c.period.is_some(), "CPU period"),
                (c.realtime_runtime.is_some(), "CPU realtime runtime"),
                (c.realtime_period.is_some(), "CPU realtime period"),
                (!c.cpus.is_empty(), "cpuset CPUs"),
                (!c.mems.is_empty(), "cpuset memory nodes"),
            ] {
                if set {
                    fields.push(name.into());
                }
            }
        }
        if r.pids.is_some() {
            fields.push("pids limit".into());
        }
        for h in &r.hugepage_limits {
            fields.push(format!("hugepage limit {}", h.page_size));
        }
        for k in r.unified.keys() {
            fields.push(format!("cgroup v2 {k}"));
        }
        if r.blockio_class.is_some() {
            fields.push("block I/O class".into());
        }
        if r.rdt_class.is_some() {
            fields.push("RDT class".into());
        }
        for f in fields {
            self.claim(ctr, format!("{prefix}{f}"), plugin)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_plugin_may_not_adjust_what_a_first_did() {
        let env = |k: &str| api::ContainerAdjustment {
            env: vec![api::KeyValue {
                key: k.into(),
                value: "1".into(),
            }],
            ..Default::default()
        };
        let mut c = Claims::default();
        c.adjustment("c1", &env("A"), "10-a").unwrap();
        c.adjustment("c1", &env("B"), "20-b").unwrap();
        // A removal claims the variable too.
        let e = c.adjustment("c1", &env("-A"), "20-b").unwrap_err();
        assert_eq!(
            e.to_string(),
            "NRI: plugins 10-a and 20-b both adjust environment variable A of container c1"
        );
        // The same plugin may touch what it claimed (in another answer).
        c.adjustment("c1", &env("A"), "10-a").unwrap();

        let mem = |limit| api::ContainerUpdate {
            container_id: "c2".into(),
            linux: Some(api::LinuxContainerUpdate {
                resources: Some(api::LinuxResources {
                    memory: Some(api::LinuxMemory {
                        limit: Some(api::OptionalInt64 { value: limit }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
            ignore_failure: false,
        };
        c.update(&mem(1 << 20), "10-a").unwrap();
        assert!(c.update(&mem(2 << 20), "20-b").is_err());
    }
}
