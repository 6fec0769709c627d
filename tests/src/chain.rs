//! A routed path of namespaces for path-tracing tests: two end hosts joined through a line of
//! routers (each a namespace forwarding IPv4), and leaf hosts hung off any node of the line.
//! Every link is its own /24 of 198.18.0.0/15 with static routes both ways, so a trace from
//! one end finds each router at its own TTL, as on a real path; faults are set per router
//! with nftables ([`Namespace::nft`]).
//!
//! Link `k` of the line joins node `k` (address `198.18.<20+k>.1`) to node `k+1`
//! (`198.18.<20+k>.2`); node 0 and the last node are the end hosts. Leaf `m` hangs off its
//! node through `198.18.<40+m>.0/24`: the node is `.1`, the leaf `.2`. A router answers a
//! probe with the address of the interface toward the prober (Linux's choice).
//!
//! Routers send ICMP errors without rate limiting (`net.ipv4.icmp_ratelimit=0`, and
//! `icmp_ratemask=0` for the global per-second limit too), so what a
//! test sees depends only on the faults it sets. Everything is removed when the [`Chain`] is
//! dropped, also when a test panics. Needs root.

use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::netns::{Namespace, remove_stale};

static NEXT_CHAIN: AtomicU32 = AtomicU32::new(0);

/// Third octet of line link 0.
const LINE_OCTET: u8 = 20;
/// Third octet of leaf 0's link.
const LEAF_OCTET: u8 = 40;

/// A line of nodes (end, routers…, end) and leaves off it.
#[derive(Debug)]
pub struct Chain {
    nodes: Vec<Namespace>,
    /// Each leaf with the node it hangs off.
    leaves: Vec<(Namespace, usize)>,
}

impl Chain {
    /// Two end hosts joined through `routers` routers (1 to 19), each link routed both ways.
    ///
    /// # Errors
    /// When not root, or when `ip` or `sysctl` fails; the message names the command.
    pub fn new(routers: usize) -> io::Result<Self> {
        Self::with_leaves(routers, &[])
    }

    /// As [`Self::new`], with a leaf host off each node index in `leaves_at` (0 is the first
    /// end host, `routers + 1` the last).
    ///
    /// # Errors
    /// As [`Self::new`]; also when a leaf's node does not exist.
    pub fn with_leaves(routers: usize, leaves_at: &[usize]) -> io::Result<Self> {
        if !(1..=19).contains(&routers) {
            return Err(io::Error::other(format!(
                "a chain has 1 to 19 routers, not {routers}"
            )));
        }
        remove_stale();
        let number = NEXT_CHAIN.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let prefix = format!("pm{pid}n{}", 300 + number);
        let mut chain = Self {
            nodes: Vec::new(),
            leaves: Vec::new(),
        };
        let count = routers + 2;
        for index in 0..count {
            let ns = Namespace::create(format!("{prefix}c{index}"))?;
            ns.exec(&["ip", "link", "set", "lo", "up"])?;
            chain.nodes.push(ns);
        }
        // Interface names have at most 15 bytes.
        let tag = format!("{}{}", pid % 10_000, number % 10);
        for k in 0..count - 1 {
            let octet = LINE_OCTET + k as u8;
            veth(
                &chain.nodes[k],
                &format!("l{tag}r{k}"),
                Ipv4Addr::new(198, 18, octet, 1),
                &chain.nodes[k + 1],
                &format!("l{tag}l{}", k + 1),
                Ipv4Addr::new(198, 18, octet, 2),
            )?;
        }
        for (m, &node) in leaves_at.iter().enumerate() {
            if node >= count {
                return Err(io::Error::other(format!(
                    "leaf {m} hangs off node {node}, but the chain has {count} nodes"
                )));
            }
            let leaf = Namespace::create(format!("{prefix}f{m}"))?;
            leaf.exec(&["ip", "link", "set", "lo", "up"])?;
            let octet = LEAF_OCTET + m as u8;
            veth(
                &chain.nodes[node],
                &format!("f{tag}n{m}"),
                Ipv4Addr::new(198, 18, octet, 1),
                &leaf,
                &format!("f{tag}f{m}"),
                Ipv4Addr::new(198, 18, octet, 2),
            )?;
            chain.leaves.push((leaf, node));
        }
        chain.route()?;
        Ok(chain)
    }

