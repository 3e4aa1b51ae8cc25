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
