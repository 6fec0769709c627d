//! The server's probe file (`-server.probe.file`): Go-compatible YAML (spec §5.3) parsed and
//! validated into [`ProbeConfig`]s, or refused with an error that
//! names the file, line, column and key. No I/O: the caller reads the file and passes its text.
//!
//! Deliberate differences from the Go system: every block starts from the module defaults
//! (no settings leak between blocks), unknown keys, unknown probe types, misplaced `http:` /
//! `icmp:` blocks and a second block for the same (region, type) are errors, and options of
//! prometheus/common's HTTP client that probermesh does not implement are refused by name.

mod block;
mod duration;
mod http;
mod node;
mod size;

pub use duration::{DurationError, format_duration, parse_duration};
pub use size::{SizeError, parse_base2_bytes};

use node::{Node, Pos, Problem};

use crate::model::ProbeConfig;

/// Largest probe file accepted, in bytes.
pub const MAX_PROBE_FILE_BYTES: usize = 16 * 1024 * 1024;

/// Most YAML nodes (scalars, lists, mappings, alias expansions included) in a probe file: far
/// above any real mesh, far below what could exhaust memory.
const MAX_YAML_NODES: usize = 1_000_000;
/// Most nodes replayed from aliases (`*anchor`), against alias bombs.
const MAX_ALIAS_REPLAYED_EVENTS: usize = 100_000;
/// Deepest nesting of lists and mappings; the schema needs 7.
const MAX_YAML_DEPTH: usize = 32;

/// A parsed and validated probe file.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct ProbeFile {
    /// The `prober_configs:` blocks in file order; at most one per (region, probe type).
    pub configs: Vec<ProbeConfig>,
}

/// Why a probe file was refused. Displays as `<source_name>:<line>:<column>: <message>`, where
/// the message names the key (as a path like `prober_configs[1].http.method`) and what is wrong.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("{source_name}:{line}:{column}: {message}")]
pub struct ProbeFileError {
    source_name: String,
    line: u64,
    column: u64,
    message: String,
}

impl ProbeFileError {
    fn new(source_name: &str, at: Pos, message: String) -> Self {
        Self {
            source_name: source_name.to_owned(),
            line: at.line,
            column: at.column,
            message,
        }
    }

    /// The name the caller gave the file (usually its path).
    #[must_use]
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// 1-based line of the offending key or value.
    #[must_use]
    pub fn line(&self) -> u64 {
        self.line
    }

    /// 1-based column of the offending key or value.
    #[must_use]
    pub fn column(&self) -> u64 {
        self.column
    }

    /// What is wrong, without the location prefix.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Parses and validates the probe file `yaml`; `source_name` (usually the path) prefixes
/// every error. An empty document, or one without `prober_configs`, is a valid file with no
/// blocks (the server runs on discovery alone then).
///
/// # Errors
/// [`ProbeFileError`] for a file over [`MAX_PROBE_FILE_BYTES`], invalid or over-complex YAML,
/// and any schema or value error; the first problem found is reported.
pub fn parse_probe_file(source_name: &str, yaml: &str) -> Result<ProbeFile, ProbeFileError> {
    if yaml.len() > MAX_PROBE_FILE_BYTES {
        return Err(ProbeFileError::new(
            source_name,
            Pos::START,
            format!(
                "the probe file is {} bytes long; the limit is {MAX_PROBE_FILE_BYTES} bytes (16 MiB)",
                yaml.len()
            ),
        ));
    }
    let root = parse_yaml(yaml).map_err(|p| ProbeFileError::new(source_name, p.at, p.message))?;
    let Some(root) = root.filter(|root| !root.is_null()) else {
        return Ok(ProbeFile::default());
    };
    let configs = block::probe_configs(&root)
        .map_err(|p| ProbeFileError::new(source_name, p.at, p.message))?;
    Ok(ProbeFile { configs })
}

/// The YAML text as a located tree, or `None` for an empty document.
fn parse_yaml(yaml: &str) -> Result<Option<Node>, Problem> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = MAX_YAML_NODES;
    budget.max_events = MAX_YAML_NODES.saturating_mul(3);
    budget.max_depth = MAX_YAML_DEPTH;
    budget.flow_nesting_limit = MAX_YAML_DEPTH;
    budget.max_total_scalar_bytes = MAX_PROBE_FILE_BYTES;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = MAX_ALIAS_REPLAYED_EVENTS;
    options.strict_booleans = true;
    options.reject_unsupported_tags = true;
    options.with_snippet = false;
    let mut root: Option<Node> =
        serde_saphyr::from_str_with_options(yaml, options).map_err(|e| yaml_problem(&e))?;
    if let Some(root) = &mut root {
        root.attach_text(yaml);
    }
    Ok(root)
}

