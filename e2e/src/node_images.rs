//! The images Kubernetes' node e2e suite pulls (`registry.k8s.io/e2e-test-images/…` and the
//! pause image), built here for a machine without internet: the real `agnhost` (built from
//! its Go package by `scripts/install-e2e-node.sh`), Debian's static busybox, and small
//! stand-ins that behave as the suite expects of nginx, httpd, `nnp` and pause. They are
//! pushed to a local registry under their upstream repository paths, and a node reaches them
//! through a `certs.d` mirror of `registry.k8s.io`, as a node behind an air gap does: the
//! suite's image names are never changed.

use crate::image::{ImageBuilder, Layer};
use crate::registry::Registry;

/// The registry the suite's images come from.
pub const UPSTREAM: &str = "registry.k8s.io";

/// The sandbox image of the kubelet this suite goes with (v1.34).
pub const PAUSE: &str = "registry.k8s.io/pause:3.10.1";

/// `PATH` as the upstream images set it.
const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The pause process: sleeps until told to stop, reaping whatever it inherits, as
/// `registry.k8s.io/pause` does.
const PAUSE_C: &str = r#"#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("pause (berth's offline stand-in)");
        return 0;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = stop;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = reap;
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    for (;;) pause();
}
"#;

/// `nnp` of the `nonewprivs` image: installed setuid root, it tells which uid it runs as.
const NNP_C: &str = r#"#include <stdio.h>
#include <unistd.h>

int main(void) {
    printf("Effective uid: %d\n", (int)geteuid());
    return 0;
}
"#;

/// `ipcs -m` of the `ipc-utils` image, in util-linux's layout, from /proc/sysvipc/shm.
const IPCS_C: &str = r#"#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "-m") != 0) {
        fprintf(stderr, "usage: ipcs -m\n");
        return 1;
    }
    FILE *f = fopen("/proc/sysvipc/shm", "r");
    if (!f) { perror("/proc/sysvipc/shm"); return 1; }
    char line[512];
    printf("\n------ Shared Memory Segments --------\n");
    printf("key        shmid      owner      perms      bytes      nattch     status\n");
    if (!fgets(line, sizeof line, f)) { fclose(f); return 0; }
    while (fgets(line, sizeof line, f)) {
        int key, id; unsigned perms; unsigned long size, nattch; unsigned cpid, lpid, uid;
        if (sscanf(line, "%d %d %o %lu %u %u %lu %u", &key, &id, &perms, &size, &cpid, &lpid,
                   &nattch, &uid) != 8)
            continue;
        printf("0x%08x %-10d %-10u %-10o %-10lu %-10lu\n", (unsigned)key, id, uid, perms, size,
               nattch);
    }
    fclose(f);
    return 0;
}
"#;

/// What an Alpine-based upstream image says it is (the image-volume specs read it).
const ALPINE_OS_RELEASE: &str = "# berth's offline stand-in for an Alpine-based test image\n\
NAME=\"Alpine Linux\"\nID=alpine\nPRETTY_NAME=\"Alpine Linux (berth offline stand-in)\"\n";

/// What a Debian-based upstream image says it is.
const DEBIAN_OS_RELEASE: &str = "# berth's offline stand-in for a Debian-based test image\n\
NAME=\"Debian GNU/Linux\"\nID=debian\nPRETTY_NAME=\"Debian GNU/Linux (berth offline stand-in)\"\n";

/// A web server on port 80 for the nginx and httpd stand-ins: busybox httpd serving `root`,
/// stopped by SIGTERM, SIGINT or SIGQUIT as the real servers are (a shell as PID 1 ignores
/// signals it does not trap).
fn web_server(root: &str) -> String {
    format!(
        "#!/bin/sh\n# berth's offline stand-in: busybox httpd serving {root} on port 80.\n\
         trap 'kill $pid 2>/dev/null; exit 0' TERM INT QUIT\n\
         httpd -f -p 80 -h {root} &\npid=$!\nwait $pid\n"
    )
}

/// The busybox root the stand-ins share, with `/etc/os-release` saying `os_release`.
fn base(os_release: &str) -> anyhow::Result<Layer> {
    Ok(Layer::busybox_full()?.file("etc/os-release", os_release))
}

/// The agnhost image's layers: the real agnhost in an Alpine-like busybox root with the user
/// and group its specs look for.
fn agnhost_layers(bin: &[u8]) -> anyhow::Result<Vec<Layer>> {
    let root = Layer::busybox_full()?
        .file("etc/os-release", ALPINE_OS_RELEASE)
        .file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\n\
             nobody:x:65534:65534:nobody:/:/sbin/nologin\n\
             user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n",
        )
        .file(
            "etc/group",
            "root:x:0:root\nnogroup:x:65534:\nuser-defined-in-image:x:1000:\n\
             group-defined-in-image:x:50000:user-defined-in-image\n",
        )
        .dir("home/user-defined-in-image/")
        .dir("uploads/");
    let app = Layer::new()
        .file_mode("agnhost", bin.to_vec(), 0o755)
        .symlink("agnhost-2", "agnhost");
    Ok(vec![root, app])
}

/// One image of the set: its upstream reference and how it is built.
pub struct NodeImage {
    /// The reference the suite pulls, e.g. `registry.k8s.io/e2e-test-images/agnhost:2.56`.
    pub reference: &'static str,
    /// The image.
    pub image: ImageBuilder,
}

