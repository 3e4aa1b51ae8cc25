//! The security settings pods and containers share: user and group ids, and seccomp.

use berth_cri_api::v1 as cri;
use berth_sandbox::container::Seccomp;
use tonic::Status;

use super::validate::invalid;

/// (run_as_user, run_as_group, supplemental groups).
pub(crate) type UserIds = (Option<u32>, Option<u32>, Vec<u32>);

/// run_as_user, run_as_group and supplemental groups as ids, for pods and containers alike.
pub(crate) fn user_ids(
    user: Option<&cri::Int64Value>,
    group: Option<&cri::Int64Value>,
    groups: &[i64],
) -> Result<UserIds, Status> {
    let id = |v: &cri::Int64Value, what: &str| {
        u32::try_from(v.value).map_err(|_| invalid(format!("{what} {} is out of range", v.value)))
    };
    Ok((
        user.map(|v| id(v, "run_as_user")).transpose()?,
        group.map(|v| id(v, "run_as_group")).transpose()?,
        groups
            .iter()
            .map(|g| {
                u32::try_from(*g)
                    .map_err(|_| invalid(format!("supplemental group {g} out of range")))
            })
            .collect::<Result<_, _>>()?,
    ))
}

/// A Localhost profile: its path (the sandbox runtime reads the file where it builds the
/// spec).
fn localhost(path: &str) -> Result<Seccomp, Status> {
    super::validate::absolute_path("seccomp localhost profile", path)?;
    Ok(Seccomp::Localhost(path.to_string()))
}

/// Seccomp from the CRI field, or else from the deprecated path form (pods and containers).
pub(crate) fn seccomp(field: Option<&cri::SecurityProfile>, path: &str) -> Result<Seccomp, Status> {
    use cri::security_profile::ProfileType as P;
    if let Some(p) = field {
        return match P::try_from(p.profile_type) {
            Ok(P::Unconfined) => Ok(Seccomp::Unconfined),
            Ok(P::RuntimeDefault) => Ok(Seccomp::RuntimeDefault),
            Ok(P::Localhost) => localhost(&p.localhost_ref),
            Err(_) => Err(invalid(format!(
                "unknown seccomp profile type {}",
                p.profile_type
            ))),
        };
    }
    match path {
        // containerd 1.6 leaves an unset profile unconfined.
        "" | "unconfined" => Ok(Seccomp::Unconfined),
        "runtime/default" | "docker/default" => Ok(Seccomp::RuntimeDefault),
        p if p.starts_with("localhost/") => localhost(&p["localhost/".len()..]),
        other => Err(invalid(format!(
            "seccomp profile {other:?} is not supported: use runtime/default, unconfined or localhost/<absolute path>"
        ))),
    }
}

fn id_mappings(m: &[cri::IdMapping]) -> Vec<berth_sandbox::userns::IdMapping> {
    m.iter()
        .map(|m| berth_sandbox::userns::IdMapping {
            container_id: m.container_id,
            host_id: m.host_id,
            size: m.length,
        })
        .collect()
}

/// The user namespace a pod or container asks for (`NamespaceOption.userns_options`): the
/// node's, or the pod's own with one uid and one gid mapping of the pod's root. `field` names
/// it in messages.
pub(crate) fn userns(
    opts: Option<&cri::UserNamespace>,
    field: &str,
) -> Result<berth_sandbox::userns::UsernsMode, Status> {
    use berth_sandbox::userns::{UserNamespace, UsernsMode};
    let Some(o) = opts else {
        return Ok(UsernsMode::Unset);
    };
    match cri::NamespaceMode::try_from(o.mode) {
        Ok(cri::NamespaceMode::Node) if o.uids.is_empty() && o.gids.is_empty() => {
            Ok(UsernsMode::Node)
        }
        Ok(cri::NamespaceMode::Node) => Err(invalid(format!(
            "{field}: mode NODE takes no uids or gids (mappings are for mode POD)"
        ))),
        Ok(cri::NamespaceMode::Pod) => {
            UserNamespace::new(&id_mappings(&o.uids), &id_mappings(&o.gids), field)
                .map(UsernsMode::Pod)
                .map_err(|e| invalid(e.to_string()))
        }
        Ok(m @ (cri::NamespaceMode::Container | cri::NamespaceMode::Target)) => {
            Err(invalid(format!(
                "{field}: mode {} is not supported for user namespaces (NODE or POD)",
                m.as_str_name()
            )))
        }
        Err(_) => Err(invalid(format!("{field}: unknown mode {}", o.mode))),
    }
}

/// A mount's id mappings (an idmapped mount, which the kubelet asks for in a pod with its own
/// user namespace): none, or one uid and one gid mapping as a pod's.
pub(crate) fn mount_idmap(
    mt: &cri::Mount,
    at: &str,
) -> Result<Option<berth_sandbox::userns::UserNamespace>, Status> {
    if mt.uid_mappings.is_empty() && mt.gid_mappings.is_empty() {
        return Ok(None);
    }
    berth_sandbox::userns::UserNamespace::new(
        &id_mappings(&mt.uid_mappings),
        &id_mappings(&mt.gid_mappings),
        &format!("mount at {at}"),
    )
    .map(Some)
    .map_err(|e| invalid(e.to_string()))
}
