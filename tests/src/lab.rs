//! The mesh lab: hosts in their own network namespaces on one L2 segment (a bridge in a
//! namespace of its own), addresses `198.18.0.<n>/24`, each able to run processes and carry
//! faults through its [`Namespace`]. Everything is removed when the [`Lab`] is dropped, also
//! when a test panics; namespaces of killed runs, and the processes left inside them, are
//! removed at the next start ([`crate::netns::remove_stale`]).
//!
//! Needs root; without it [`Lab::new`] fails with a message saying so.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::netns::{Namespace, remove_stale};

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// A lab: its hosts and the bridge namespace joining them (dropped in that order).
#[derive(Debug)]
pub struct Lab {
    hosts: Vec<Namespace>,
    bridge: Namespace,
    number: u32,
    prefix: String,
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
        let bridge = Namespace::create(format!("{prefix}br"))?;
        bridge.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        bridge.exec(&["ip", "link", "set", "br0", "up"])?;
        bridge.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(Self {
            hosts: Vec::new(),
            bridge,
            number,
            prefix,
        })
    }

    /// Adds a host at `198.18.0.<octet>` and returns its index.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn add_host(&mut self, octet: u8) -> io::Result<usize> {
        let index = self.hosts.len();
        self.hosts
            .push(Namespace::create(format!("{}h{index}", self.prefix))?);
        let host = &self.hosts[index];
        // Interface names have at most 15 bytes.
        let outer = format!(
            "v{}l{}b{index}",
            std::process::id() % 100_000,
            self.number % 1000
        );
        let inner = "eth0";
        crate::netns::run(
            "ip",
            &[
                "link",
                "add",
                &outer,
                "netns",
                self.bridge.name(),
                "type",
                "veth",
                "peer",
                "name",
                inner,
                "netns",
                host.name(),
            ],
        )?;
        self.bridge
            .exec(&["ip", "link", "set", &outer, "master", "br0"])?;
        self.bridge.exec(&["ip", "link", "set", &outer, "up"])?;
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
    pub fn host(&self, index: usize) -> &Namespace {
        &self.hosts[index]
    }

    /// The host `index`, to start or stop its processes.
    pub fn host_mut(&mut self, index: usize) -> &mut Namespace {
        &mut self.hosts[index]
    }
}
