//! The operator's client subcommands, `task`, `targets`, `task-key`, and `trace` and
//! `traces` (issue 17: ask for a path trace, print hop tables and blame), as the Go CLI's
//! (`probermesh task --region.match X --operator =~ --cmd "…"` is translated by
//! [`go_client_args`]); the HTTP and the JSON are `probermesh_adapters::admin_client`'s.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use argh::FromArgs;
use probermesh_adapters::admin_client::{
    self, AdminClient, DEFAULT_REQUEST_TIMEOUT, ServerUrl, TaskRequest, TraceAsk,
};

use crate::print_line;

/// Exit code of a task some agent did not run to `done`.
const EXIT_NOT_DONE: u8 = 1;
/// Exit code of a bad command line, a bad file or no answer from the server.
const EXIT_ERROR: u8 = 2;

/// Run a command on the agents of the matching regions (POST /-/task) and print what they did.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "task")]
pub(crate) struct TaskArgs {
    /// the server's HTTP address, host:port or http://host:port (default 0.0.0.0:6001)
    #[argh(option, default = "String::from(\"0.0.0.0:6001\")")]
    server_http_url: String,
    /// the region pattern (default .*)
    #[argh(option, default = "String::from(\".*\")")]
    region_match: String,
    /// how the pattern selects regions: =, !=, =~ (default) or !~
    #[argh(option, default = "String::from(\"=~\")")]
    operator: String,
    /// the command line to run
    #[argh(option)]
    cmd: String,
    /// the command's timeout, seconds (default the server's; 30 with --key)
    #[argh(option)]
    timeout: Option<f64>,
    /// how long the task waits for agents to connect, seconds (default the server's; 300 with
    /// --key, which is also the signed expiry)
    #[argh(option)]
    ttl: Option<f64>,
    /// reach more agents than the server's -server.task.max-agents
    #[argh(switch)]
    confirm: bool,
    /// file holding the admin token (else env PROBERMESH_ADMIN_TOKEN, then PROBERMESH_TOKEN)
    #[argh(option)]
    token_file: Option<PathBuf>,
    /// task private key file: sign the task (for agents started with -agent.task.pubkey)
    #[argh(option)]
    key: Option<PathBuf>,
    /// print the task id and the matched agents, and do not wait for results
    #[argh(switch)]
    no_wait: bool,
    /// how long to wait for every matched agent's result, seconds (default 120)
    #[argh(option, default = "120")]
    wait_timeout: u64,
}

/// Print the server's target pool (GET /-/targets) as JSON.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "targets")]
pub(crate) struct TargetsArgs {
    /// the server's HTTP address, host:port or http://host:port (default 0.0.0.0:6001)
    #[argh(option, default = "String::from(\"0.0.0.0:6001\")")]
    server_http_url: String,
    /// regions to show, a regex matching the whole name (default .+)
    #[argh(option, default = "String::from(\".+\")")]
    region_match: String,
    /// only blocks of this prober type: icmp or http
    #[argh(option)]
    prober_type: Option<String>,
    /// file holding the admin token, sent when given (else env PROBERMESH_ADMIN_TOKEN, then
    /// PROBERMESH_TOKEN)
    #[argh(option)]
    token_file: Option<PathBuf>,
}

/// Ask the server for a path trace (POST /-/trace) and, with --wait, print its hops and blame.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "trace")]
pub(crate) struct TraceArgs {
    /// the server's HTTP address, host:port or http://host:port (default 0.0.0.0:6001; also
    /// --server)
    #[argh(option, default = "String::from(\"0.0.0.0:6001\")")]
    server_http_url: String,
    /// the agent to trace from, REGION/IP
    #[argh(option)]
    agent: Option<String>,
    /// trace from a free agent of this region that takes traces
    #[argh(option)]
    source_region: Option<String>,
    /// trace to a host of this region the mesh probes (the pair the trace is filed under)
    #[argh(option)]
    target_region: Option<String>,
    /// the address to trace to
    #[argh(option)]
    target: Option<String>,
    /// probes per hop (default the server's -server.trace.rounds)
    #[argh(option)]
    rounds: Option<u16>,
    /// highest TTL (default the server's -server.trace.max-hops)
    #[argh(option)]
    max_hops: Option<u8>,
    /// wait for the trace and print its hop table and blame
    #[argh(switch)]
    wait: bool,
    /// how long to wait, seconds (default 180)
    #[argh(option, default = "180")]
    wait_timeout: u64,
    /// file holding the admin token (else env PROBERMESH_ADMIN_TOKEN, then PROBERMESH_TOKEN)
    #[argh(option)]
    token_file: Option<PathBuf>,
}

