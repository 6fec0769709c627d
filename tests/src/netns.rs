//! Network namespaces for ground-truth tests: hosts with addresses from 198.18.0.0/15, each
//! joined to the test's own namespace by a veth pair, with faults injected by nftables or a
//! userspace responder. Everything a [`Host`] creates (the namespace, its veth pair, the
//! processes it started) is removed when it is dropped, also when the test panics; namespaces
//! left by a killed test run are removed by the next one ([`remove_stale`]).
//!
//! Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN). Without it [`Host::new`] fails with a message
//! that says so: a lab test never passes silently.

use std::io;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Every namespace and interface this module creates starts with this.
const PREFIX: &str = "pm";

static NEXT_INDEX: AtomicU32 = AtomicU32::new(0);

/// Runs `program args…`, returning its output, or an error naming the command and its stderr.
///
/// # Errors
/// When the program cannot start or exits non-zero.
pub fn run(program: &str, args: &[&str]) -> io::Result<Output> {
    let output = Command::new(program).args(args).output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot run {program} {}: {e}", args.join(" ")),
        )
    })?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(output)
}

/// Removes namespaces left behind by test processes that no longer exist (an interrupted
/// run), killing the processes still running inside them.
pub fn remove_stale() {
    let Ok(output) = run("ip", &["netns", "list"]) else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('n').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            // An interrupted run leaves its processes running inside: stop them first.
            if let Ok(pids) = run("ip", &["netns", "pids", name]) {
                for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                    let _ = run("kill", &["-9", pid]);
                }
            }
            let _ = run("ip", &["netns", "del", name]);
            let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(name));
        }
    }
}

/// A network namespace owned by a test: commands run in it, processes started in it (each
/// under a label), faults set in it. Dropping it kills its processes, deletes it (and with
/// it the namespace end of every veth pair) and removes its `/etc/netns/<name>/` files.
#[derive(Debug)]
pub struct Namespace {
    name: String,
    children: Vec<(String, Child)>,
}

impl Namespace {
    /// Creates the namespace `name`.
    ///
    /// # Errors
    /// When not root (the message says so), or when `ip` fails.
    pub fn create(name: String) -> io::Result<Self> {
        run("ip", &["netns", "add", &name]).map_err(|e| {
            io::Error::other(format!(
                "{e}\nlab tests create network namespaces and need root (CAP_SYS_ADMIN, \
                 CAP_NET_ADMIN); run them as root, as CI does"
            ))
        })?;
        Ok(Self {
            name,
            children: Vec::new(),
        })
    }

    /// The namespace's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace and waits for it.
    ///
    /// # Errors
    /// When it cannot start or fails.
    pub fn exec(&self, command: &[&str]) -> io::Result<Output> {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(command);
        run("ip", &args)
    }

    /// Starts a long-running command inside the namespace under `label` (stopped by
    /// [`Self::kill`], [`Self::terminate`] or the drop), with `env` added to its environment.
    ///
    /// # Errors
    /// When it cannot start.
    pub fn spawn(&mut self, label: &str, command: &[&str], env: &[(&str, &str)]) -> io::Result<()> {
        self.spawn_to(label, command, env, Stdio::null())
    }

