//! Hand-written fakes of every port in [`crate::ports`], for the drivers' tests and for users'
//! own (enable the `fake` feature).
//!
//! Each fake answers from a script set up by the test and records what it was asked, so a test
//! can assert both on what the code under test did with the answers and on what it asked for.
//! They use `std::sync::Mutex` only (no runtime), recover from poisoning (a panicking test
//! thread does not hide the record from the assertion that follows), and never block a thread:
//! the only method that waits, [`FakeServerLink`]'s `recv`, waits as a future.
//!
//! ```
//! use probermesh_core::fake::FakeDns;
//! use probermesh_core::ports::{DnsResolver, IpPreference};
//!
//! let dns = FakeDns::new();
//! dns.resolves_to("example.com", "192.0.2.1".parse().unwrap());
//! let found = pollster::block_on(dns.resolve("example.com", IpPreference::default())).unwrap();
//! assert_eq!(found.addr.to_string(), "192.0.2.1");
//! assert!(pollster::block_on(dns.resolve("other.example", IpPreference::default())).is_err());
//! assert_eq!(dns.calls().len(), 2);
//! ```

mod link;
mod network;
mod probers;
mod server;
mod tasks;
mod trace;
mod upgrade;

use std::sync::{Mutex, MutexGuard, PoisonError};

pub use link::{FakeReportSource, FakeServerLink};
pub use network::{MemoryNetwork, MemoryReportSource, MemoryServerLink};
pub use probers::{FakeDns, FakeHttpProber, FakePinger, HttpCall};
pub use server::{CapturingExporter, FakePoolSource, MemoryStore};
pub use tasks::{FakeTaskRunner, MemoryTaskArchive};
pub use trace::FakeTracer;
pub use upgrade::FakeInstaller;

/// Locks `mutex`, taking the data over even if a panicking thread poisoned it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