/// Print the server's latest path traces (GET /api/v1/traces) with their hops and blame.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "traces")]
pub(crate) struct TracesArgs {
    /// the server's HTTP address, host:port or http://host:port (default 0.0.0.0:6001; also
    /// --server)
    #[argh(option, default = "String::from(\"0.0.0.0:6001\")")]
    server_http_url: String,
    /// only traces of pairs from this region
    #[argh(option)]
    source_region: Option<String>,
    /// only traces of pairs to this region
    #[argh(option)]
    target_region: Option<String>,
    /// only traces this agent ran, REGION/IP
    #[argh(option)]
    agent: Option<String>,
    /// at most this many, newest first (default 5)
    #[argh(option, default = "5")]
    limit: usize,
    /// file holding the admin token, sent when given (needed with -server.mesh.require-token)
    #[argh(option)]
    token_file: Option<PathBuf>,
}

/// Generate a task signing key pair: the private key file and FILE.pub (the --out path) for the agents.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "task-key")]
pub(crate) struct TaskKeyArgs {
    /// the private key file to create (mode 0600; never overwritten)
    #[argh(option)]
    out: PathBuf,
}

/// The Go CLI's spellings of the client subcommands' flags, rewritten into ours: its names
/// `--region.match`, `--server.http.url`, `--prober.type`, one dash or two (`-cmd`), and
/// `--name=value` (which argh does not take) split in two; and its subcommand `target`. Any
/// other command line is returned unchanged. `args` excludes the program name.
pub(crate) fn go_client_args(args: Vec<String>) -> Vec<String> {
    const RENAMED: [(&str, &str); 4] = [
        ("region.match", "region-match"),
        ("server.http.url", "server-http-url"),
        ("prober.type", "prober-type"),
        ("download.url", "download-url"),
    ];
    const SWITCHES: [&str; 5] = ["confirm", "no-wait", "help", "h", "version"];
    // `upgrade --version` takes the version to install.
    const UPGRADE_SWITCHES: [&str; 8] = [
        "no-wait", "help", "h", "force", "status", "pause", "resume", "abort",
    ];
    // `trace` and `traces` also take `--server` for `--server-http-url`.
    const TRACE_SWITCHES: [&str; 3] = ["wait", "help", "h"];
    let mut words = args.into_iter();
    let subcommand = match words.next() {
        Some(first) if first == "target" => "targets".to_owned(),
        Some(first)
            if ["task", "targets", "upgrade", "trace", "traces"].contains(&first.as_str()) =>
        {
            first
        }
        first => return first.into_iter().chain(words).collect(),
    };
    let tracing = subcommand == "trace" || subcommand == "traces";
    let mut out = vec![subcommand.clone()];
    let mut after_option = false;
    while let Some(arg) = words.next() {
        if after_option || arg == "--" {
            // The value of an option (a command may well contain "--region.match").
            after_option = false;
            let rest = arg == "--";
            out.push(arg);
            if rest {
                out.extend(words.by_ref());
            }
            continue;
        }
        let Some(stripped) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            out.push(arg);
            continue;
        };
        if stripped.is_empty() || stripped == "h" {
            out.push(arg);
            continue;
        }
        let (name, value) = match stripped.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (stripped, None),
        };
        let name = RENAMED
            .iter()
            .find(|(go, _)| *go == name)
            .map_or(name, |(_, ours)| ours);
        let name = if tracing && name == "server" {
            "server-http-url"
        } else {
            name
        };
        let switches: &[&str] = if subcommand == "upgrade" {
            &UPGRADE_SWITCHES
        } else if tracing {
            &TRACE_SWITCHES
        } else {
            &SWITCHES
        };
        after_option = value.is_none() && !switches.contains(&name);
        out.push(format!("--{name}"));
        out.extend(value);
    }
    out
}

