//! The mesh lab: hosts in their own network namespaces on one L2 segment (a bridge in a
//! namespace of its own), addresses `198.18.0.<n>/24`, each able to run processes and carry
//! faults (nftables rules, sysctls, a userspace echo responder). Everything is removed when
//! the [`Lab`] is dropped, also when a test panics; namespaces of killed runs are removed at
//! the next start ([`crate::netns::remove_stale`]).
//!
//! Needs root; without it [`Lab::new`] fails with a message saying so.

use std::io;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::netns::{remove_stale, run};

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// A lab: the bridge namespace and its hosts.
#[derive(Debug)]
pub struct Lab {
    number: u32,
    prefix: String,
    bridge_ns: String,
    hosts: Vec<LabHost>,
}

/// One host of a lab.
#[derive(Debug)]
pub struct LabHost {
    /// The namespace.
    pub ns: String,
    /// Its address.
    pub addr: Ipv4Addr,
    children: Vec<(String, Child)>,
}

impl Lab {
    /// Creates the bridge namespace.
    ///
    /// # Errors
    /// When not root or `ip` fails.
    pub fn new() -> io::Result<Self> {
        remove_stale();
        let number = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("pm{}n{}", std::process::id(), 100 + number);
        let bridge_ns = format!("{prefix}br");
        run("ip", &["netns", "add", &bridge_ns]).map_err(|e| {
            io::Error::other(format!(
                "{e}\nthe mesh lab creates network namespaces and needs root (CAP_SYS_ADMIN, \
                 CAP_NET_ADMIN); run it as root, as CI does"
            ))
        })?;
        let lab = Self {
            number,
            prefix,
            bridge_ns,
            hosts: Vec::new(),
        };
        lab.in_bridge(&["ip", "link", "add", "br0", "type", "bridge"])?;
        lab.in_bridge(&["ip", "link", "set", "br0", "up"])?;
        lab.in_bridge(&["ip", "link", "set", "lo", "up"])?;
        Ok(lab)
    }

    fn in_bridge(&self, command: &[&str]) -> io::Result<()> {
        let mut args = vec!["netns", "exec", &self.bridge_ns];
        args.extend_from_slice(command);
        run("ip", &args).map(drop)
    }

    /// Adds a host at `198.18.0.<octet>` and returns its index.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn add_host(&mut self, octet: u8) -> io::Result<usize> {
        let index = self.hosts.len();
        let ns = format!("{}h{index}", self.prefix);
        run("ip", &["netns", "add", &ns])?;
        // Interface names have at most 15 bytes.
        let outer = format!(
            "v{}l{}b{index}",
            std::process::id() % 100_000,
            self.number % 1000
        );
        let inner = "eth0";
        run(
            "ip",
            &[
                "link",
                "add",
                &outer,
                "netns",
                &self.bridge_ns,
                "type",
                "veth",
                "peer",
                "name",
                inner,
                "netns",
                &ns,
            ],
        )?;
        self.hosts.push(LabHost {
            ns: ns.clone(),
            addr: Ipv4Addr::new(198, 18, 0, octet),
            children: Vec::new(),
        });
        self.in_bridge(&["ip", "link", "set", &outer, "master", "br0"])?;
        self.in_bridge(&["ip", "link", "set", &outer, "up"])?;
        let host = &self.hosts[index];
        host.exec(&[
            "ip",
            "addr",
            "add",
            &format!("198.18.0.{octet}/24"),
            "dev",
            inner,
        ])?;
        host.exec(&["ip", "link", "set", inner, "up"])?;
        host.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(index)
    }

    /// The host `index`.
    #[must_use]
    pub fn host(&self, index: usize) -> &LabHost {
        &self.hosts[index]
    }

    /// The host `index`, to start or stop its processes.
    pub fn host_mut(&mut self, index: usize) -> &mut LabHost {
        &mut self.hosts[index]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            host.kill_all();
            let _ = run("ip", &["netns", "del", &host.ns]);
            let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(&host.ns));
        }
        let _ = run("ip", &["netns", "del", &self.bridge_ns]);
    }
}

impl LabHost {
    /// Runs a command in the host's namespace and waits for it.
    ///
    /// # Errors
    /// When it fails.
    pub fn exec(&self, command: &[&str]) -> io::Result<std::process::Output> {
        let mut args = vec!["netns", "exec", &self.ns];
        args.extend_from_slice(command);
        run("ip", &args)
    }

    /// Starts a named long-running process in the namespace (killed by [`Self::kill`] or when
    /// the lab is dropped); its stderr goes to the test's.
    ///
    /// # Errors
    /// When it cannot start.
    pub fn spawn(&mut self, name: &str, command: &[&str], env: &[(&str, &str)]) -> io::Result<()> {
        let mut process = Command::new("ip");
        process
            .args(["netns", "exec", &self.ns])
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (key, value) in env {
            process.env(key, value);
        }
        self.children.push((name.to_owned(), process.spawn()?));
        Ok(())
    }

    /// Stops the process started as `name` with SIGTERM (a graceful stop), waiting for it.
    pub fn terminate(&mut self, name: &str) {
        for (child_name, child) in &mut self.children {
            if child_name == name {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let _ = child.wait();
            }
        }
        self.children.retain(|(child_name, _)| child_name != name);
    }

    /// Kills the process started as `name`.
    pub fn kill(&mut self, name: &str) {
        for (child_name, child) in &mut self.children {
            if child_name == name {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.children.retain(|(child_name, _)| child_name != name);
    }

    fn kill_all(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }

    /// Makes `ip netns exec` give this namespace its own `/etc/resolv.conf` naming `server`
    /// (removed with the lab).
    ///
    /// # Errors
    /// When `/etc/netns/<ns>/` cannot be written.
    pub fn set_resolver(&self, server: Ipv4Addr) -> io::Result<()> {
        let dir = std::path::Path::new("/etc/netns").join(&self.ns);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {server}\noptions timeout:2 attempts:2\n"),
        )
    }

    /// Sets a `net.*` sysctl in the namespace.
    ///
    /// # Errors
    /// When `sysctl` fails.
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Loads an nftables ruleset in the namespace (replacing a table of the same name).
    ///
    /// # Errors
    /// When `nft` rejects it.
    pub fn nft(&self, ruleset: &str) -> io::Result<()> {
        let path = std::env::temp_dir().join(format!("{}.nft", self.ns));
        std::fs::write(&path, ruleset)?;
        let result = self.exec(&["nft", "-f", &path.display().to_string()]);
        let _ = std::fs::remove_file(&path);
        result.map(drop)
    }
}
