//! Against Debian's real plugins in /usr/lib/cni, in a namespace and bridge of the test's own.

use std::process::Command;

use serde_json::Map;

use super::*;
use crate::netns::NetnsDir;

const PLUGINS: &str = "/usr/lib/cni";

/// Tests in this process share the host's iptables; the daemon's single `Cni` serialises its
/// own calls, and this does the same across the tests' separate instances.
static HOST_NET: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Removes the test's netns, bridge and directories even when the test fails.
struct World {
    dir: tempfile::TempDir,
    netns: NetnsDir,
    bridge: String,
    subnet: String,
    ns_name: String,
}

impl World {
    fn new(tag: u8) -> World {
        let dir = tempfile::tempdir().unwrap();
        let id = std::process::id() % 200;
        World {
            netns: NetnsDir::new(dir.path().join("netns")),
            bridge: format!("bt{id}x{tag}"),
            subnet: format!("10.{}.{id}.0/24", 200 + tag),
            ns_name: format!("cnitest-{id}-{tag}"),
            dir,
        }
    }

    fn conflist(&self, extra_plugin: Option<&str>) -> NetworkList {
        self.conflist_with(true, extra_plugin)
    }

    fn conflist_with(&self, portmap: bool, extra_plugin: Option<&str>) -> NetworkList {
        let mut plugins = vec![
            json!({"type": "bridge", "bridge": self.bridge, "isGateway": true, "ipMasq": false,
               "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]], "dataDir": self.dir.path().join("ipam")}}),
        ];
        if portmap {
            plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
        }
        if let Some(p) = extra_plugin {
            plugins.push(json!({"type": p}));
        }
        let text = serde_json::to_vec(
            &json!({"cniVersion": "1.0.0", "name": "berth-test", "plugins": plugins}),
        )
        .unwrap();
        NetworkList::parse(Path::new("test.conflist"), &text).unwrap()
    }

    fn cni(&self, extra_bin: Option<&Path>) -> Cni {
        let mut bin_dirs = vec![PathBuf::from(PLUGINS)];
        bin_dirs.extend(extra_bin.map(Path::to_path_buf));
        Cni::new(CniPaths {
            conf_dir: self.dir.path().join("net.d"),
            bin_dirs,
            cache_dir: self.dir.path().join("cache"),
            plugin_timeout: std::time::Duration::from_secs(30),
        })
    }

    fn attachment(&self, netns: &Path, port: u16) -> Attachment {
        let mut caps = Map::new();
        caps.insert("portMappings".into(), json!([{"hostPort": port, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}]));
        Attachment {
            container_id: format!("sandbox{}", self.ns_name.replace('-', "")),
            netns: netns.to_path_buf(),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), "default".into()),
                ("K8S_POD_NAME".into(), "p".into()),
            ],
            capabilities: caps,
        }
    }

    fn leases(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("ipam/berth-test"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("10."))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.netns.remove(&self.ns_name);
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
        crate::netns::unmount_dir_for_tests(&self.dir.path().join("netns"));
    }
}

fn nat_rules() -> String {
    String::from_utf8_lossy(
        &Command::new("iptables")
            .args(["-t", "nat", "-S"])
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default(),
    )
    .into_owned()
}

#[tokio::test]
async fn add_del_with_the_real_plugins() {
    let _host = HOST_NET.lock().await;
    let w = World::new(1);
    let ns = w.netns.create(&w.ns_name).unwrap();
    let cni = w.cni(None);
    let net = w.conflist(None);
    let a = w.attachment(&ns, 18_081);

    let res = cni.add(&net, &a).await.unwrap();
    let ip = res.ips.first().expect("an IP").ip().to_string();
    assert!(
        ip.starts_with(&w.subnet[..w.subnet.len() - 4]),
        "{ip} in {}",
        w.subnet
    );
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["ip", "-o", "addr", "show", "eth0"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&ip),
        "eth0 in the pod netns has {ip}"
    );
    assert_eq!(w.leases(), vec![ip.clone()]);
    assert!(
        nat_rules().contains(&a.container_id),
        "portmap rules carry the container id"
    );
    assert_eq!(cni.cached_result(&a).unwrap().ips, res.ips);

    cni.del(None, &a).await.unwrap();
    assert!(w.leases().is_empty(), "the lease is released");
    assert!(
        !nat_rules().contains(&a.container_id),
        "portmap rules removed"
    );
    assert!(cni.cached_result(&a).is_none());
    // DEL again, and DEL of something never added: both succeed.
    cni.del(Some(&net), &a).await.unwrap();
    cni.del(None, &a).await.unwrap();
}

