//! The `probermesh` binary. It parses the command line, calls into `probermesh-core` and
//! `probermesh-adapters`, and maps errors to exit codes; it holds no domain logic.
//!
//! Subcommands: `server`, `agent`, `demo` (a whole mesh on loopback), `version`, and the
//! operator tools `ping`, `traceroute`, `http-probe`, `check-probe-file`, and the server's clients `task`,
//! `targets`, `task-key`, `trace` and `traces` (see `client`). The Go system's command line
//! (`probermesh -mode agent -agent.region=eu …`) is translated into the same subcommands
//! (see `cli::legacy`), so both spellings start the same code.

mod agent;
mod cli;
mod client;
mod demo;
mod http_probe;
mod logging;
mod ping;
mod server;
mod traceroute;
mod upgrade_client;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use argh::FromArgs;
use probermesh_adapters::probe_file::ProbeFileOnDisk;
use probermesh_adapters::version::VERSION;
use probermesh_core::model::{ProbeConfig, ProbeModule};
use probermesh_core::ports::PoolSource;

/// ProberMesh: a network mesh prober (ICMP region to region, HTTP region to URL).
#[derive(FromArgs, Debug)]
struct Cli {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Command {
    Server(cli::ServerArgs),
    Agent(cli::AgentArgs),
    Demo(demo::DemoArgs),
    CheckProbeFile(CheckProbeFile),
    HttpProbe(http_probe::HttpProbe),
    Ping(ping::Ping),
    Traceroute(traceroute::Traceroute),
    Task(client::TaskArgs),
    Targets(client::TargetsArgs),
    TaskKey(client::TaskKeyArgs),
    Trace(client::TraceArgs),
    Traces(client::TracesArgs),
    Upgrade(upgrade_client::UpgradeArgs),
    Version(Version),
}

/// Validate a probe file and print the target pool it describes.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "check-probe-file")]
struct CheckProbeFile {
    /// the probe file (the Go ProberMesh YAML schema)
    #[argh(positional)]
    file: PathBuf,
}

/// Print the version.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "version")]
struct Version {}

/// Exit code for a bad command line, a bad configuration file or a failed command (sysexits
/// EX_USAGE / EX_CONFIG are 64 / 78; we use 64 for all, as linkerd does).
const EXIT_CONFIG: u8 = 64;

/// Exit code of a bad Go-style command line, as Go's `flag` package.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let args = client::go_client_args(std::env::args().skip(1).collect());
    let cli = if cli::legacy::is_legacy(&args) {
        match cli::legacy::translate(&args) {
            Ok(cli::legacy::Legacy::Run(translated)) => {
                let words: Vec<&str> = translated.iter().map(String::as_str).collect();
                match Cli::from_args(&["probermesh"], &words) {
                    Ok(cli) => cli,
                    Err(early) => {
                        eprintln!("{}", early.output);
                        return ExitCode::from(EXIT_USAGE);
                    }
                }
            }
            Ok(cli::legacy::Legacy::Version) => {
                return exit(print_line(&format!("probermesh version {VERSION}")));
            }
            Ok(cli::legacy::Legacy::Help) => return exit(print_line(&cli::legacy::usage())),
            Err(error) => {
                eprintln!("{error}\n\n{}", cli::legacy::usage());
                return ExitCode::from(EXIT_USAGE);
            }
        }
    } else {
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        match Cli::from_args(&["probermesh"], &words) {
            Ok(cli) => cli,
            Err(early) if early.status.is_ok() => return exit(print_line(&early.output)),
            Err(early) => {
                eprintln!(
                    "{}\nRun probermesh --help for more information.",
                    early.output
                );
                // argh's own status, except the clients' (2, as Go's flag package).
                let client = matches!(
                    words.first(),
                    Some(&("task" | "targets" | "task-key" | "upgrade" | "trace" | "traces"))
                );
                return ExitCode::from(if client { EXIT_USAGE } else { 1 });
            }
        }
    };
    let outcome = match cli.command {
        Command::Server(args) => with_runtime(server::run(args)),
        Command::Agent(args) => with_runtime(agent::run(args)),
        Command::Demo(args) => with_runtime(demo::run(args)),
        Command::CheckProbeFile(args) => check_probe_file(&args),
        Command::HttpProbe(args) => http_probe::run(&args),
        Command::Ping(args) => ping::run(&args),
        Command::Traceroute(args) => traceroute::run(&args),
        Command::Task(args) => return client::exit_of(block_on(Some(2), client::task(args))),
        Command::Targets(args) => return client::exit_of(block_on(Some(2), client::targets(args))),
        Command::TaskKey(args) => return client::exit_of(client::task_key(&args)),
        Command::Trace(args) => return client::exit_of(block_on(Some(2), client::trace(args))),
        Command::Traces(args) => return client::exit_of(block_on(Some(2), client::traces(args))),
        Command::Upgrade(args) => {
            return client::exit_of(block_on(Some(2), upgrade_client::upgrade(args)));
        }
        Command::Version(_) => print_line(&format!("probermesh {VERSION}")),
    };
    exit(outcome)
}

fn exit(outcome: Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", chain_text(&error));
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// The error and its causes, outermost first, joined by `: ` (anyhow's `{:#}`), each said
/// once: a cause whose text an outer message already holds (an error type whose message
/// includes its source, as many libraries' do) is not repeated.
fn chain_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Runs `job` on a multi-threaded tokio runtime (a worker per core).
fn with_runtime(job: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    block_on(None, job)
}

/// Runs `job` on a multi-threaded tokio runtime of `workers` threads (`None`: one per core)
/// and returns its outcome.
pub(crate) fn block_on<T>(
    workers: Option<usize>,
    job: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        builder.worker_threads(workers);
    }
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(job)
}

pub(crate) fn print_line(line: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").context("writing to stdout")
}

fn check_probe_file(args: &CheckProbeFile) -> Result<()> {
    let source = ProbeFileOnDisk::new(&args.file);
    let configs = source.load()?;
    let targets: usize = configs.iter().map(|c| c.targets.len()).sum();
    print_line(&format!(
        "{}: ok, {} blocks, {targets} targets",
        source.describe(),
        configs.len()
    ))?;
    for config in &configs {
        print_line(&describe(config))?;
    }
    Ok(())
}

fn describe(config: &ProbeConfig) -> String {
    let settings = match &config.module {
        ProbeModule::Icmp(m) => {
            format!(
                "{} packets every {:?}, {} bytes",
                m.packet_count, m.interval, m.payload_size
            )
        }
        ProbeModule::Http(m) => format!("{} , valid codes {:?}", m.method, m.valid_status_codes),
    };
    let targets: Vec<&str> = config.targets.iter().map(|t| t.raw()).collect();
    format!(
        "  {:<5} {:<20} [{settings}] {}",
        config.kind(),
        config.region,
        targets.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that says its cause and also hands it out as its source.
    #[derive(Debug)]
    struct SaysItsSource(std::io::Error);

    impl std::fmt::Display for SaysItsSource {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot create /d: {}", self.0)
        }
    }

    impl std::error::Error for SaysItsSource {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn an_error_chain_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AlreadyExists, "File exists");
        let error = anyhow::Error::new(SaysItsSource(io)).context("starting the agent link");
        assert_eq!(
            format!("{error:#}"),
            "starting the agent link: cannot create /d: File exists: File exists",
            "anyhow repeats it"
        );
        assert_eq!(
            chain_text(&error),
            "starting the agent link: cannot create /d: File exists"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(chain_text(&plain), "outer: inner");
    }
}
