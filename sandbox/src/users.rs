//! Users and groups as the image defines them: `/etc/passwd` and `/etc/group` read from the
//! image's layers (topmost first, each resolved inside its own layer so a symlink cannot point
//! out of it), and the image's `User` or the CRI's `run_as_*` turned into uid, gid and groups
//! as containerd does.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where a container's supplementary groups come from (CRI `SupplementalGroupsPolicy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GroupsPolicy {
    /// The primary gid, the user's groups in the image's /etc/group, and the pod's
    /// supplemental groups (Kubernetes' default).
    #[default]
    Merge,
    /// The primary gid and the pod's supplemental groups only: the image cannot add any.
    Strict,
}

/// A user's ids.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ids {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Additional gids (the user's groups in the image, then supplemental groups).
    pub additional: Vec<u32>,
}

/// The image's account files.
#[derive(Debug, Clone, Default)]
pub struct Accounts {
    passwd: String,
    group: String,
}

/// Account files larger than this are refused: real ones are a few KiB.
pub const ACCOUNT_FILE_LIMIT: u64 = 4 << 20;

/// Reads `rel` from the first layer (topmost first) that has it, resolving it inside that
/// layer. A whiteout (the overlay character device 0/0) hides the file of the layers below.
/// The file must be a regular one of at most [`ACCOUNT_FILE_LIMIT`] bytes: an image can make
/// it anything, a FIFO included, and reading it must never block.
fn layer_file(layers: &[PathBuf], rel: &str) -> Result<Option<String>> {
    use crate::safefile::{ReadError, read_in_root};
    for l in layers {
        match read_in_root(l, rel, ACCOUNT_FILE_LIMIT) {
            Ok(bytes) => return Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Err(ReadError::Missing) => continue,
            Err(ReadError::NotRegular("character device")) if is_whiteout(&l.join(rel)) => {
                return Ok(None);
            }
            Err(e) => {
                return Err(Error::Invalid(format!(
                    "the image's /{rel} {e}; berth reads it only as a regular file"
                )));
            }
        }
    }
    Ok(None)
}

/// Whether `p` is an overlay whiteout (a character device with device number 0/0). Only
/// called on a path `read_in_root` found to be a character device inside its layer.
fn is_whiteout(p: &std::path::Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

impl Accounts {
    /// Reads the account files from the layer directories of a rootfs (topmost first).
    /// Blocking file I/O: call it off the async workers.
    pub fn from_layers(layers: &[PathBuf]) -> Result<Self> {
        Ok(Accounts {
            passwd: layer_file(layers, "etc/passwd")?.unwrap_or_default(),
            group: layer_file(layers, "etc/group")?.unwrap_or_default(),
        })
    }

    /// Reads the account files of the rootfs that snapshot `mounts` make up. Blocking file
    /// I/O: call it off the async workers.
    pub fn from_mounts(mounts: &[berth_image::snapshot::MountSpec]) -> Result<Self> {
        let tuples: Vec<(String, String, Vec<String>)> = mounts
            .iter()
            .map(|m| (m.kind.clone(), m.source.clone(), m.options.clone()))
            .collect();
        Self::from_layers(&layers_of(&tuples))
    }

    /// From file contents (tests).
    pub fn from_text(passwd: &str, group: &str) -> Self {
        Accounts {
            passwd: passwd.into(),
            group: group.into(),
        }
    }

    fn user_by<F: Fn(&[&str]) -> bool>(&self, f: F) -> Option<(String, u32, u32)> {
        self.passwd.lines().find_map(|l| {
            let p: Vec<&str> = l.split(':').collect();
            if p.len() >= 4 && f(&p) {
                Some((p[0].to_string(), p[2].parse().ok()?, p[3].parse().ok()?))
            } else {
                None
            }
        })
    }

    fn group_gid(&self, name: &str) -> Option<u32> {
        self.group.lines().find_map(|l| {
            let p: Vec<&str> = l.split(':').collect();
            (p.len() >= 3 && p[0] == name)
                .then(|| p[2].parse().ok())
                .flatten()
        })
    }

    /// The gids of the groups listing `user` as a member.
    fn member_of(&self, user: &str) -> Vec<u32> {
        self.group
            .lines()
            .filter_map(|l| {
                let p: Vec<&str> = l.split(':').collect();
                (p.len() >= 4 && p[3].split(',').any(|m| m.trim() == user))
                    .then(|| p[2].parse().ok())
                    .flatten()
            })
            .collect()
    }

    /// Resolves who the container runs as.
    ///
    /// * `run_as_username` or `run_as_user` (CRI) win over the image's `User`;
    /// * a uid without a passwd entry gets gid 0; a name without one is an error;
    /// * `run_as_group` replaces the primary gid (the agent refuses it without a user);
    /// * additional gids, sorted and each once, as containerd sets them: the primary gid,
    ///   the user's groups in the image's /etc/group (unless `policy` is
    ///   [`GroupsPolicy::Strict`]), and `supplemental`.
    pub fn resolve(
        &self,
        image_user: &str,
        run_as_user: Option<u32>,
        run_as_username: &str,
        run_as_group: Option<u32>,
        supplemental: &[u32],
        policy: GroupsPolicy,
    ) -> Result<Ids> {
        let (user_part, group_part) = match image_user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (image_user, None),
        };
        let (name, uid, mut gid) = if !run_as_username.is_empty() {
            self.user_by(|p| p[0] == run_as_username).ok_or_else(|| {
                Error::Invalid(format!(
                    "user {run_as_username:?} is not in the image's /etc/passwd"
                ))
            })?
        } else if let Some(uid) = run_as_user {
            let s = uid.to_string();
            self.user_by(|p| p[2] == s)
                .unwrap_or((String::new(), uid, 0))
        } else if user_part.is_empty() {
            self.user_by(|p| p[2] == "0")
                .unwrap_or(("root".into(), 0, 0))
        } else if let Ok(uid) = user_part.parse::<u32>() {
            let s = uid.to_string();
            self.user_by(|p| p[2] == s)
                .unwrap_or((String::new(), uid, 0))
        } else {
            self.user_by(|p| p[0] == user_part).ok_or_else(|| {
                Error::Invalid(format!(
                    "the image's user {user_part:?} is not in its /etc/passwd"
                ))
            })?
        };
        // The image's group applies only when the CRI did not name a user.
        if run_as_user.is_none()
            && run_as_username.is_empty()
            && let Some(g) = group_part
        {
            gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => self.group_gid(g).ok_or_else(|| {
                    Error::Invalid(format!("the image's group {g:?} is not in its /etc/group"))
                })?,
            };
        }
        if let Some(g) = run_as_group {
            gid = g;
        }
        let mut additional = vec![gid];
        if !name.is_empty() && policy == GroupsPolicy::Merge {
            additional.extend(self.member_of(&name));
        }
        additional.extend(supplemental);
        additional.sort_unstable();
        additional.dedup();
        Ok(Ids {
            uid,
            gid,
            additional,
        })
    }
}

