//! The `prober_configs:` entries: one block per (region, probe type), each checked into a
//! [`ProbeConfig`] with its own module built from the defaults afresh (the Go system leaked
//! settings from block to block), its targets parsed and de-duplicated, and a second block for
//! the same region and type refused (the Go system silently dropped the first).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::duration::parse_duration;
use super::http::{http_module, problem, required};
use super::node::{Node, Pos, Problem, join, shorten};
use crate::model::setting::{self, MAX_CONFIGS_PER_POOL, MAX_TARGETS_PER_CONFIG};
use crate::model::{IcmpModule, ProbeConfig, ProbeKind, ProbeModule, Region, Target};

const ROOT_KEYS: &[&str] = &["prober_configs"];
const BLOCK_KEYS: &[&str] = &["prober_type", "region", "http", "icmp", "targets"];
const ICMP_KEYS: &[&str] = &["payload_size", "packet_count", "interval"];

/// Reads the document root (a mapping with `prober_configs`) into the list of blocks.
pub(super) fn probe_configs(root: &Node) -> Result<Vec<ProbeConfig>, Problem> {
    let fields = root.fields("probe file", ROOT_KEYS, &[])?;
    let Some(list) = fields.get("prober_configs") else {
        return Ok(Vec::new());
    };
    let blocks = list.list("prober_configs")?;
    if blocks.len() > MAX_CONFIGS_PER_POOL {
        return Err(Problem::at(
            list.at,
            "prober_configs",
            format!(
                "{} blocks; at most {MAX_CONFIGS_PER_POOL} are allowed (a pool carries them all)",
                blocks.len()
            ),
        ));
    }
    let mut configs = Vec::with_capacity(blocks.len());
    // Where each (region, kind) was first configured, to refuse a second block.
    let mut first_block_at: HashMap<(Region, ProbeKind), (Pos, usize)> = HashMap::new();
    for (index, node) in blocks.iter().enumerate() {
        let path = format!("prober_configs[{index}]");
        let config = probe_config(node, &path)?;
        let key = (config.region.clone(), config.kind());
        if let Some((first_at, first_index)) = first_block_at.get(&key) {
            return Err(Problem::at(
                node.at,
                &path,
                format!(
                    "region {:?} already has an {} block at line {} (prober_configs[{first_index}]); \
                     put all {} targets of a region in one block",
                    config.region.as_str(),
                    config.kind(),
                    first_at.line,
                    config.kind(),
                ),
            ));
        }
        first_block_at.insert(key, (node.at, index));
        configs.push(config);
    }
    Ok(configs)
}

fn probe_config(node: &Node, path: &str) -> Result<ProbeConfig, Problem> {
    let fields = node.fields(path, BLOCK_KEYS, &[])?;

    let type_node = required(&fields, path, "prober_type")?;
    let type_path = join(path, "prober_type");
    let kind = match type_node.string(&type_path)?.as_str() {
        "http" => ProbeKind::Http,
        "icmp" => ProbeKind::Icmp,
        other => {
            return Err(Problem::at(
                type_node.at,
                &type_path,
                format!(
                    "unknown probe type {:?}; expected http or icmp",
                    shorten(other)
                ),
            ));
        }
    };

    let region_node = required(&fields, path, "region")?;
    let region_path = join(path, "region");
    let region = Region::new(&region_node.string(&region_path)?)
        .map_err(|e| Problem::at(region_node.at, &region_path, e))?;

    for (block, allowed_kind) in [("http", ProbeKind::Http), ("icmp", ProbeKind::Icmp)] {
        if kind != allowed_kind
            && let Some(at) = fields.key_at(block)
        {
            return Err(Problem::at(
                at,
                &join(path, block),
                format!(
                    "an `{block}:` block is only allowed when prober_type is {block}; this block is {kind}"
                ),
            ));
        }
    }
    let module = match kind {
        ProbeKind::Http => ProbeModule::Http(
            match fields.get("http") {
                Some(node) => http_module(node, &join(path, "http"))?,
                None => crate::model::HttpModule::default(),
            }
            .into(),
        ),
        ProbeKind::Icmp => ProbeModule::Icmp(match fields.get("icmp") {
            Some(node) => icmp_module(node, &join(path, "icmp"))?,
            None => IcmpModule::default(),
        }),
    };

    let targets = match fields.get("targets") {
        Some(node) => targets(node, &join(path, "targets"), kind)?,
        None => Vec::new(),
    };
    let config = ProbeConfig {
        region,
        module,
        targets,
    };
    // The same validation the wire decoder runs on every agent.
    config.validate().map_err(|e| problem(node.at, path, e))?;
    Ok(config)
}

