//! `probermesh upgrade`: the Go ProberMesh-CLI's `upgrade` command (`--version`,
//! `--download.url`, `--md5sum`, `--force`), with the admin token, our `--sha256`,
//! `--signature-file` and strategy flags; it follows the rollout until it completes (exit 0),
//! halts or is aborted (exit 1). `--status`, `--pause`, `--resume`, `--abort` act on the
//! rollout under way instead.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use argh::FromArgs;
use probermesh_adapters::admin_client::{self, AdminClient, ServerUrl};
use probermesh_adapters::bounded_read::{Links, read_regular_file};
use serde_json::{Value, json};

use crate::print_line;

/// How long the server may take to download and check the binary before it answers.
const START_TIMEOUT: Duration = Duration::from_secs(330);
/// How often the rollout is looked at while following it.
const POLL_EVERY: Duration = Duration::from_secs(2);
/// How long the server may stay unreachable (a restart) while a rollout is followed.
const UNREACHABLE_FOR: Duration = Duration::from_secs(120);
/// The longest signature file read.
const MAX_SIGNATURE_FILE_BYTES: u64 = 8 * 1024;

/// Roll a new agent binary out to the mesh (POST /-/upgrade) and follow it.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "upgrade")]
pub(crate) struct UpgradeArgs {
    /// the server's HTTP address (default 0.0.0.0:6001)
    #[argh(option, default = "String::from(\"0.0.0.0:6001\")")]
    server_http_url: String,
    /// file holding the admin token (else env PROBERMESH_ADMIN_TOKEN or PROBERMESH_TOKEN)
    #[argh(option)]
    token_file: Option<PathBuf>,
    /// the version the new binary reports
    #[argh(option)]
    version: Option<String>,
    /// where the server downloads the binary (http or https)
    #[argh(option)]
    download_url: Option<String>,
    /// the binary's md5 (the Go check; alone only with -server.upgrade.allow-md5)
    #[argh(option)]
    md5sum: Option<String>,
    /// the binary's SHA-256 (64 hex digits)
    #[argh(option)]
    sha256: Option<String>,
    /// the release's signature file (minisign .minisig, or 128 hex digits of ed25519)
    #[argh(option)]
    signature_file: Option<PathBuf>,
    /// install on agents that are not older too (downgrade or reinstall; once each)
    #[argh(switch)]
    force: bool,
    /// agents upgraded first, alone (default 1)
    #[argh(option)]
    canary: Option<u32>,
    /// agents per batch after the canaries: a number or a percentage (default 25%)
    #[argh(option)]
    batch: Option<String>,
    /// failures tolerated before the rollout halts (default 0)
    #[argh(option)]
    max_failures: Option<u32>,
    /// watch each settled batch this long before the next (Go duration, default 30s)
    #[argh(option)]
    soak: Option<String>,
    /// only agents whose region matches (anchored; default all)
    #[argh(option)]
    region_match: Option<String>,
    /// the match operator: =, !=, =~ (default), !~
    #[argh(option)]
    operator: Option<String>,
    /// show the rollout under way and exit
    #[argh(switch)]
    status: bool,
    /// start no new batch
    #[argh(switch)]
    pause: bool,
    /// go on after a pause
    #[argh(switch)]
    resume: bool,
    /// stop the rollout for good (agents not reached keep their version)
    #[argh(switch)]
    abort: bool,
    /// submit and exit without following the rollout
    #[argh(switch)]
    no_wait: bool,
    /// give up following after this many seconds (default 3600)
    #[argh(option, default = "3600")]
    wait_timeout: u64,
}

