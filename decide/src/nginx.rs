//! NGINX in front of an upstream, every request checked by the sidecar with `auth_request`, as
//! `deploy/gateways/nginx.conf` ships it (its `{{...}}` placeholders filled in). The sidecar's
//! tests and `dev/demo` run it this way; it is not on any service's path.
//!
//! NGINX runs in the foreground (no daemon, no master process) as a child process, with its
//! config, logs and temp files in a folder of its own; dropping [`Nginx`] stops it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The shipped configuration.
pub const SHIPPED_CONF: &str = include_str!("../../deploy/gateways/nginx.conf");

/// A running NGINX, stopped when dropped.
pub struct Nginx {
    child: Child,
    prefix: PathBuf,
}

impl Nginx {
    /// Starts NGINX with `conf` (the shipped configuration or an edit of it) listening on
    /// `listen`, asking the sidecar at `sidecar` (host:port of its HTTP listener) and passing
    /// allowed requests to `upstream` (host:port), with `prefix` as its folder.
    pub fn start(
        conf: &str,
        prefix: &Path,
        listen: SocketAddr,
        sidecar: &str,
        upstream: &str,
    ) -> std::io::Result<Nginx> {
        std::fs::create_dir_all(prefix)?;
        let conf = conf
            .replace("{{PREFIX}}", &prefix.display().to_string())
            .replace("{{LISTEN}}", &listen.to_string())
            .replace("{{SIDECAR}}", sidecar)
            .replace("{{UPSTREAM}}", upstream);
        let path = prefix.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let child = Command::new(binary())
            .arg("-p")
            .arg(prefix)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off; master_process off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Nginx {
            child,
            prefix: prefix.to_path_buf(),
        })
    }

    /// Whether NGINX has exited, and how.
    pub fn exited(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// NGINX's error log (empty if it cannot be read).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's NGINX (`dev/setup` installs it), or the one on `PATH`.
fn binary() -> &'static str {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
        .into_iter()
        .find(|path| Path::new(path).exists())
        .unwrap_or("nginx")
}
