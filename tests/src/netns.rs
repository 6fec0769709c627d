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

/// A host in its own namespace, at `198.18.<subnet>.2/24`, reachable from the test's
/// namespace through a veth pair whose local end is `198.18.<subnet>.1/24`.
#[derive(Debug)]
pub struct Host {
    name: String,
    subnet: u8,
    children: Vec<Child>,
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
        let name = format!("{PREFIX}{pid}n{index}");
        run("ip", &["netns", "add", &name]).map_err(|e| {
            io::Error::other(format!(
                "{e}\nlab tests create network namespaces and need root (CAP_SYS_ADMIN, \
                 CAP_NET_ADMIN); run them as root, as CI does"
            ))
        })?;
        // From here on, Drop cleans up.
        let host = Self {
            name,
            subnet,
            children: Vec::new(),
        };
        let outside = format!("{PREFIX}{pid}o{index}");
        let inside = format!("{PREFIX}{pid}i{index}");
        run(
            "ip",
            &[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside, "netns",
                &host.name,
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

    /// Starts a long-running command inside the namespace; it is killed when the host is
    /// dropped.
    ///
    /// # Errors
    /// When it cannot start.
    pub fn spawn(&mut self, command: &[&str]) -> io::Result<()> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        self.children.push(child);
        Ok(())
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
}

impl Drop for Host {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting the namespace destroys its veth end, and with it the local end.
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}