/// The targets in file order; a repeated target string is dropped (the first one counts).
fn targets(node: &Node, path: &str, kind: ProbeKind) -> Result<Vec<Target>, Problem> {
    let items = node.list(path)?;
    if items.len() > MAX_TARGETS_PER_CONFIG {
        return Err(Problem::at(
            node.at,
            path,
            format!(
                "{} targets in one block; at most {MAX_TARGETS_PER_CONFIG} are allowed",
                items.len()
            ),
        ));
    }
    let mut seen = HashSet::with_capacity(items.len());
    let mut targets = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{index}]");
        let raw = item.string(&item_path)?;
        let target = Target::parse(kind, &raw).map_err(|e| Problem::at(item.at, &item_path, e))?;
        if seen.insert(raw) {
            targets.push(target);
        }
    }
    Ok(targets)
}

/// The value of the count `key` of an ICMP block: `None` for 0 or no value (the default,
/// `default` in the message, as in Go), an error for a negative number, else `check`ed.
fn defaulted_count(
    fields: &super::node::Fields<'_>,
    path: &str,
    key: &str,
    default: &str,
    check: fn(i128) -> Result<u32, setting::SettingError>,
) -> Result<Option<u32>, Problem> {
    let Some(node) = fields.get(key) else {
        return Ok(None);
    };
    let key_path = join(path, key);
    match node.integer(&key_path)? {
        0 => Ok(None),
        negative @ ..0 => Err(Problem::at(
            node.at,
            &key_path,
            format!("{negative} is negative; use 0 for the default of {default}"),
        )),
        value => check(value)
            .map(Some)
            .map_err(|e| problem(node.at, &key_path, e)),
    }
}

/// The `icmp:` block: 0 or a missing value takes the default (as in Go), negative or
/// out-of-range values are errors.
fn icmp_module(node: &Node, path: &str) -> Result<IcmpModule, Problem> {
    let fields = node.fields(path, ICMP_KEYS, &[])?;
    let mut module = IcmpModule::default();

    // 0 (or no value) takes the default, as in Go; anything else must be in range.
    if let Some(size) = defaulted_count(
        &fields,
        path,
        "payload_size",
        &format!("{} bytes", IcmpModule::DEFAULT_PAYLOAD_SIZE),
        setting::payload_size,
    )? {
        module.payload_size = size;
    }
    if let Some(count) = defaulted_count(
        &fields,
        path,
        "packet_count",
        &IcmpModule::DEFAULT_PACKET_COUNT.to_string(),
        setting::packet_count,
    )? {
        module.packet_count = count;
    }
    if let Some(node) = fields.get("interval") {
        let key_path = join(path, "interval");
        let text = node.string(&key_path)?;
        if !text.is_empty() {
            let interval = parse_duration(&text).map_err(|e| Problem::at(node.at, &key_path, e))?;
            if interval > Duration::ZERO {
                module.interval = interval;
            }
        }
    }
    // Said at the interval when the echoes outlast every probe timeout (with the default
    // interval, 15 ms, even the most echoes fit).
    if let Some(node) = fields.get("interval") {
        setting::echo_span(module.packet_count, module.interval)
            .map_err(|e| problem(node.at, &join(path, "interval"), e))?;
    }
    Ok(module)
}