    /// Static routes everywhere, forwarding on the nodes, no ICMP rate limit.
    fn route(&self) -> io::Result<()> {
        let count = self.nodes.len();
        // Each subnet with the node it is attached at: line link k sits between k and k+1.
        let mut subnets: Vec<(u8, usize, usize)> = (0..count - 1)
            .map(|k| (LINE_OCTET + k as u8, k, k + 1))
            .collect();
        for (m, (_, node)) in self.leaves.iter().enumerate() {
            subnets.push((LEAF_OCTET + m as u8, *node, *node));
        }
        for (index, node) in self.nodes.iter().enumerate() {
            for (key, value) in [
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.icmp_ratelimit", "0"),
                ("net.ipv4.icmp_ratemask", "0"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
            ] {
                node.sysctl(key, value)?;
            }
            for &(octet, left, right) in &subnets {
                let via = if right < index {
                    // Toward the first end: the left neighbour on link index-1.
                    Ipv4Addr::new(198, 18, LINE_OCTET + (index - 1) as u8, 1)
                } else if left > index {
                    Ipv4Addr::new(198, 18, LINE_OCTET + index as u8, 2)
                } else {
                    continue; // attached here
                };
                node.exec(&[
                    "ip",
                    "route",
                    "add",
                    &format!("198.18.{octet}.0/24"),
                    "via",
                    &via.to_string(),
                ])?;
            }
        }
        for (m, (leaf, _)) in self.leaves.iter().enumerate() {
            leaf.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            leaf.exec(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &Ipv4Addr::new(198, 18, LEAF_OCTET + m as u8, 1).to_string(),
            ])?;
        }
        Ok(())
    }

    /// Node `index` of the line (0 and [`Self::last`] are the end hosts).
    ///
    /// # Panics
    /// When there is no such node (a test's mistake).
    #[must_use]
    pub fn node(&self, index: usize) -> &Namespace {
        &self.nodes[index]
    }

    /// As [`Self::node`], to start processes.
    ///
    /// # Panics
    /// When there is no such node.
    pub fn node_mut(&mut self, index: usize) -> &mut Namespace {
        &mut self.nodes[index]
    }

    /// The index of the last end host.
    #[must_use]
    pub fn last(&self) -> usize {
        self.nodes.len() - 1
    }

    /// Leaf `m`.
    ///
    /// # Panics
    /// When there is no such leaf.
    #[must_use]
    pub fn leaf(&self, m: usize) -> &Namespace {
        &self.leaves[m].0
    }

    /// As [`Self::leaf`], to start processes.
    ///
    /// # Panics
    /// When there is no such leaf.
    pub fn leaf_mut(&mut self, m: usize) -> &mut Namespace {
        &mut self.leaves[m].0
    }

    /// The first end host's address.
    #[must_use]
    pub fn first_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, LINE_OCTET, 1)
    }

    /// The last end host's address.
    #[must_use]
    pub fn last_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, LINE_OCTET + (self.nodes.len() - 2) as u8, 2)
    }

    /// Leaf `m`'s address.
    #[must_use]
    pub fn leaf_addr(&self, m: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, LEAF_OCTET + m as u8, 2)
    }

    /// The address router `index` answers with to a prober at the first end (or a leaf off a
    /// node before it): its interface toward node 0.
    #[must_use]
    pub fn toward_first(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, LINE_OCTET + (index - 1) as u8, 2)
    }

    /// The address router `index` answers with to a prober at the last end.
    #[must_use]
    pub fn toward_last(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, LINE_OCTET + index as u8, 1)
    }

    /// The address a leaf's node answers with to a prober on leaf `m`.
    #[must_use]
    pub fn toward_leaf(&self, m: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, LEAF_OCTET + m as u8, 1)
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        // Leaves first, then the line (each namespace's drop stops its processes).
        self.leaves.clear();
        self.nodes.clear();
    }
}

/// A veth pair `a_name`/`b_name` between `a` and `b`, addressed and up.
fn veth(
    a: &Namespace,
    a_name: &str,
    a_addr: Ipv4Addr,
    b: &Namespace,
    b_name: &str,
    b_addr: Ipv4Addr,
) -> io::Result<()> {
    crate::netns::run(
        "ip",
        &[
            "link",
            "add",
            a_name,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            b_name,
            "netns",
            b.name(),
        ],
    )?;
    for (ns, name, addr) in [(a, a_name, a_addr), (b, b_name, b_addr)] {
        ns.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", name])?;
        ns.exec(&["ip", "link", "set", name, "up"])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The addressing scheme, without namespaces.
    #[test]
    fn addresses_follow_the_scheme() {
        let chain = Chain {
            nodes: Vec::new(),
            leaves: Vec::new(),
        };
        assert_eq!(chain.first_addr(), Ipv4Addr::new(198, 18, 20, 1));
        assert_eq!(chain.toward_first(2), Ipv4Addr::new(198, 18, 21, 2));
        assert_eq!(chain.toward_last(2), Ipv4Addr::new(198, 18, 22, 1));
        assert_eq!(chain.leaf_addr(1), Ipv4Addr::new(198, 18, 41, 2));
    }
}
