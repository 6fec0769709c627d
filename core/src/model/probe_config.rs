//! One block of the target pool: a region's targets of one kind with the module that says how
//! to probe them. Built from a probe-file block, or by discovery for agent addresses.

use std::sync::Arc;

use super::{HttpModule, IcmpModule, ProbeKind, Region, Target};

/// How the targets of a block are probed.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum ProbeModule {
    /// ICMP echo with these settings (the defaults for discovered targets).
    Icmp(IcmpModule),
    /// HTTP with this module, shared by the block's planned probes (its `body` alone may be
    /// 1 MiB: one copy per block, never one per probe).
    Http(Arc<HttpModule>),
}

impl ProbeModule {
    /// The probe kind the module is for.
    #[must_use]
    pub fn kind(&self) -> ProbeKind {
        match self {
            Self::Icmp(_) => ProbeKind::Icmp,
            Self::Http(_) => ProbeKind::Http,
        }
    }
}

/// A region's targets of one kind (`prober_configs[]` entry of the probe file).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ProbeConfig {
    /// The `target_region` label of every result for these targets.
    pub region: Region,
    /// How to probe; its kind is the block's `prober_type`.
    pub module: ProbeModule,
    /// The targets, each of the module's kind, in file order, without duplicates.
    pub targets: Vec<Target>,
}

impl ProbeConfig {
    /// The block's probe kind.
    #[must_use]
    pub fn kind(&self) -> ProbeKind {
        self.module.kind()
    }
}
