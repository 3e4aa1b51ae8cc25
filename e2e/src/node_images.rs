//! The images Kubernetes' node e2e suite pulls (`registry.k8s.io/e2e-test-images/…` and the
//! pause image), built here for a machine without internet: the real `agnhost` (built from
//! its Go package by `scripts/install-e2e-node.sh`), Debian's static busybox, and small
//! stand-ins that behave as the suite expects of nginx, httpd, `nnp` and pause. They are
//! pushed to a local registry under their upstream repository paths, and a node reaches them
//! through a `certs.d` mirror of `registry.k8s.io`, as a node behind an air gap does: the
//! suite's image names are never changed.

use std::path::{Path, PathBuf};

use anyhow::Context;

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

/// `nmeter` as the lifecycle specs use it (`nmeter -d0 '%3t' | head -n1`: the time of day
/// with milliseconds): Debian's busybox is built without it. Prints the format once per
/// `-d` milliseconds, `%Nt` as HH:MM:SS with N decimals, until its reader goes.
const NMETER_C: &str = r#"#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long delay_ms = 1000;
    const char *fmt = NULL;
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "-d", 2) == 0)
            delay_ms = atol(argv[i][2] ? argv[i] + 2 : (i + 1 < argc ? argv[++i] : "1000"));
        else
            fmt = argv[i];
    }
    if (!fmt) { fprintf(stderr, "usage: nmeter [-dMSEC] FORMAT\n"); return 1; }
    for (;;) {
        struct timeval tv;
        gettimeofday(&tv, NULL);
        struct tm tm;
        localtime_r(&tv.tv_sec, &tm);
        for (const char *p = fmt; *p; p++) {
            if (p[0] == '%' && p[1] >= '0' && p[1] <= '9' && p[2] == 't') {
                int digits = p[1] - '0';
                printf("%02d:%02d:%02d", tm.tm_hour, tm.tm_min, tm.tm_sec);
                if (digits > 0) {
                    char frac[7];
                    snprintf(frac, sizeof frac, "%06ld", (long)tv.tv_usec);
                    printf(".%.*s", digits > 6 ? 6 : digits, frac);
                }
                p += 2;
            } else if (p[0] == '%' && p[1] == 't') {
                printf("%02d:%02d:%02d", tm.tm_hour, tm.tm_min, tm.tm_sec);
                p += 1;
            } else {
                putchar(*p);
            }
        }
        putchar('\n');
        if (fflush(stdout) != 0 || ferror(stdout)) return 0;
        if (delay_ms > 0) usleep((useconds_t)delay_ms * 1000);
    }
}
"#;

/// `/bin/sh` of the stand-ins: busybox ash, as upstream's images have (the specs match its
/// messages, e.g. `/bin/sh: can't create /file: Read-only file system`), except that
/// Debian's busybox 1.35 ash drops environment variables whose names are not shell
/// identifiers (`data-1`, which a ConfigMap may hold) where upstream's 1.37 passes them on:
/// when the environment holds such a name, bash (which passes them on) runs instead.
const SH_C: &str = r#"#include <ctype.h>
#include <stdio.h>
#include <unistd.h>

extern char **environ;

static int identifier(const char *e) {
    if (!(isalpha((unsigned char)e[0]) || e[0] == '_')) return 0;
    for (const char *p = e + 1; *p && *p != '='; p++)
        if (!(isalnum((unsigned char)*p) || *p == '_')) return 0;
    return 1;
}

/* argv[0] is kept: busybox picks its applet by it (`sh`, `/bin/sh`), and both shells name
 * themselves by it in their messages. */