/// Every image the node e2e suite's conformance and node-feature specs pull that can be
/// built here; `agnhost` is the static agnhost binary.
pub fn images(agnhost_bin: &[u8]) -> anyhow::Result<Vec<NodeImage>> {
    let pause = crate::tools::static_c_binary("pause", PAUSE_C)?;
    let nnp = crate::tools::static_c_binary("nnp", NNP_C)?;
    let ipcs = crate::tools::static_c_binary("ipcs", IPCS_C)?;
    let busybox = || -> anyhow::Result<ImageBuilder> {
        Ok(ImageBuilder::new(vec![base(
            "# berth's offline stand-in for busybox\nNAME=\"BusyBox\"\nID=busybox\n",
        )?])
        .cmd(&["sh"])
        .env(&[PATH]))
    };
    let nginx = || -> anyhow::Result<ImageBuilder> {
        let l = base(ALPINE_OS_RELEASE)?
            .file_mode("usr/sbin/nginx", web_server("/usr/share/nginx/html"), 0o755)
            .dir("usr/share/nginx/")
            .dir("usr/share/nginx/html/")
            .file(
                "usr/share/nginx/html/index.html",
                "<html><body><h1>Welcome to nginx!</h1></body></html>\n",
            );
        Ok(ImageBuilder::new(vec![l])
            .cmd(&["nginx", "-g", "daemon off;"])
            .env(&[PATH]))
    };
    let httpd = || -> anyhow::Result<ImageBuilder> {
        let l = base(ALPINE_OS_RELEASE)?
            .file_mode(
                "usr/local/bin/httpd-foreground",
                web_server("/usr/local/apache2/htdocs"),
                0o755,
            )
            .dir("usr/local/apache2/")
            .dir("usr/local/apache2/htdocs/")
            .file(
                "usr/local/apache2/htdocs/index.html",
                "<html><body><h1>It works!</h1></body></html>\n",
            );
        Ok(ImageBuilder::new(vec![l])
            .cmd(&["httpd-foreground"])
            .workdir("/usr/local/apache2")
            .env(&[PATH]))
    };
    let mut v = vec![
        NodeImage {
            reference: PAUSE,
            image: ImageBuilder::new(vec![Layer::new().file_mode("pause", pause, 0o755)])
                .entrypoint(&["/pause"])
                .cmd(&[])
                .user("65535:65535")
                .env(&[PATH]),
        },
        NodeImage {
            reference: "registry.k8s.io/e2e-test-images/busybox:1.37.0-1",
            image: busybox()?,
        },
        NodeImage {
            reference: "registry.k8s.io/e2e-test-images/agnhost:2.56",
            image: ImageBuilder::new(agnhost_layers(agnhost_bin)?)
                .entrypoint(&["/agnhost"])
                .cmd(&["pause"])
                .env(&[PATH]),
        },
        NodeImage {
            reference: "registry.k8s.io/e2e-test-images/nginx:1.14-4",
            image: nginx()?,
        },
        NodeImage {
            reference: "registry.k8s.io/e2e-test-images/nginx:1.15-4",
            image: nginx()?,
        },
        NodeImage {
            reference: "registry.k8s.io/e2e-test-images/httpd:2.4.38-4",
            image: httpd()?,
        },
        NodeImage {
            reference: "registry.k8s.io/e2e-test-images/httpd:2.4.39-4",
            image: httpd()?,
        },
        NodeImage {
            reference: "registry.k8s.io/e2e-test-images/nonewprivs:1.3",
            image: ImageBuilder::new(vec![base(ALPINE_OS_RELEASE)?.file_mode(
                "usr/local/bin/nnp",
                nnp,
                0o4755,
            )])
            .cmd(&["nnp"])
            .env(&[PATH]),
        },
        NodeImage {
            reference: "registry.k8s.io/e2e-test-images/nonroot:1.4",
            image: ImageBuilder::new(vec![base(DEBIAN_OS_RELEASE)?])
                .user("1234")
                .cmd(&["sh"])
                .env(&[PATH]),
        },
        NodeImage {
            reference: "registry.k8s.io/e2e-test-images/ipc-utils:1.3",
            image: ImageBuilder::new(vec![base(ALPINE_OS_RELEASE)?.file_mode(
                "usr/bin/ipcs",
                ipcs,
                0o755,
            )])
            .cmd(&["sh"])
            .env(&[PATH]),
        },
    ];
    // kitten: agnhost serving two files, which the image-volume specs read.
    let mut layers = agnhost_layers(agnhost_bin)?;
    layers.push(
        Layer::new()
            .file("kitten.jpg", crate::image::noise(4096, 7))
            .file("data.json", "{\"image\": \"kitten.jpg\"}\n"),
    );
    v.push(NodeImage {
        reference: "registry.k8s.io/e2e-test-images/kitten:1.7",
        image: ImageBuilder::new(layers)
            .entrypoint(&["/agnhost"])
            .cmd(&["test-webserver"])
            .env(&[PATH]),
    });
    Ok(v)
}

/// Builds every image and pushes it to `reg` under its upstream repository path (the path a
/// plain `certs.d` mirror of `registry.k8s.io` asks for). Returns the references.
pub async fn push_all(reg: &Registry, agnhost_bin: &[u8]) -> anyhow::Result<Vec<String>> {
    let mut refs = Vec::new();
    for img in images(agnhost_bin)? {
        let rest = img
            .reference
            .strip_prefix(&format!("{UPSTREAM}/"))
            .expect("an upstream reference");
        let (repo, tag) = rest.rsplit_once(':').expect("a tagged reference");
        img.image.push(reg, repo, Some(tag)).await?;
        refs.push(img.reference.to_string());
    }
    Ok(refs)
}

/// The `hosts.toml` that sends `registry.k8s.io` pulls to the registry at `addr`.
pub fn mirror_hosts(addr: &impl std::fmt::Display) -> String {
    crate::pods::mirror_hosts(UPSTREAM, addr)
}
