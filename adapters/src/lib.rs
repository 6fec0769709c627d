//! # probermesh-adapters
//!
//! The I/O half of ProberMesh: each module implements one port of [`probermesh_core::ports`]
//! with a real network library.
//!
//! - [`icmp`]: the ICMP engine ([`icmp::IcmpEngine`], port `IcmpPinger`), one socket per
//!   address family for every target, over socket2 (and nix for kernel timestamps).
//! - [`dns`]: timed name resolution ([`dns::HickoryDns`], port `DnsResolver`) over
//!   hickory-resolver.
//! - [`identity`]: who an agent is: its region ([`identity::detect_region`]: flag,
//!   `PROBER_REGION`, cloud metadata, default) and its IP ([`identity::agent_ip`]: override,
//!   intranet route, the server's view, an echo service).
//! - [`link`]: the agent↔server link over QUIC and TLS 1.3 ([`link::AgentLink`], port
//!   `ServerLink`; [`link::ReportServer`], port `ReportSource`), over quinn and rustls (ring).
//! - [`clock`]: the wall clock (port `Clock`), the system's or one following tokio's clock.
//! - [`store`]: records that outlive a process (port `Store`), one file each in the data
//!   directory; [`data_dir`]: the checks of that directory (a shared leaf, also used by the
//!   link's generated certificate).
//! - [`task_runner`]: remote tasks' commands as child processes
//!   ([`task_runner::ProcessTaskRunner`], port `TaskRunner`): their own process group, a
//!   cleared environment, output kept up to a limit, the whole group killed at the timeout and
//!   at the end.
//! - [`task_archive`]: what remote tasks did, kept on the server (port `TaskArchive`) in
//!   `-server.task.meta.dir`: the Go result files, a JSON record per run, the audit log,
//!   retention by age and total size.
//! - [`admin`]: the server's HTTP endpoints over hyper, within a connection cap.
//! - [`admin_client`]: the operator's client of those endpoints (`probermesh task`,
//!   `targets`, `task-key`): plain HTTP/1.1 over hyper, the admin token, signed tasks and the
//!   task key files.
//! - [`fd_limit`]: the open-files limit raised to the hard limit at start.
//! - [`log_limit`]: not an adapter: rate-limited log lines and escaped peer text, for
//!   adapters facing strangers.
//! - [`upgrade`]: agent self-upgrade's I/O: the release key and signatures (minisign or bare
//!   ed25519), the staged download beside the executable, the preflight, the trial of the new
//!   version, the swap and the record that survives the restart; the server's release fetch.
//! - [`version`]: not an adapter: this build's version (`PROBERMESH_VERSION` at build time, or
//!   the crate version), a leaf every adapter may read.
//! - [`driver`]: not an adapter: the tokio loops that run core's state machines over the
//!   ports.

pub mod admin;
pub mod admin_client;
pub mod bounded_read;
pub mod clock;
pub mod data_dir;
pub mod dns;
pub mod driver;
pub mod fd_limit;
pub mod http;
pub mod icmp;
pub mod identity;
pub mod link;
pub mod log_limit;
pub mod metrics;
pub mod probe_file;
pub mod secret;
pub mod store;
pub mod task_archive;
pub mod task_runner;
pub mod upgrade;
pub mod version;
