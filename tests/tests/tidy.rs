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
        // Pure computation: task signatures are checked in core (`core::task::signing`).
        "ed25519-dalek",
        // Pure computation: upgrades compare semantic versions (`core::upgrade::version`).
        "semver",
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

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("a source directory") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = fs::read_to_string(&path).expect("a source file");
                let name = path
                    .strip_prefix(repo())
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                found.push((name, text));
            }
        }
    }
    found.sort();
    found
}

/// The code of a source file before its `#[cfg(test)]` module (tests may reach further).
fn non_test_code(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or(text)
}

#[test]
fn the_binary_is_wiring_only() {
    // The binary parses flags, builds adapters and starts drivers: it names no wire format,
    // no delivery state and no fake, implements no port, drives no state machine and reads
    // no wall clock (docs/architecture.md, `bins/probermesh/`).
    let forbidden = [
        (
            "probermesh_core::wire",
            "a wire format (conversions live in core::wire)",
        ),
        (
            "probermesh_core::delivery",
            "delivery state (the link adapter's)",
        ),
        ("probermesh_core::fake", "a fake"),
        (
            ".handle_event(",
            "a state machine step (drivers live in adapters::driver)",
        ),
        (
            ".handle_timeout(",
            "a state machine step (drivers live in adapters::driver)",
        ),
        (
            ".poll_action(",
            "a state machine step (drivers live in adapters::driver)",
        ),
        ("SystemTime::now", "the wall clock (the Clock port)"),
        (
            "impl ServerLink for",
            "a port implementation (adapters implement ports)",
        ),
        (
            "impl ReportSource for",
            "a port implementation (adapters implement ports)",
        ),
        (
            "impl MetricsExporter for",
            "a port implementation (adapters implement ports)",
        ),
        (
            "impl Store for",
            "a port implementation (adapters implement ports)",
        ),
        (
            "impl PoolSource for",
            "a port implementation (adapters implement ports)",
        ),
        (
            "impl AdminApi for",
            "an endpoint implementation (adapters::driver::server)",
        ),
    ];
    let mut offences = Vec::new();
    for (file, text) in sources(&repo().join("bins/probermesh/src")) {
        let code = non_test_code(&text);
        for (pattern, what) in forbidden {
            if code.contains(pattern) {
                offences.push(format!("{file}: `{pattern}` is {what}"));
            }
        }
        // Files only the log directory and the demo's scratch directory may touch.
        if code.contains("std::fs::") && !file.ends_with("logging.rs") && !file.ends_with("demo.rs")
        {
            offences.push(format!("{file}: `std::fs::` (files go through adapters)"));
        }
    }
    assert!(
        offences.is_empty(),
        "bins/ is not wiring only:\n{}",
        offences.join("\n")
    );
}

#[test]
fn adapters_import_no_other_adapter() {
    // An adapter implements its port with its library and imports core and the shared leaves
    // only (`secret`, `data_dir`, `bounded_read`, `log_limit`, `version`); `driver` is the one
    // room that composes adapters (it runs the state machines over them) and `clock` is a leaf
    // the drivers read.
    let leaves = ["secret", "data_dir", "bounded_read", "log_limit", "version"];
    let adapters_src = repo().join("adapters/src");
    let rooms: Vec<String> = fs::read_dir(&adapters_src)
        .expect("adapters/src")
        .map(|e| e.expect("entry").path())
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .filter(|name| name != "lib")
        .collect();
    let mut offences = Vec::new();
    for (file, text) in sources(&adapters_src) {
        let rel = file.trim_start_matches("adapters/src/");
        let room = rel.split(['/', '.']).next().unwrap_or_default().to_owned();
        if room == "driver" || room == "lib" {
            continue;
        }
        for other in &rooms {
            if *other == room || leaves.contains(&other.as_str()) {
                continue;
            }
            if text.contains(&format!("crate::{other}::"))
                || text.contains(&format!("crate::{other};"))
            {
                offences.push(format!("{file} (room `{room}`) imports `crate::{other}`"));
            }
        }
    }
    assert!(offences.is_empty(), "{}", offences.join("\n"));
}

#[test]
fn the_http_prober_opens_no_file() {
    // An agent never opens a path the server names (the server reads them and sends the
    // contents): the HTTP prober and its TLS setup have no way to reach the file system.
    let forbidden = [
        "std::fs",
        "tokio::fs",
        "File::open",
        "from_pem_file",
        "pem_file_iter",
        "read_regular_file",
    ];
    let mut offences = Vec::new();
    for (file, text) in sources(&repo().join("adapters/src/http")) {
        for word in forbidden {
            if text.contains(word) {
                offences.push(format!("{file} uses `{word}`"));
            }
        }
    }
    assert!(offences.is_empty(), "{}", offences.join("\n"));
}