    /// As [`Self::spawn`], appending the command's standard error to the file `log`.
    ///
    /// # Errors
    /// When the log cannot be opened or the command cannot start.
    pub fn spawn_logged(
        &mut self,
        label: &str,
        command: &[&str],
        env: &[(&str, &str)],
        log: &std::path::Path,
    ) -> io::Result<()> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        self.spawn_to(label, command, env, Stdio::from(file))
    }

    fn spawn_to(
        &mut self,
        label: &str,
        command: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> io::Result<()> {
        let mut process = Command::new("ip");
        process
            .args(["netns", "exec", &self.name])
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (key, value) in env {
            process.env(key, value);
        }
        self.children.push((label.to_owned(), process.spawn()?));
        Ok(())
    }

    /// Stops the process started as `label` with SIGTERM (a graceful stop), waiting for it.
    pub fn terminate(&mut self, label: &str) {
        for (child_label, child) in &mut self.children {
            if child_label == label {
                crate::harness::terminate(child);
            }
        }
        self.children
            .retain(|(child_label, _)| child_label != label);
    }

    /// Kills the process started as `label`.
    pub fn kill(&mut self, label: &str) {
        for (child_label, child) in &mut self.children {
            if child_label == label {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.children
            .retain(|(child_label, _)| child_label != label);
    }

    /// Sets a sysctl inside the namespace (`net.*` keys are per namespace).
    ///
    /// # Errors
    /// When `sysctl` fails.
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Loads an nftables ruleset (text, as for `nft -f`) inside the namespace.
    ///
    /// # Errors
    /// When `nft` rejects it.
    pub fn nft(&self, ruleset: &str) -> io::Result<()> {
        let path = std::env::temp_dir().join(format!("{}.nft", self.name));
        std::fs::write(&path, ruleset)?;
        let result = self.exec(&["nft", "-f", &path.display().to_string()]);
        let _ = std::fs::remove_file(&path);
        result.map(drop)
    }

    /// Makes `ip netns exec` give this namespace its own `/etc/resolv.conf` naming `server`.
    ///
    /// # Errors
    /// When `/etc/netns/<name>/` cannot be written.
    pub fn set_resolver(&self, server: Ipv4Addr) -> io::Result<()> {
        let dir = std::path::Path::new("/etc/netns").join(&self.name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {server}\noptions timeout:2 attempts:2\n"),
        )
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = run("ip", &["netns", "del", &self.name]);
        let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(&self.name));
    }
}

/// A host in its own namespace, at `198.18.<subnet>.2/24`, reachable from the test's
/// namespace through a veth pair whose local end is `198.18.<subnet>.1/24`. It derefs to its
/// [`Namespace`] for commands, processes and faults.
#[derive(Debug)]
pub struct Host {
    ns: Namespace,
    subnet: u8,
}

impl std::ops::Deref for Host {
    type Target = Namespace;

    fn deref(&self) -> &Namespace {
        &self.ns
    }
}

impl std::ops::DerefMut for Host {
    fn deref_mut(&mut self) -> &mut Namespace {
        &mut self.ns
    }
}

impl Host {
    /// Creates the namespace and its link. `subnet` must be unique among the hosts alive at
    /// once in this process (it picks the /24).
    ///
    /// # Errors
    /// When not root, or when `ip` fails; the message names the failing command.
    pub fn new(subnet: u8) -> io::Result<Self> {
        remove_stale();
        let pid = std::process::id();
        let index = NEXT_INDEX.fetch_add(1, Ordering::Relaxed);
        // From here on, Drop cleans up.
        let host = Self {
            ns: Namespace::create(format!("{PREFIX}{pid}n{index}"))?,
            subnet,
        };
        let outside = format!("{PREFIX}{pid}o{index}");
        let inside = format!("{PREFIX}{pid}i{index}");
        run(
            "ip",
            &[
                "link",
                "add",
                &outside,
                "type",
                "veth",
                "peer",
                "name",
                &inside,
                "netns",
                host.name(),
            ],
        )?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("198.18.{subnet}.1/24"),
                "dev",
                &outside,
            ],
        )?;
        run("ip", &["link", "set", &outside, "up"])?;
        host.exec(&[
            "ip",
            "addr",
            "add",
            &format!("198.18.{subnet}.2/24"),
            "dev",
            &inside,
        ])?;
        host.exec(&["ip", "link", "set", &inside, "up"])?;
        host.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(host)
    }

    /// The host's address.
    #[must_use]
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.subnet, 2)
    }

    /// An address in the host's subnet that nobody has (neighbour discovery fails).
    #[must_use]
    pub fn absent_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.subnet, 77)
    }
}