/// The layer directories (topmost first) of a rootfs given as snapshot mounts.
pub fn layers_of(mounts: &[(String, String, Vec<String>)]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (kind, source, options) in mounts {
        if kind == "bind" {
            out.push(PathBuf::from(source));
        }
        for o in options {
            if let Some(u) = o.strip_prefix("upperdir=") {
                out.insert(0, PathBuf::from(u));
            }
            if let Some(l) = o.strip_prefix("lowerdir=") {
                out.extend(l.split(':').map(PathBuf::from));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/sh\ndefault-user:x:1000:1000::/home:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwww-data:x:33:\ngroup-defined-in-image:x:50000:default-user\nusers:x:100:a,default-user\n";

    #[test]
    fn resolution_follows_containerd() {
        let a = Accounts::from_text(PASSWD, GROUP);
        let r = |img: &str, u: Option<u32>, n: &str, g: Option<u32>| {
            a.resolve(img, u, n, g, &[], GroupsPolicy::Merge).unwrap()
        };
        assert_eq!(
            r("", None, "", None),
            Ids {
                uid: 0,
                gid: 0,
                additional: vec![0]
            }
        );
        assert_eq!(r("www-data", None, "", None).uid, 33);
        assert_eq!(
            r("1003:1004", None, "", None),
            Ids {
                uid: 1003,
                gid: 1004,
                additional: vec![1004]
            }
        );
        assert_eq!(r("www-data:1004", None, "", None).gid, 1004);
        assert_eq!(r("www-data:www-data", None, "", None).gid, 33);
        assert_eq!(
            r("", Some(1000), "", None).additional,
            vec![100, 1000, 50000]
        );
        assert_eq!(r("", Some(1000), "", None).gid, 1000);
        assert_eq!(
            r("", Some(4242), "", None),
            Ids {
                uid: 4242,
                gid: 0,
                additional: vec![0]
            }
        );
        assert_eq!(
            r("www-data", Some(1), "", Some(7)),
            Ids {
                uid: 1,
                gid: 7,
                additional: vec![7]
            }
        );
        assert_eq!(r("", None, "www-data", None).uid, 33);
        let merge = GroupsPolicy::Merge;
        assert!(
            a.resolve("", None, "nobody-here", None, &[], merge)
                .is_err()
        );
        assert!(a.resolve("ghost", None, "", None, &[], merge).is_err());
        // The primary gid, the image's groups and the pod's, sorted, each once (critest's
        // SupplementalGroupsPolicy specs compare `id -G` with exactly that).
        let s = a
            .resolve("", Some(1000), "", None, &[1234, 100, 5], merge)
            .unwrap();
        assert_eq!(s.additional, vec![5, 100, 1000, 1234, 50000]);
        let s = a
            .resolve("", Some(1000), "", None, &[1234], GroupsPolicy::Strict)
            .unwrap();
        assert_eq!(s.additional, vec![1000, 1234]);
    }

    #[test]
    fn files_are_read_inside_their_layer() {
        let d = tempfile::tempdir().unwrap();
        let top = d.path().join("top");
        let low = d.path().join("low");
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::create_dir_all(low.join("etc")).unwrap();
        std::fs::write(low.join("etc/passwd"), PASSWD).unwrap();
        // A hostile symlink in the top layer resolves inside that layer, not on the host.
        std::os::unix::fs::symlink("/etc/shadow", top.join("etc/group")).unwrap();
        let a = Accounts::from_layers(&[top.clone(), low.clone()]).unwrap();
        assert!(a.passwd.contains("www-data"));
        assert_eq!(a.group, "");

        // A whiteout in the top layer hides the file below it.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            top.join("etc/passwd"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )
        .unwrap();
        let a = Accounts::from_layers(&[top.clone(), low.clone()]).unwrap();
        assert_eq!(a.passwd, "");

        // A FIFO is refused at once (reading it would wait for a writer forever).
        std::fs::remove_file(top.join("etc/passwd")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            top.join("etc/passwd"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let e = Accounts::from_layers(&[top, low]).unwrap_err().to_string();
        assert!(e.contains("/etc/passwd is a FIFO"), "{e}");
        let mounts = vec![(
            "overlay".to_string(),
            "overlay".to_string(),
            vec!["lowerdir=/a:/b".to_string(), "upperdir=/u".to_string()],
        )];
        assert_eq!(
            layers_of(&mounts),
            vec![
                PathBuf::from("/u"),
                PathBuf::from("/a"),
                PathBuf::from("/b")
            ]
        );
    }
}