/// The exit code of an outcome: 0 when every agent is done, 1 when some are not, 2 on an
/// error (said on stderr).
pub(crate) fn exit_of(outcome: Result<bool>) -> ExitCode {
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_NOT_DONE),
        Err(error) => {
            eprintln!("error: {}", crate::chain_text(&error));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn client(server: &str, token_file: Option<&Path>) -> Result<AdminClient> {
    let url = ServerUrl::parse(server).context("--server-http-url")?;
    let token = admin_client::admin_token(token_file, |name| std::env::var_os(name))
        .context("the admin token (--token-file)")?;
    Ok(AdminClient::new(url, token, DEFAULT_REQUEST_TIMEOUT))
}

/// `probermesh task`: whether every matched agent ran the command to `done`.
pub(crate) async fn task(args: TaskArgs) -> Result<bool> {
    let client = client(&args.server_http_url, args.token_file.as_deref())?;
    let mut request = TaskRequest {
        region: args.region_match,
        expr: args.operator,
        cmd: args.cmd,
        timeout: args.timeout,
        ttl: args.ttl,
        confirm: args.confirm,
        ..TaskRequest::default()
    };
    if let Some(path) = &args.key {
        let key = admin_client::read_signing_key(path).context("--key")?;
        let id = admin_client::random_task_id()?;
        request
            .sign(&key, id, admin_client::now_unix_millis())
            .context("--operator")?;
    }
    let submitted = client
        .submit(&request)
        .await
        .context("submitting the task")?;
    print_line(&format!(
        "task {} matched {} agent(s){}",
        submitted.task_id,
        submitted.matched.len(),
        if request.signature.is_some() {
            " (signed)"
        } else {
            ""
        }
    ))?;
    for agent in &submitted.matched {
        let reason = agent
            .reason
            .as_deref()
            .map_or_else(String::new, |r| format!(": {r}"));
        print_line(&format!(
            "  {} {}: {}{reason}",
            agent.region, agent.ip, agent.state
        ))?;
    }
    if args.no_wait {
        print_line(&format!(
            "results: {}",
            client.url(&format!("/-/task/{}", submitted.task_id))
        ))?;
        return Ok(true);
    }
    let status = client
        .wait(
            submitted.task_id,
            &submitted.matched,
            Duration::from_secs(1),
            Duration::from_secs(args.wait_timeout),
        )
        .await
        .context("waiting for the task's results")?;
    for agent in &submitted.matched {
        match status.run_of(&agent.region, &agent.ip) {
            Some(run) => print_line(run.render().trim_end())?,
            None => print_line(&format!("== {} {}: no result yet", agent.region, agent.ip))?,
        }
    }
    if !status.all_filed(&submitted.matched) {
        let what = if status.all_final(&submitted.matched) {
            "the server did not file every agent's output"
        } else {
            "not every agent finished"
        };
        eprintln!(
            "{what} within --wait-timeout {}s; see {}",
            args.wait_timeout,
            client.url(&format!("/-/task/{}", submitted.task_id))
        );
    }
    Ok(!submitted.matched.is_empty() && status.all_done(&submitted.matched))
}

/// `probermesh trace`: `Ok(false)` when the trace did not end reported without an error.
pub(crate) async fn trace(args: TraceArgs) -> Result<bool> {
    anyhow::ensure!(
        args.agent.is_some() != args.source_region.is_some(),
        "give --agent or --source-region (one of them)"
    );
    anyhow::ensure!(
        args.target.is_some() || args.target_region.is_some(),
        "give --target-region or --target"
    );
    let client = client(&args.server_http_url, args.token_file.as_deref())?;
    let ask = TraceAsk {
        agent: args.agent.clone(),
        source_region: args.source_region.clone(),
        target_region: args.target_region.clone(),
        target: args.target.clone(),
        rounds: args.rounds,
        max_hops: args.max_hops,
    };
    let sent = client
        .request_trace(&ask)
        .await
        .context("asking for the trace")?;
    print_line(&format!(
        "trace {} sent to {} towards {}",
        sent.id, sent.agent, sent.target
    ))?;
    let status = client.url(&format!("/api/v1/traces?id={}", sent.id));
    if !args.wait {
        print_line(&format!("result: {status}"))?;
        return Ok(true);
    }
    let done = client
        .wait_trace(
            sent.id,
            Duration::from_secs(1),
            Duration::from_secs(args.wait_timeout),
        )
        .await
        .context("waiting for the trace")?;
    match done {
        Some(trace) => {
            print_line(trace.render().trim_end())?;
            Ok(trace.succeeded())
        }
        None => {
            eprintln!(
                "the trace did not finish within --wait-timeout {}s; see {status}",
                args.wait_timeout
            );
            Ok(false)
        }
    }
}

/// `probermesh traces`.
pub(crate) async fn traces(args: TracesArgs) -> Result<bool> {
    let client = client(&args.server_http_url, args.token_file.as_deref())?;
    let limit = args.limit.to_string();
    let query = admin_client::traces_query(&[
        ("source_region", args.source_region.as_deref()),
        ("target_region", args.target_region.as_deref()),
        ("agent", args.agent.as_deref()),
        ("limit", Some(&limit)),
    ]);
    let answer = client.traces(&query).await.context("fetching the traces")?;
    for running in &answer.in_flight {
        print_line(&format!(
            "trace {} running on {} towards {}",
            running.id, running.agent, running.target
        ))?;
    }
    if answer.traces.is_empty() {
        print_line("no finished trace matches")?;
    }
    for trace in &answer.traces {
        print_line(trace.render().trim_end())?;
        print_line("")?;
    }
    Ok(true)
}

/// `probermesh targets`.
pub(crate) async fn targets(args: TargetsArgs) -> Result<bool> {
    if let Some(kind) = args.prober_type.as_deref() {
        anyhow::ensure!(
            kind == "icmp" || kind == "http",
            "--prober-type {kind:?}: expected icmp or http"
        );
    }
    let client = client(&args.server_http_url, args.token_file.as_deref())?;
    let targets = client.targets().await.context("fetching the targets")?;
    let kept =
        admin_client::filter_targets(targets, &args.region_match, args.prober_type.as_deref())
            .with_context(|| format!("--region-match {:?}", args.region_match))?;
    print_line(&serde_json::to_string_pretty(&kept).context("rendering the targets")?)?;
    Ok(true)
}

/// `probermesh task-key`.
pub(crate) fn task_key(args: &TaskKeyArgs) -> Result<bool> {
    let key = admin_client::new_signing_key()?;
    let public = admin_client::write_new_key(&args.out, &key).context("--out")?;
    print_line(&format!(
        "private key: {} (keep it with the operators, never on the server)",
        args.out.display()
    ))?;
    print_line(&format!(
        "public key: {} (give it to the agents: -agent.task.pubkey {})",
        key.public().to_hex(),
        public.display()
    ))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn the_go_client_flags_are_rewritten() {
        assert_eq!(
            go_client_args(words(
                "task --region.match eu --operator =~ --cmd ls --server.http.url=h:1"
            )),
            words("task --region-match eu --operator =~ --cmd ls --server-http-url h:1")
        );
        assert_eq!(
            go_client_args(words("target -region.match=eu -prober.type icmp")),
            words("targets --region-match eu --prober-type icmp")
        );
        // A value that looks like a flag is a value.
        assert_eq!(
            go_client_args(words("task --confirm --cmd --region.match")),
            words("task --confirm --cmd --region.match")
        );
        // Go's single dash and `=value`; a value keeps its own `=`.
        assert_eq!(
            go_client_args(words("task -cmd=a=b -no-wait --ttl=5")),
            words("task --cmd a=b --no-wait --ttl 5")
        );
        // Other subcommands are untouched.
        assert_eq!(
            go_client_args(words("agent --region.match x")),
            words("agent --region.match x")
        );
        assert!(go_client_args(Vec::new()).is_empty());
    }

    #[test]
    fn the_trace_command_line_takes_server_for_the_url() {
        use argh::FromArgs as _;
        let args = go_client_args(words(
            "trace --server h:1 --source-region eu --target-region us --wait --rounds 5",
        ));
        assert_eq!(
            args,
            words(
                "trace --server-http-url h:1 --source-region eu --target-region us --wait --rounds 5"
            )
        );
        let words: Vec<&str> = args[1..].iter().map(String::as_str).collect();
        let parsed = TraceArgs::from_args(&["trace"], &words).expect("parses");
        assert_eq!(parsed.server_http_url, "h:1");
        assert_eq!(parsed.source_region.as_deref(), Some("eu"));
        assert!(parsed.wait && parsed.agent.is_none());
        assert_eq!(parsed.rounds, Some(5));
        assert_eq!(
            go_client_args(self::words("traces --server=h:1 --limit 2")),
            self::words("traces --server-http-url h:1 --limit 2")
        );
    }

    #[test]
    fn the_go_task_command_line_parses() {
        use argh::FromArgs as _;
        let args = go_client_args(words(
            "task --region.match cn-.* --operator =~ --cmd uptime",
        ));
        let words: Vec<&str> = args[1..].iter().map(String::as_str).collect();
        let parsed = TaskArgs::from_args(&["task"], &words).expect("parses");
        assert_eq!(parsed.region_match, "cn-.*");
        assert_eq!(parsed.operator, "=~");
        assert_eq!(parsed.cmd, "uptime");
        assert_eq!(parsed.server_http_url, "0.0.0.0:6001");
        assert_eq!(parsed.wait_timeout, 120);
        assert!(!parsed.no_wait && parsed.key.is_none());
    }
}