/// A serde-saphyr error as a one-line message at its location.
fn yaml_problem(error: &serde_saphyr::Error) -> Problem {
    use serde_saphyr::MessageFormatter as _;
    let at = error
        .location()
        .filter(|l| l.line() > 0)
        .map_or(Pos::START, |l| Pos {
            line: l.line(),
            column: l.column(),
        });
    let text = serde_saphyr::UserMessageFormatter.format_message(error.without_snippet());
    // The formatter's text may quote the input; keep control characters out of logs.
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Problem {
        at,
        message: format!("invalid YAML: {text}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::model::http_module::IpProtocol;
    use crate::model::{HttpModule, IcmpModule, ProbeKind, ProbeModule};

    fn parse(yaml: &str) -> Result<ProbeFile, ProbeFileError> {
        parse_probe_file("probes.yaml", yaml)
    }

    fn error(yaml: &str) -> String {
        parse(yaml).unwrap_err().to_string()
    }

    const GO_EXAMPLE: &str = "prober_configs:
  - prober_type: http
    region: ali-cn-beijing
    targets:
      - http://www.baidu.com
      - http://www.taobao.com
  - prober_type: icmp
    region: gcp-ap-southeast-1
    targets:
      - 8.8.8.8
      - www.baidu.com
";

    #[test]
    fn the_go_readme_example_parses() {
        let file = parse(GO_EXAMPLE).unwrap();
        assert_eq!(file.configs.len(), 2);
        let http = &file.configs[0];
        assert_eq!(
            (http.region.as_str(), http.kind()),
            ("ali-cn-beijing", ProbeKind::Http)
        );
        assert_eq!(http.module, ProbeModule::Http(HttpModule::default().into()));
        let raw: Vec<_> = http.targets.iter().map(|t| t.raw()).collect();
        assert_eq!(raw, ["http://www.baidu.com", "http://www.taobao.com"]);
        let icmp = &file.configs[1];
        assert_eq!(icmp.module, ProbeModule::Icmp(IcmpModule::default()));
        assert_eq!(icmp.targets.len(), 2);
    }

    #[test]
    fn empty_files_have_no_blocks() {
        for yaml in [
            "",
            "\n",
            "# only a comment\n",
            "---\n",
            "~\n",
            "prober_configs:\n",
            "prober_configs: []\n",
            "{}\n",
        ] {
            assert_eq!(parse(yaml), Ok(ProbeFile::default()), "{yaml:?}");
        }
    }

    #[test]
    fn defaults_do_not_leak_between_blocks() {
        let file = parse(
            "prober_configs:
  - prober_type: http
    region: a
    http:
      headers: {X-Leak: yes}
      valid_status_codes: [204]
      preferred_ip_protocol: ip6
    targets: [a.example]
  - prober_type: http
    region: b
    targets: [b.example]
  - prober_type: http
    region: c
    http:
      method: HEAD
    targets: [c.example]
",
        )
        .unwrap();
        let ProbeModule::Http(first) = &file.configs[0].module else {
            panic!("not http")
        };
        assert_eq!(first.headers, [("X-Leak".to_owned(), "yes".to_owned())]);
        assert_eq!(first.preferred_ip_protocol, IpProtocol::Ip6);
        assert_eq!(
            file.configs[1].module,
            ProbeModule::Http(HttpModule::default().into())
        );
        let expected_third = HttpModule {
            method: "HEAD".to_owned(),
            ..HttpModule::default()
        };
        assert_eq!(
            file.configs[2].module,
            ProbeModule::Http(expected_third.into())
        );
    }

    #[test]
    fn icmp_zero_and_missing_values_take_the_defaults() {
        let file = parse(
            "prober_configs:
  - prober_type: icmp
    region: a
    icmp: {payload_size: 0, packet_count: 0, interval: 0}
  - prober_type: icmp
    region: b
    icmp: {interval: ''}
  - prober_type: icmp
    region: c
    icmp: {payload_size: 24, packet_count: 10000, interval: 1s}
  - prober_type: icmp
    region: d
    icmp:
",
        )
        .unwrap();
        for config in &file.configs[..2] {
            assert_eq!(config.module, ProbeModule::Icmp(IcmpModule::default()));
        }
        let custom = IcmpModule {
            payload_size: 24,
            packet_count: 10_000,
            interval: Duration::from_secs(1),
        };
        assert_eq!(file.configs[2].module, ProbeModule::Icmp(custom));
        assert_eq!(
            file.configs[3].module,
            ProbeModule::Icmp(IcmpModule::default())
        );
    }

    #[test]
    fn duplicate_targets_keep_the_first() {
        let file = parse("prober_configs:\n  - {prober_type: icmp, region: a, targets: [1.1.1.1, 8.8.8.8, 1.1.1.1]}\n").unwrap();
        let raw: Vec<_> = file.configs[0].targets.iter().map(|t| t.raw()).collect();
        assert_eq!(raw, ["1.1.1.1", "8.8.8.8"]);
    }

    #[test]
    fn errors_are_precise() {
        for (yaml, expected) in [
            (
                "prober_configs:\n  - prober_type: http\n    region: a\n    http:\n      fail_if_body_matches_regexp: text.*\n",
                "probes.yaml:5:36: prober_configs[0].http.fail_if_body_matches_regexp: expected a list, found the string \"text.*\"",
            ),
            (
                "prober_configs:\n  - prober_type: tcp\n    region: a\n",
                "probes.yaml:2:18: prober_configs[0].prober_type: unknown probe type \"tcp\"; expected http or icmp",
            ),
            (
                "prober_configs:\n  - prober_type: icmp\n    region: a\n    http: {}\n",
                "probes.yaml:4:5: prober_configs[0].http: an `http:` block is only allowed when prober_type is http; this block is icmp",
            ),
            (
                "prober_configs:\n  - prober_type: http\n    region: a\n    icmp: {}\n",
                "probes.yaml:4:5: prober_configs[0].icmp: an `icmp:` block is only allowed when prober_type is icmp; this block is http",
            ),
            (
                "prober_configs:\n  - prober_type: icmp\n    region: 'eu west'\n",
                "probes.yaml:3:13: prober_configs[0].region: region name \"eu west\" holds ' '",
            ),
            (
                "prober_configs:\n  - prober_type: icmp\n    region: a\n    targets:\n      - 1.1.1.1\n      - 'bad host'\n",
                "probes.yaml:6:9: prober_configs[0].targets[1]: ICMP target \"bad host\" is neither an IP address nor a valid host name",
            ),
            (
                "prober_configs:\n  - prober_type: icmp\n    region: a\n  - prober_type: http\n    region: a\n  - prober_type: icmp\n    region: a\n",
                "probes.yaml:6:5: prober_configs[2]: region \"a\" already has an icmp block at line 2 (prober_configs[0])",
            ),
            (
                "prober_configs:\n  - prober_type: icmp\n",
                "probes.yaml:2:5: prober_configs[0]: the key `region` is required",
            ),
            (
                "prober_configs:\n  - region: a\n",
                "probes.yaml:2:5: prober_configs[0]: the key `prober_type` is required",
            ),
            (
                "prober_configs:\n  - prober_type: icmp\n    region: a\n    target: [x]\n",
                "probes.yaml:4:5: prober_configs[0]: unknown key `target`; the keys allowed here are: prober_type, region, http, icmp, targets",
            ),
            (
                "probe_configs: []\n",
                "probes.yaml:1:1: probe file: unknown key `probe_configs`; the keys allowed here are: prober_configs",
            ),
            (
                "prober_configs: {}\n",
                "probes.yaml:1:17: prober_configs: expected a list, found a mapping",
            ),
            (
                "- a\n",
                "probes.yaml:1:1: probe file: expected a mapping of keys to values, found a list",
            ),
            (
                "prober_configs:\n  - prober_type: icmp\n    region: a\n    icmp: {payload_size: 23}\n",
                "probes.yaml:4:26: prober_configs[0].icmp.payload_size: 23 bytes is too small; the minimum is 24",
            ),
            (
                "prober_configs:\n  - prober_type: icmp\n    region: a\n    icmp: {payload_size: 65508}\n",
                "probes.yaml:4:26: prober_configs[0].icmp.payload_size: 65508 bytes is too large; the maximum is 65507",
            ),
            (
                "prober_configs:\n  - prober_type: icmp\n    region: a\n    icmp: {payload_size: -1}\n",
                "probes.yaml:4:26: prober_configs[0].icmp.payload_size: -1 is negative",
            ),
            (
                "prober_configs:\n  - prober_type: icmp\n    region: a\n    icmp: {packet_count: 10001}\n",
                "probes.yaml:4:26: prober_configs[0].icmp.packet_count: 10001 packets per probe is too many; the maximum is 10000",
            ),
            (
                "prober_configs:\n  - prober_type: icmp\n    region: a\n    icmp: {packet_count: -3}\n",
                "probes.yaml:4:26: prober_configs[0].icmp.packet_count: -3 is negative",
            ),
            (
                "prober_configs:\n  - prober_type: icmp\n    region: a\n    icmp: {interval: 1.5s}\n",
                "probes.yaml:4:22: prober_configs[0].icmp.interval: invalid duration \"1.5s\"",
            ),
            (
                "prober_configs:\n  - prober_type: icmp\n    region: a\n    icmp: {packet_count: 1.5}\n",
                "probes.yaml:4:26: prober_configs[0].icmp.packet_count: expected an integer, found the number 1.5",
            ),
            (
                "prober_configs:\n  - prober_type: icmp\n    region: a\n    region: b\n",
                "probes.yaml:4:5: invalid YAML: duplicate mapping key `region`",
            ),
            ("prober_configs: [\n", "probes.yaml:1:17: invalid YAML:"),
            ("a: 1\n---\nb: 2\n", "probes.yaml:3:1: invalid YAML:"),
            (
                "prober_configs: !custom []\n",
                "probes.yaml:1:25: invalid YAML: unsupported tag `!custom`",
            ),
        ] {
            let text = error(yaml);
            assert!(
                text.starts_with(expected),
                "{yaml:?}\n  got:      {text}\n  expected: {expected}"
            );
        }
    }

    #[test]
    fn error_accessors() {
        let err = parse("prober_configs: {}\n").unwrap_err();
        assert_eq!(
            (err.source_name(), err.line(), err.column()),
            ("probes.yaml", 1, 17)
        );
        assert_eq!(
            err.message(),
            "prober_configs: expected a list, found a mapping"
        );
    }

    #[test]
    fn oversized_files_are_refused_before_parsing() {
        let yaml = format!("# {}\n", "x".repeat(MAX_PROBE_FILE_BYTES));
        let text = error(&yaml);
        assert!(
            text.starts_with(
                "probes.yaml:1:1: the probe file is 16777219 bytes long; the limit is"
            ),
            "{text}"
        );
    }

    #[test]
    fn alias_bombs_are_stopped() {
        let mut yaml = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..12 {
            let previous = level - 1;
            let refs = vec![format!("*a{previous}"); 10].join(", ");
            yaml.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
        }
        let text = error(&yaml);
        assert!(
            text.contains("invalid YAML: YAML document too large or too complex"),
            "{text}"
        );
    }

    #[test]
    fn large_realistic_files_fit_the_budget() {
        let mut yaml = String::from("prober_configs:\n");
        for region in 0..50 {
            yaml.push_str(&format!(
                "  - prober_type: icmp\n    region: r{region}\n    targets:\n"
            ));
            for host in 0..1000 {
                yaml.push_str(&format!(
                    "      - 10.{region}.{}.{}\n",
                    host / 256,
                    host % 256
                ));
            }
        }
        let file = parse(&yaml).unwrap();
        assert_eq!(file.configs.len(), 50);
        assert!(file.configs.iter().all(|c| c.targets.len() == 1000));
    }

    /// Each size a pool must stay within (one set of limits for the file and the wire) is
    /// refused at load, naming the block, the field and the limit: a file the server accepted
    /// but every agent refused would leave the mesh probing nothing.
    #[test]
    fn every_oversized_pool_is_refused_at_load_with_the_limit_named() {
        let blocks = "  - prober_type: icmp\n    region: r\n    targets: [198.18.0.1]\n"
            .repeat(crate::model::setting::MAX_CONFIGS_PER_POOL + 1);
        let targets: String = (0..=crate::model::setting::MAX_TARGETS_PER_CONFIG)
            .map(|i| format!("      - 10.{}.{}.{}\n", i >> 16, (i >> 8) & 255, i & 255))
            .collect();
        let body = "b".repeat(crate::model::setting::MAX_REQUEST_BODY_LEN + 1);
        let header = "h".repeat(crate::model::setting::MAX_TEXT_LEN + 1);
        let http = |field: &str| {
            format!(
                "prober_configs:\n  - prober_type: http\n    region: web\n    targets: [http://198.18.0.1/]\n    http:\n{field}"
            )
        };
        for (yaml, expected) in [
            (
                format!("prober_configs:\n{blocks}"),
                "10001 blocks; at most 10000 are allowed",
            ),
            (
                format!(
                    "prober_configs:\n  - prober_type: icmp\n    region: r\n    targets:\n{targets}"
                ),
                "100001 targets in one block; at most 100000 are allowed",
            ),
            (
                http(&format!("      body: {body}\n")),
                "http.body: the request body is 1048577 bytes long; the limit is 1048576 bytes (1 MiB)",
            ),
            (
                http(&format!("      headers:\n        X-Big: {header}\n")),
                "8193 bytes long; the limit is 8192 bytes",
            ),
        ] {
            let text = error(&yaml);
            assert!(text.contains(expected), "{expected:?} not in {text:?}");
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let yaml = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(error(&yaml).contains("invalid YAML"));
        let yaml: String = (0..200)
            .map(|depth| format!("{}k:\n", "  ".repeat(depth)))
            .collect();
        assert!(error(&yaml).contains("invalid YAML"));
    }

    /// Reads the fixture files of one folder as (name, text).
    fn fixtures(folder: &str) -> Vec<(String, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/probe-files")
            .join(folder);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
            .map(|path| {
                (
                    path.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read_to_string(&path).unwrap(),
                )
            })
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no fixtures in {}", dir.display());
        files
    }

    #[test]
    fn valid_fixtures_parse() {
        for (name, text) in fixtures("valid") {
            let file = parse_probe_file(&name, &text).unwrap_or_else(|e| panic!("{e}"));
            assert!(!file.configs.is_empty(), "{name}");
        }
    }

    #[test]
    fn invalid_fixtures_fail_with_the_expected_error() {
        for (name, text) in fixtures("invalid") {
            let first_line = text.lines().next().unwrap_or_default();
            let expected = first_line.strip_prefix("# expect: ").unwrap_or_else(|| {
                panic!("{name}: the first line must be `# expect: <error text>`")
            });
            let err = parse_probe_file(&name, &text).expect_err(&name).to_string();
            assert!(
                err.contains(expected),
                "{name}\n  got:      {err}\n  expected: {expected}"
            );
        }
    }

    fn valid_fixture_texts() -> Vec<String> {
        fixtures("valid")
            .into_iter()
            .map(|(_, text)| text)
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn never_panics_on_arbitrary_text(text in "\\PC{0,300}") {
            let _ = parse_probe_file("fuzz.yaml", &text);
        }

        #[test]
        fn never_panics_on_yaml_like_text(text in "[-\\[\\]{}:,&*!|>'\"#? \n a-z0-9]{0,300}") {
            let _ = parse_probe_file("fuzz.yaml", &text);
        }

        #[test]
        fn never_panics_on_mutated_valid_files(
            file_index in 0usize..64,
            edits in proptest::collection::vec((0usize..100_000, 0usize..4, "\\PC{0,3}"), 1..6),
        ) {
            let texts = valid_fixture_texts();
            let mut text = texts[file_index % texts.len()].clone();
            for (position, action, insert) in edits {
                let mut at = position % (text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                match action {
                    0 => text.insert_str(at, &insert),
                    1 => { let end = text[at..].char_indices().nth(3).map_or(text.len(), |(i, _)| at + i); text.replace_range(at..end, ""); }
                    2 => { let end = text[at..].char_indices().nth(1).map_or(text.len(), |(i, _)| at + i); text.replace_range(at..end, &insert); }
                    _ => { let line = text[..at].rfind('\n').map_or(0, |i| i + 1); text.insert_str(line, "  "); }
                }
            }
            let _ = parse_probe_file("mutated.yaml", &text);
        }
    }
}