/// `probermesh upgrade`: whether the rollout completed (or the control was taken).
pub(crate) async fn upgrade(args: UpgradeArgs) -> Result<bool> {
    let url = ServerUrl::parse(&args.server_http_url).context("--server-http-url")?;
    let token =
        admin_client::admin_token(args.token_file.as_deref(), |name| std::env::var_os(name))
            .context("the admin token (--token-file)")?;
    let client = AdminClient::new(url, token, START_TIMEOUT);
    let control = [
        (args.pause, "pause"),
        (args.resume, "resume"),
        (args.abort, "abort"),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .map(|(_, name)| name)
    .collect::<Vec<_>>();
    if control.len() + usize::from(args.status) > 1 {
        bail!("give at most one of --status, --pause, --resume and --abort");
    }
    if let Some(name) = control.first() {
        let view = client
            .post_json(&format!("/-/upgrade/{name}"), &json!({}))
            .await
            .with_context(|| format!("--{name}"))?;
        print_summary(&view)?;
        return Ok(true);
    }
    if args.status {
        let view = client.get_json("/-/upgrade").await.context("--status")?;
        if view.is_null() {
            print_line("no rollout")?;
        } else {
            print_summary(&view)?;
            print_agents(&view)?;
        }
        return Ok(true);
    }
    let request = request_of(&args)?;
    let view = client
        .post_json("/-/upgrade", &request)
        .await
        .context("starting the rollout")?;
    print_summary(&view)?;
    if args.no_wait {
        print_line(&format!("follow it: {}", client.url("/-/upgrade")))?;
        return Ok(true);
    }
    follow(&client, view, Duration::from_secs(args.wait_timeout)).await
}

/// The POST body: the Go fields, then ours when given.
fn request_of(args: &UpgradeArgs) -> Result<Value> {
    let version = args.version.clone().context("--version: missing")?;
    let download_url = args
        .download_url
        .clone()
        .context("--download-url: missing")?;
    let mut request = json!({
        "downloadURL": download_url,
        "md5Check": args.md5sum.clone().unwrap_or_default(),
        "version": version,
        "force": args.force,
    });
    if let Some(sha256) = &args.sha256 {
        request["sha256"] = sha256.clone().into();
    }
    if let Some(path) = &args.signature_file {
        let bytes = read_regular_file(path, MAX_SIGNATURE_FILE_BYTES, Links::Follow)
            .with_context(|| format!("--signature-file {}", path.display()))?;
        let text = String::from_utf8(bytes)
            .with_context(|| format!("--signature-file {}: not UTF-8 text", path.display()))?;
        request["signature"] = text.into();
    }
    let mut strategy = serde_json::Map::new();
    if let Some(canary) = args.canary {
        strategy.insert("canary".into(), canary.into());
    }
    if let Some(batch) = &args.batch {
        strategy.insert(
            "batch".into(),
            batch
                .parse::<u64>()
                .map_or_else(|_| Value::from(batch.clone()), Value::from),
        );
    }
    if let Some(max) = args.max_failures {
        strategy.insert("max_failures".into(), max.into());
    }
    if let Some(soak) = &args.soak {
        strategy.insert("soak".into(), soak.clone().into());
    }
    if !strategy.is_empty() {
        request["strategy"] = Value::Object(strategy);
    }
    if let Some(region) = &args.region_match {
        request["region"] = region.clone().into();
        request["expr"] = args.operator.clone().unwrap_or_else(|| "=~".into()).into();
    }
    Ok(request)
}

/// Polls the rollout, printing every agent's change, until it ends: whether it completed.
async fn follow(client: &AdminClient, mut view: Value, wait: Duration) -> Result<bool> {
    let deadline = tokio::time::Instant::now() + wait;
    let id = view["rollout_id"].clone();
    let mut seen: std::collections::BTreeMap<String, String> = Default::default();
    let mut unreachable_since: Option<tokio::time::Instant> = None;
    loop {
        for agent in view["agents"].as_array().into_iter().flatten() {
            let who = format!("{} {}", text(&agent["region"]), text(&agent["ip"]));
            let state = text(&agent["state"]);
            if seen.get(&who) != Some(&state) {
                let reason = agent["reason"]
                    .as_str()
                    .map_or_else(String::new, |r| format!(": {r}"));
                print_line(&format!(
                    "  {who} (batch {}, from {}): {state}{reason}",
                    agent["batch"]
                        .as_u64()
                        .map_or_else(|| "-".to_owned(), |b| b.to_string()),
                    text(&agent["from_version"]),
                ))?;
                seen.insert(who, state);
            }
        }
        let phase = text(&view["phase"]);
        if matches!(phase.as_str(), "completed" | "halted" | "aborted") {
            print_summary(&view)?;
            return Ok(phase == "completed");
        }
        if tokio::time::Instant::now() + POLL_EVERY > deadline {
            eprintln!(
                "the rollout is still {phase} after --wait-timeout {}s; see {}",
                wait.as_secs(),
                client.url("/-/upgrade")
            );
            return Ok(false);
        }
        tokio::time::sleep(POLL_EVERY).await;
        view = match client.get_json("/-/upgrade").await {
            Ok(view) => {
                if unreachable_since.take().is_some() {
                    eprintln!("the server answers again");
                }
                view
            }
            // A server restart (the rollout resumes from its record) is not the end of it.
            Err(error) => {
                let since = *unreachable_since.get_or_insert_with(|| {
                    eprintln!("following the rollout: {error:#}; retrying");
                    tokio::time::Instant::now()
                });
                if since.elapsed() > UNREACHABLE_FOR {
                    return Err(error).context(format!(
                        "following the rollout: no answer for {}s",
                        UNREACHABLE_FOR.as_secs()
                    ));
                }
                continue;
            }
        };
        if view["rollout_id"] != id {
            bail!("another rollout ({}) replaced this one", view["rollout_id"]);
        }
    }
}

fn print_summary(view: &Value) -> Result<()> {
    let counts = view["counts"]
        .as_object()
        .map(|counts| {
            counts
                .iter()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(state, n)| format!("{n} {state}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let reason = view["reason"]
        .as_str()
        .map_or_else(String::new, |r| format!(": {r}"));
    print_line(&format!(
        "rollout {} of {} ({} agents: {counts}): {}{reason}",
        view["rollout_id"],
        text(&view["version"]),
        view["agents"].as_array().map_or(0, Vec::len),
        text(&view["phase"]),
    ))
}

fn print_agents(view: &Value) -> Result<()> {
    for agent in view["agents"].as_array().into_iter().flatten() {
        let reason = agent["reason"]
            .as_str()
            .map_or_else(String::new, |r| format!(": {r}"));
        print_line(&format!(
            "  {} {} (from {}): {}{reason}",
            text(&agent["region"]),
            text(&agent["ip"]),
            text(&agent["from_version"]),
            text(&agent["state"]),
        ))?;
    }
    Ok(())
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}
