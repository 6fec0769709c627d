//! Runs every data-driven aggregation scenario in `fixtures/aggregation/` (reports in,
//! expected series out) and fails with every unmet expectation of every file.

use probermesh_tests::{fixtures_dir, scenario::Scenario};

#[test]
fn every_aggregation_scenario_holds() {
    let dir = fixtures_dir().join("aggregation");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 7,
        "expected the scenario set in {}, found {files:?}",
        dir.display()
    );
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        match Scenario::parse(&text).and_then(|s| s.run()) {
            Ok(unmet) => failures.extend(unmet.into_iter().map(|u| format!("{name}: {u}"))),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} unmet expectations:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_wrong_expectation_is_reported() {
    // The runner itself must be able to fail: a scenario with a false expectation.
    let yaml = r"
description: a deliberately wrong expectation
methods: [mean]
regions: {a: 1, b: 1}
steps:
  - at: 1s
    mesh_round: {start: 0s, from: [a], to: [b], icmp: {sent: 10, received: 10}}
  - at: 30s
    expect:
      - {metric: prober_icmp_packet_loss_rate, labels: {source_region: a, target_region: b}, value: 50}
      - {metric: prober_icmp_failed, labels: {source_region: a, target_region: b}, absent: true}
";
    let unmet = Scenario::parse(yaml).unwrap().run().unwrap();
    assert_eq!(unmet.len(), 2, "{unmet:?}");
    assert!(unmet[0].contains("want 50"), "{unmet:?}");
    assert!(unmet[1].contains("should be absent"), "{unmet:?}");
}
