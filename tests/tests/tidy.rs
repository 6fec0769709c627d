//! Architecture tidy checks: `docs/architecture.md` names every crate directory and every core
//! module (a code map nobody checks goes stale), and core's manifest only lists allowed crates.

use std::fs;
use std::path::Path;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn the_code_map_names_every_crate_and_core_module() {
    let architecture = fs::read_to_string(repo().join("docs/architecture.md"))
        .expect("docs/architecture.md exists");
    let mut missing = Vec::new();
    for dir in [
        "core/",
        "adapters/",
        "bins/probermesh/",
        "tests/",
        "fixtures/",
        "docs/",
    ] {
        if !architecture.contains(&format!("`{dir}`")) {
            missing.push(dir.to_owned());
        }
    }
    let src = repo().join("core/src");
    for entry in fs::read_dir(&src).expect("core/src") {
        let path = entry.expect("entry").path();
        let name = path
            .file_stem()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if name == "lib" {
            continue;
        }
        if !architecture.contains(&format!("`core::{name}`")) {
            missing.push(format!("core::{name}"));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/architecture.md does not mention: {missing:?}"
    );
}

#[test]
fn core_depends_only_on_allowed_crates() {
    let manifest = fs::read_to_string(repo().join("core/Cargo.toml")).expect("core/Cargo.toml");
    let dependencies = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("a [dependencies] table");
    let allowed = [
        "async-trait",
        "serde",
        "postcard",
        "thiserror",
        "regex",
        "serde-saphyr",
    ];
    for line in dependencies
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name = line.split(['.', '=', ' ']).next().unwrap_or_default();
        assert!(
            allowed.contains(&name),
            "core/Cargo.toml adds {name:?}; core stays pure (see docs/architecture.md)"
        );
    }
}

#[test]
fn the_lockfile_has_no_aws_lc() {
    // Two rustls crypto providers in one build make rustls panic at run time; the link and
    // every TLS user build with ring explicitly (see docs/link.md).
    let lock = fs::read_to_string(repo().join("Cargo.lock")).expect("Cargo.lock");
    let offenders: Vec<&str> = lock
        .lines()
        .filter(|line| line.starts_with("name = ") && line.contains("aws-lc"))
        .collect();
    assert!(
        offenders.is_empty(),
        "Cargo.lock pulls in aws-lc: {offenders:?}; turn off default features and use ring"
    );
}