#[tokio::test]
async fn a_failed_add_is_torn_down_and_reports_the_plugin_message() {
    let _host = HOST_NET.lock().await;
    let w = World::new(2);
    let ns = w.netns.create(&w.ns_name).unwrap();
    let bin = w.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("failing");
    std::fs::write(
        &script,
        "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then echo '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"injected failure\",\"details\":\"asked to fail\"}'; exit 1; fi\nexit 0\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cni = w.cni(Some(&bin));
    let a = w.attachment(&ns, 18_082);
    let e = cni.add(&w.conflist(Some("failing")), &a).await.unwrap_err();
    assert!(
        e.to_string().contains("injected failure: asked to fail"),
        "{e}"
    );
    assert!(
        w.leases().is_empty(),
        "bridge's lease was released by the rollback DEL"
    );
    assert!(!nat_rules().contains(&a.container_id));
    assert!(cni.cached_result(&a).is_none());

    let e = cni
        .add(&w.conflist(Some("absent-plugin")), &a)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::PluginNotFound { .. }), "{e}");
    assert!(w.leases().is_empty());
}

#[test]
fn config_files() {
    let d = tempfile::tempdir().unwrap();
    assert!(matches!(
        NetworkList::load_first(d.path()),
        Err(Error::NoNetwork(_))
    ));
    std::fs::write(
        d.path().join("99-b.conf"),
        r#"{"cniVersion":"0.3.1","name":"single","type":"bridge"}"#,
    )
    .unwrap();
    let n = NetworkList::load_first(d.path()).unwrap();
    assert_eq!(
        (n.name.as_str(), n.plugins.len(), n.has_check()),
        ("single", 1, false)
    );
    std::fs::write(
        d.path().join("10-a.conflist"),
        r#"{"cniVersion":"1.0.0","name":"list","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
    )
    .unwrap();
    assert_eq!(NetworkList::load_first(d.path()).unwrap().name, "list");
    for bad in [
        r#"{"name":"x","plugins":[{"type":"../evil"}]}"#,
        r#"{"plugins":[{"type":"b"}]}"#,
        r#"{"name":"x","plugins":[]}"#,
        "not json",
    ] {
        assert!(
            NetworkList::parse(Path::new("x"), bad.as_bytes()).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn hostile_attachments_are_refused() {
    let a = Attachment {
        container_id: "../x".into(),
        netns: "/x".into(),
        ifname: "eth0".into(),
        args: vec![],
        capabilities: Map::new(),
    };
    assert!(validate(&a).is_err());
    let a = Attachment {
        container_id: "ok".into(),
        netns: "/x".into(),
        ifname: "eth0".into(),
        args: vec![("K".into(), "v;INJECT=1".into())],
        capabilities: Map::new(),
    };
    assert!(validate(&a).is_err());
}

#[tokio::test]
async fn check_uses_the_cached_result() {
    // Without portmap: Debian's portmap 1.1.1 fails CHECK on hosts without IPv6 NAT chains.
    let _host = HOST_NET.lock().await;
    let w = World::new(3);
    let ns = w.netns.create(&w.ns_name).unwrap();
    let cni = w.cni(None);
    let a = w.attachment(&ns, 0);
    assert!(cni.check(&a).await.is_err(), "nothing to check before ADD");
    cni.add(&w.conflist_with(false, None), &a).await.unwrap();
    cni.check(&a).await.unwrap();
    // The interface is gone from under CNI: CHECK says so.
    let st = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["ip", "link", "del", "eth0"])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(cni.check(&a).await.is_err());
    cni.del(None, &a).await.unwrap();
    assert!(w.leases().is_empty());
}