int main(int argc, char **argv) {
    (void)argc;
    for (char **e = environ; *e; e++) {
        if (!identifier(*e)) {
            execv("/bin/bash", argv);
            perror("/bin/bash");
            return 127;
        }
    }
    execv("/bin/ash", argv);
    perror("/bin/ash");
    return 127;
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

/// Host binaries at the image paths given, with the shared libraries they load (as `ldd`
/// names them, at the same paths).
fn host_binaries(l: Layer, bins: &[(&Path, &str)]) -> anyhow::Result<Layer> {
    let mut l = l.dir("lib/").dir("lib64/").dir("lib/x86_64-linux-gnu/");
    let mut libs = std::collections::BTreeSet::new();
    for (bin, at) in bins {
        let data = std::fs::read(bin).with_context(|| format!("read {}", bin.display()))?;
        l = l.file_mode(at, data, 0o755);
        let ldd = std::process::Command::new("ldd").arg(bin).output()?;
        anyhow::ensure!(ldd.status.success(), "ldd {} failed", bin.display());
        for line in String::from_utf8(ldd.stdout)?.lines() {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux… (0x…)`.
            if let Some(p) = line
                .split("=>")
                .last()
                .and_then(|r| r.split_whitespace().next())
                .filter(|p| p.starts_with('/'))
            {
                libs.insert(p.to_string());
            }
        }
    }
    for p in libs {
        let data = std::fs::read(&p).with_context(|| format!("read {p}"))?;
        anyhow::ensure!(
            p.starts_with("/lib/x86_64-linux-gnu/") || p.starts_with("/lib64/"),
            "a library outside /lib/x86_64-linux-gnu and /lib64: {p}"
        );
        l = l.file_mode(p.trim_start_matches('/'), data, 0o755);
    }
    Ok(l)
}

/// What the stand-ins add over Debian's busybox so that they behave as the upstream images
/// do: the `/bin/sh` of [`SH_C`] and the bash it may run, `curl` and OpenBSD's `nc` (agnhost's
/// image has them; the networking specs call them, `nc -u` included), and `nmeter`.
fn host_tools_layer() -> anyhow::Result<Layer> {
    let sh = crate::tools::static_c_binary("sh", SH_C)?;
    let nmeter = crate::tools::static_c_binary("nmeter", NMETER_C)?;
    host_binaries(
        Layer::new()
            .file_mode("bin/sh", sh, 0o755)
            .file_mode("bin/nmeter", nmeter, 0o755),
        &[
            (Path::new("/bin/bash"), "bin/bash"),
            (Path::new("/usr/bin/curl"), "usr/bin/curl"),
            (Path::new("/bin/nc.openbsd"), "usr/bin/nc"),
        ],
    )
    .context("scripts/install-deps.sh installs bash, curl and netcat-openbsd")
}

/// The root the stand-ins share: Debian's busybox with every applet, the shell layer, and
/// `/etc/os-release` saying `os_release`; then `top`, the image's own files.
struct Roots {
    tools: Layer,
}

impl Roots {
    fn with(&self, os_release: &str, top: Layer) -> anyhow::Result<Vec<Layer>> {
        Ok(vec![
            Layer::busybox_full()?.file("etc/os-release", os_release),
            self.tools.clone(),
            top,
        ])
    }

    /// The agnhost image's layers: the real agnhost in an Alpine-like root with the user
    /// and group its specs look for, and a certificate for its TLS servers. Its `/bin/sh` is
    /// bash: Debian's busybox ash runs its own applets before anything on `PATH`, and the
    /// specs want the image's OpenBSD `nc` (`nc -u`), which Alpine's ash finds on `PATH`.
    fn agnhost(&self, bin: &[u8]) -> anyhow::Result<Vec<Layer>> {
        let (crt, key) = crate::tls::self_signed_localhost()?;
        let bash = std::fs::read("/bin/bash")?;
        self.with(
            ALPINE_OS_RELEASE,
            Layer::new()
                .file_mode("bin/sh", bash, 0o755)
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
                .dir("uploads/")
                .file("localhost.crt", crt)
                .file("localhost.key", key)
                .file_mode("agnhost", bin.to_vec(), 0o755)
                .symlink("agnhost-2", "agnhost"),
        )
    }

    fn nginx(&self) -> anyhow::Result<ImageBuilder> {
        let top = Layer::new()
            .file_mode("usr/sbin/nginx", web_server("/usr/share/nginx/html"), 0o755)
            .dir("usr/share/nginx/")
            .dir("usr/share/nginx/html/")
            .file(
                "usr/share/nginx/html/index.html",
                "<html><body><h1>Welcome to nginx!</h1></body></html>\n",
            );
        Ok(ImageBuilder::new(self.with(ALPINE_OS_RELEASE, top)?)
            .cmd(&["nginx", "-g", "daemon off;"])
            .env(&[PATH]))
    }

    fn httpd(&self) -> anyhow::Result<ImageBuilder> {
        let top = Layer::new()
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
        Ok(ImageBuilder::new(self.with(ALPINE_OS_RELEASE, top)?)
            .cmd(&["httpd-foreground"])
            .workdir("/usr/local/apache2")
            .env(&[PATH]))
    }
}

/// One image of the set: its upstream reference and how it is built.
pub struct NodeImage {
    /// The reference the suite pulls, e.g. `registry.k8s.io/e2e-test-images/agnhost:2.56`.
    pub reference: &'static str,
    /// The image.
    pub image: ImageBuilder,
}

/// The binaries the images are made of that are built elsewhere.
pub struct Binaries {
    /// The static agnhost (`scripts/install-e2e-node.sh`).
    pub agnhost: PathBuf,
    /// The cAdvisor stand-in (`cadvisor-standin`, built with berth-e2e), for the density
    /// specs; without it, no `gcr.io/cadvisor/cadvisor` image.
    pub cadvisor: Option<PathBuf>,
}

impl Binaries {
    /// Where the install script and cargo put them: agnhost in the tools cache, the cAdvisor
    /// stand-in beside the running executable (or its parent, for a test binary in `deps/`).
    pub fn find() -> anyhow::Result<Self> {
        let agnhost = crate::tools::node_e2e_dir().join("agnhost");
        crate::tools::require(&agnhost, "install-e2e-node.sh")?;
        let exe = std::env::current_exe()?;
        let cadvisor = exe
            .ancestors()
            .skip(1)
            .take(2)
            .map(|d| d.join("cadvisor-standin"))
            .find(|p| p.exists());
        Ok(Binaries { agnhost, cadvisor })
    }
}

/// The cAdvisor image the density specs run (their resource collector reads it).
pub const CADVISOR: &str = "gcr.io/cadvisor/cadvisor:v0.47.2";

/// Every image the node e2e suite's conformance and node-feature specs pull that can be
/// built here.
pub fn images(bins: &Binaries) -> anyhow::Result<Vec<NodeImage>> {
    let agnhost_bin = &std::fs::read(&bins.agnhost)
        .with_context(|| format!("read {}", bins.agnhost.display()))?;
    let pause = crate::tools::static_c_binary("pause", PAUSE_C)?;
    let nnp = crate::tools::static_c_binary("nnp", NNP_C)?;
    let ipcs = crate::tools::static_c_binary("ipcs", IPCS_C)?;
    let roots = Roots {
        tools: host_tools_layer()?,
    };
    let busybox = "# berth's offline stand-in for busybox\nNAME=\"BusyBox\"\nID=busybox\n";
    let e2e = |name: &'static str, image: ImageBuilder| NodeImage {
        reference: name,
        image,
    };
    let mut kitten = roots.agnhost(agnhost_bin)?;
    kitten.push(
        Layer::new()
            .file("kitten.jpg", crate::image::noise(4096, 7))
            .file("data.json", "{\"image\": \"kitten.jpg\"}\n"),
    );
    let mut v = vec![
        e2e(
            PAUSE,
            ImageBuilder::new(vec![Layer::new().file_mode("pause", pause, 0o755)])
                .entrypoint(&["/pause"])
                .cmd(&[])
                .user("65535:65535")
                .env(&[PATH]),
        ),
        e2e(
            "registry.k8s.io/e2e-test-images/busybox:1.37.0-1",
            ImageBuilder::new(roots.with(busybox, Layer::new())?)
                .cmd(&["sh"])
                .env(&[PATH]),
        ),
        e2e(
            "registry.k8s.io/e2e-test-images/agnhost:2.56",
            ImageBuilder::new(roots.agnhost(agnhost_bin)?)
                .entrypoint(&["/agnhost"])
                .cmd(&["pause"])
                .env(&[PATH]),
        ),
        e2e(
            "registry.k8s.io/e2e-test-images/nginx:1.14-4",
            roots.nginx()?,
        ),
        e2e(
            "registry.k8s.io/e2e-test-images/nginx:1.15-4",
            roots.nginx()?,
        ),
        e2e(
            "registry.k8s.io/e2e-test-images/httpd:2.4.38-4",
            roots.httpd()?,
        ),
        e2e(
            "registry.k8s.io/e2e-test-images/httpd:2.4.39-4",
            roots.httpd()?,
        ),
        e2e(
            "registry.k8s.io/e2e-test-images/nonewprivs:1.3",
            ImageBuilder::new(roots.with(
                ALPINE_OS_RELEASE,
                Layer::new().file_mode("usr/local/bin/nnp", nnp, 0o4755),
            )?)
            .cmd(&["nnp"])
            .env(&[PATH]),
        ),
        e2e(
            "registry.k8s.io/e2e-test-images/nonroot:1.4",
            ImageBuilder::new(roots.with(DEBIAN_OS_RELEASE, Layer::new())?)
                .user("1234")
                .cmd(&["sh"])
                .env(&[PATH]),
        ),
        e2e(
            "registry.k8s.io/e2e-test-images/ipc-utils:1.3",
            ImageBuilder::new(roots.with(
                ALPINE_OS_RELEASE,
                Layer::new().file_mode("usr/bin/ipcs", ipcs, 0o755),
            )?)
            .cmd(&["sh"])
            .env(&[PATH]),
        ),
        // kitten: agnhost serving two files, which the image-volume specs read.
        e2e(
            "registry.k8s.io/e2e-test-images/kitten:1.7",
            ImageBuilder::new(kitten)
                .entrypoint(&["/agnhost"])
                .cmd(&["test-webserver"])
                .env(&[PATH]),
        ),
    ];
    if let Some(c) = &bins.cadvisor {
        let l = host_binaries(
            Layer::new().dir("usr/").dir("usr/bin/"),
            &[(c, "usr/bin/cadvisor")],
        )?;
        v.push(e2e(
            CADVISOR,
            ImageBuilder::new(vec![l])
                .entrypoint(&["/usr/bin/cadvisor", "-logtostderr"])
                .cmd(&[])
                .env(&[PATH]),
        ));
    }
    Ok(v)
}

/// The registries the images come from: each needs a `certs.d` mirror.
pub const UPSTREAMS: [&str; 2] = [UPSTREAM, "gcr.io"];

/// Builds every image and pushes it to `reg` under its upstream repository path (the path a
/// plain `certs.d` mirror asks for). Returns the references.
pub async fn push_all(reg: &Registry, bins: &Binaries) -> anyhow::Result<Vec<String>> {
    let mut refs = Vec::new();
    for img in images(bins)? {
        let (host, rest) = img
            .reference
            .split_once('/')
            .expect("a reference with a registry");
        anyhow::ensure!(UPSTREAMS.contains(&host), "{host} is not mirrored");
        let (repo, tag) = rest.rsplit_once(':').expect("a tagged reference");
        img.image.push(reg, repo, Some(tag)).await?;
        refs.push(img.reference.to_string());
    }
    Ok(refs)
}

/// The `hosts.toml` that sends pulls from `host` to the registry at `addr`.
pub fn mirror_hosts(host: &str, addr: &impl std::fmt::Display) -> String {
    crate::pods::mirror_hosts(host, addr)
}
