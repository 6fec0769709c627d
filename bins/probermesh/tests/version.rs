//! The binary reports the one version of its build (`probermesh_adapters::version::VERSION`:
//! `PROBERMESH_VERSION` at build time, else the crate version) in both spellings.

use std::process::Command;

use probermesh_adapters::version::VERSION;

const BIN: &str = env!("CARGO_BIN_EXE_probermesh");

#[test]
fn the_binary_reports_the_version_of_its_build() {
    let output = Command::new(BIN).arg("version").output().expect("runs");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("probermesh {VERSION}")
    );
    let legacy = Command::new(BIN).arg("-v").output().expect("runs");
    assert!(legacy.status.success(), "{legacy:?}");
    assert_eq!(
        String::from_utf8_lossy(&legacy.stdout).trim(),
        format!("probermesh version {VERSION}")
    );
}
