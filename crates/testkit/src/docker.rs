//! The Docker side of emulated hosts: the `docker` CLI against one engine's socket, and the
//! offline busybox image every host's engine gets at boot.
//!
//! Design decisions:
//! * No registry is reachable from tests, so the image is made from the machine's static
//!   busybox (`/usr/bin/busybox`, Debian's busybox-static): an empty rootfs with `/bin/busybox`
//!   and a symlink per applet (`busybox --list`), a root user, `/www/index.html`, imported
//!   with `tar | docker import --change 'CMD ["sh"]' - flotilla/busybox:latest`. busybox has
//!   `sh`, `httpd`, `nc`, `wget`, `sleep` — enough for services with data and a port.
//! * It is built once per machine, not per host: the first engine that needs it imports it
//!   and `docker save`s it to `~/.cache/flotilla/busybox-image-<key>.tar` (under the cache's
//!   install lock; the key changes with the busybox binary), and every engine `docker load`s
//!   that file at boot (about a second for 2 MB).
//! * The CLI is Debian's `/usr/bin/docker` (20.10, the engine's own API version) when present,
//!   else whatever `docker` is on the PATH; it is always given `-H unix://<socket>`, so no
//!   context or `DOCKER_HOST` of the caller's leaks in.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::host::run;

/// The image every host's engine has: busybox, with `sh` as its command.
pub const BUSYBOX_IMAGE: &str = "flotilla/busybox:latest";

/// The page the image's `httpd -h /www` serves at `/index.html`.
pub const BUSYBOX_INDEX: &str = "flotilla busybox\n";

/// `docker service create` arguments for a busybox `httpd` service called `name` serving the
/// image's `/www` on port 80, with `options` (replicas, placement, publishing) before the
/// image: the service every swarm test and benchmark runs.
pub fn httpd_service<'a>(name: &'a str, options: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["service", "create", "--detach", "--name", name];
    args.extend_from_slice(options);
    args.extend_from_slice(&[BUSYBOX_IMAGE, "httpd", "-f", "-p", "80", "-h", "/www"]);
    args
}

/// The `docker` CLI to use.
pub fn docker_cli() -> PathBuf {
    let debian = Path::new("/usr/bin/docker");
    if debian.exists() {
        debian.to_path_buf()
    } else {
        PathBuf::from("docker")
    }
}

/// `docker -H unix://<socket> <args>`; its stdout, or an error with its stderr.
pub fn docker(socket: &Path, args: &[&str]) -> anyhow::Result<String> {
    run(Command::new(docker_cli())
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(args)
        .env(
            "DOCKER_CONFIG",
            std::env::temp_dir().join("flotilla-docker-config"),
        ))
}

fn busybox_binary() -> PathBuf {
    ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/busybox"))
}

/// Where the saved image is cached; the name changes with the busybox binary.
fn cached_tar() -> anyhow::Result<PathBuf> {
    let busybox = busybox_binary();
    let meta = fs::metadata(&busybox)
        .with_context(|| format!("{busybox:?} is missing: install busybox-static"))?;
    Ok(crate::cache::cache_dir().join(format!("busybox-image-v1-{}.tar", meta.len())))
}

/// Makes sure the engine at `socket` has [`BUSYBOX_IMAGE`]: loads the cached image, building
/// (and caching) it through this engine first if no test process did so yet.
pub fn load_busybox(socket: &Path) -> anyhow::Result<()> {
    let tar = cached_tar()?;
    let mut built: anyhow::Result<()> = Ok(());
    crate::cache::install_once(
        "busybox-image",
        || tar.exists(),
        || built = build(socket, &tar),
    );
    built?;
    let tar = tar.to_string_lossy().into_owned();
    docker(socket, &["load", "-q", "-i", &tar])?;
    Ok(())
}

fn build(socket: &Path, tar: &Path) -> anyhow::Result<()> {
    let rootfs = tempfile::Builder::new()
        .prefix("flotilla-busybox-")
        .tempdir()?;
    let root = rootfs.path();
    for dir in [
        "bin", "etc", "tmp", "proc", "sys", "dev", "root", "www", "var",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::copy(busybox_binary(), root.join("bin/busybox"))?;
    let applets = run(Command::new(root.join("bin/busybox")).arg("--list"))?;
    for applet in applets.lines().map(str::trim) {
        if !applet.is_empty() && applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;
    fs::write(root.join("www/index.html"), BUSYBOX_INDEX)?;
    let mut archive = Command::new("tar")
        .arg("-C")
        .arg(root)
        .args(["--owner=0", "--group=0", "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("running tar")?;
    let stdout = archive.stdout.take().context("tar's output")?;
    let import = Command::new(docker_cli())
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(["import", "--change", r#"CMD ["sh"]"#, "-", BUSYBOX_IMAGE])
        .stdin(Stdio::from(stdout))
        .output()
        .context("running docker import")?;
    let tar_status = archive.wait()?;
    if !tar_status.success() || !import.status.success() {
        bail!(
            "building {BUSYBOX_IMAGE} failed (tar {tar_status}, docker import {}): {}",
            import.status,
            String::from_utf8_lossy(&import.stderr)
        );
    }
    let partial = tar.with_extension(format!("partial-{}", std::process::id()));
    let partial_str = partial.to_string_lossy().into_owned();
    docker(socket, &["save", "-o", &partial_str, BUSYBOX_IMAGE])?;
    fs::rename(&partial, tar)?;
    Ok(())
}
