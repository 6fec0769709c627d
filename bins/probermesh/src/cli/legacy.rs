//! The Go ProberMesh's command line (`probermesh -mode agent -agent.region=eu …`), translated
//! into our subcommands (`probermesh agent --region eu …`) so that both spellings start the
//! same code. Go's `flag` rules: `-flag value`, `-flag=value`, `--flag`, booleans set by their
//! presence or `=true`/`=false`; an unknown flag is an error (Go exits 2 with the usage).

use anyhow::{Result, bail};

/// Which side a flag belongs to.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Side {
    Common,
    Server,
    Agent,
}

/// Every Go-style flag: its Go name, side, whether it is a boolean, and its help.
const FLAGS: &[(&str, Side, bool, &str)] = &[
    (
        "log.dir",
        Side::Common,
        false,
        "log directory; empty logs to stderr only (default \"\")",
    ),
    (
        "log.level",
        Side::Common,
        false,
        "log level 0 panic .. 3 warn .. 6 trace (default 3)",
    ),
    (
        "server.probe.file",
        Side::Server,
        false,
        "probe file (YAML)",
    ),
    (
        "server.icmp.discovery",
        Side::Server,
        false,
        "static or dynamic (default dynamic)",
    ),
    (
        "server.rpc.listen.addr",
        Side::Server,
        false,
        "agent link listen address (default localhost:6000)",
    ),
    (
        "server.http.listen.addr",
        Side::Server,
        false,
        "HTTP listen address (default localhost:6001)",
    ),
    (
        "server.aggregation.interval",
        Side::Server,
        false,
        "aggregation window (1s to 24h, default 15s)",
    ),
    (
        "server.aggregation.method",
        Side::Server,
        false,
        "robust or mean (default robust)",
    ),
    (
        "server.series.cache.ratio",
        Side::Server,
        false,
        "series expire after ratio × window (default 5)",
    ),
    ("server.task", Side::Server, true, "enable remote tasks"),
    (
        "server.upgrade.pubkey",
        Side::Server,
        false,
        "release public key (minisign or ed25519): upgrades must be signed by it",
    ),
    (
        "server.upgrade.allow-md5",
        Side::Server,
        true,
        "accept a Go upgrade request checked by md5 alone",
    ),
    (
        "server.upgrade.max-bytes-per-second",
        Side::Server,
        false,
        "most bytes of releases sent per second, all agents together (0: no cap)",
    ),
    (
        "server.task.meta.dir",
        Side::Server,
        false,
        "task result directory (default ./task_meta/)",
    ),
    (
        "server.task.max-agents",
        Side::Server,
        false,
        "agents a task may reach without confirm (default 50)",
    ),
    (
        "server.task.lifetime",
        Side::Server,
        false,
        "how long a task waits for agents (default 5m)",
    ),
    (
        "server.task.timeout",
        Side::Server,
        false,
        "longest a task may run (default 30s)",
    ),
    (
        "server.task.retention",
        Side::Server,
        false,
        "task results kept this long (default 168h)",
    ),
    (
        "server.probe.self",
        Side::Server,
        true,
        "agents also probe their own region",
    ),
    (
        "server.tls.cert-file",
        Side::Server,
        false,
        "server certificate (PEM); generated when absent",
    ),
    (
        "server.tls.key-file",
        Side::Server,
        false,
        "server key (PEM)",
    ),
    (
        "server.data.dir",
        Side::Server,
        false,
        "where a generated certificate is kept",
    ),
    (
        "server.auth.token-file",
        Side::Server,
        false,
        "agents' shared token (or env PROBERMESH_TOKEN)",
    ),
    (
        "server.admin.token-file",
        Side::Server,
        false,
        "bearer token for /-/reload, /-/task, /-/upgrade",
    ),
    (
        "server.mesh.require-token",
        Side::Server,
        true,
        "/api/v1/mesh needs the admin token (default: public like /metrics)",
    ),
    (
        "server.trace",
        Side::Server,
        true,
        "path tracing (default true; -server.trace=false turns it off, --trace-off)",
    ),
    (
        "server.trace.loss-enter",
        Side::Server,
        false,
        "loss ratio that makes a window bad for tracing (default 0.05)",
    ),
    (
        "server.trace.loss-leave",
        Side::Server,
        false,
        "loss ratio a degraded pair must stay under (default 0.01)",
    ),
    (
        "server.trace.windows",
        Side::Server,
        false,
        "bad windows before a pair is traced (default 3)",
    ),
    (
        "server.trace.clear-windows",
        Side::Server,
        false,
        "clear windows before a degraded pair recovers (default 3)",
    ),
    (
        "server.trace.cooldown",
        Side::Server,
        false,
        "least time between automatic traces of a pair (default 10m)",
    ),
    (
        "server.trace.budget",
        Side::Server,
        false,
        "automatic trace runs per hour (0: operators only; default 30)",
    ),
    (
        "server.trace.timeout",
        Side::Server,
        false,
        "a trace without a report is given up after (default 2m)",
    ),
    (
        "server.trace.rounds",
        Side::Server,
        false,
        "probes per hop (default 20)",
    ),
    (
        "server.trace.max-hops",
        Side::Server,
        false,
        "highest TTL a trace tries (default 30)",
    ),
    (
        "server.trace.store.per-pair",
        Side::Server,
        false,
        "finished traces kept per pair (default 20)",
    ),
    (
        "server.trace.store.max-records",
        Side::Server,
        false,
        "finished traces kept in all (default 2000)",
    ),
    (
        "server.trace.store.max-bytes",
        Side::Server,
        false,
        "bytes of finished traces kept (default 16777216)",
    ),
    (
        "agent.rpc.report.addr",
        Side::Agent,
        false,
        "server address (default localhost:6000)",
    ),
    (
        "agent.probe.interval",
        Side::Agent,
        false,
        "probe round period (1s to 24h, default 15s)",
    ),
    (
        "agent.sync.interval",
        Side::Agent,
        false,
        "target pool refresh period (1s to 24h, default 1m)",
    ),
    (
        "agent.probe.icmp-max-in-flight",
        Side::Agent,
        false,
        "most ICMP probes running at once (default 16384)",
    ),
    (
        "agent.probe.http-max-in-flight",
        Side::Agent,
        false,
        "most HTTP probes running at once (default 256)",
    ),
    (
        "agent.region",
        Side::Agent,
        false,
        "region; else PROBER_REGION, cloud metadata, cn-shanghai",
    ),
    (
        "agent.icmp.network-type",
        Side::Agent,
        false,
        "intranet or public (default intranet)",
    ),
    (
        "agent.ip",
        Side::Agent,
        false,
        "the IP to report, overriding detection",
    ),
    ("agent.upgrade", Side::Agent, true, "enable self-upgrade"),
    (
        "agent.upgrade.interval",
        Side::Agent,
        false,
        "accepted; offers are pushed over the link (1s to 24h, default 1m)",
    ),
    (
        "agent.upgrade.pubkey",
        Side::Agent,
        false,
        "release public key: only binaries it signed are installed",
    ),
    (
        "agent.upgrade.restart",
        Side::Agent,
        false,
        "exec (default) or exit (for a supervisor) after an upgrade",
    ),
    (
        "agent.upgrade.probation",
        Side::Agent,
        false,
        "acknowledged rounds a new version needs to commit (default 3)",
    ),
    (
        "agent.upgrade.deadline",
        Side::Agent,
        false,
        "a new version not committed by then is rolled back (default 3m)",
    ),
    (
        "agent.trace",
        Side::Agent,
        true,
        "run the path traces the server asks for (default true)",
    ),
    ("agent.task", Side::Agent, true, "run the server's tasks"),
    (
        "agent.task.shell",
        Side::Agent,
        true,
        "run tasks through /bin/sh -c (any command)",
    ),
    (
        "agent.task.allow",
        Side::Agent,
        false,
        "programs tasks may run, comma-separated",
    ),
    (
        "agent.task.pubkey",
        Side::Agent,
        false,
        "ed25519 task public key: only signed tasks run",
    ),
    (
        "agent.task.timeout",
        Side::Agent,
        false,
        "longest a task may run (default 30s)",
    ),
    (
        "agent.tls.ca-file",
        Side::Agent,
        false,
        "CA that signed the server certificate (PEM)",
    ),
    (
        "agent.tls.server-fingerprint",
        Side::Agent,
        false,
        "pinned SHA-256 of the server certificate",
    ),
    (
        "agent.tls.insecure",
        Side::Agent,
        true,
        "do not verify the server (labs only)",
    ),
    (
        "agent.auth.token-file",
        Side::Agent,
        false,
        "shared token (or env PROBERMESH_TOKEN)",
    ),
];

/// Booleans on by default: the Go flag, and the Go-style name of the switch that turns it
/// off (`-server.trace=false` is `--trace-off`).
const INVERTED: &[(&str, &str)] = &[
    ("server.trace", "server.trace-off"),
    ("agent.trace", "agent.trace-off"),
];

/// What a Go-style command line asks for.
#[derive(Debug, Eq, PartialEq)]
pub(crate) enum Legacy {
    /// Run with these subcommand arguments (`["agent", "--region", "eu", …]`).
    Run(Vec<String>),
    /// `-v`: print the version.
    Version,
    /// `-h`: print the usage.
    Help,
}

/// Whether `args` (without the program name) are Go-style: empty, or starting with a
/// single-dash flag such as `-mode` or `-server.probe.file`.
pub(crate) fn is_legacy(args: &[String]) -> bool {
    match args.first() {
        None => true,
        Some(first) => {
            let name = first.trim_start_matches('-');
            let name = name.split('=').next().unwrap_or(name);
            first.starts_with('-')
                && (name == "mode" || name == "v" || name == "h" || name.contains('.'))
        }
    }
}

/// Translates a Go-style command line.
pub(crate) fn translate(args: &[String]) -> Result<Legacy> {
    let mut mode = "server".to_owned();
    let mut flags: Vec<(Side, String, Option<String>)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let Some(stripped) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            bail!("unexpected argument {arg:?}: Go-style flags start with '-' (see -h)");
        };
        let (name, inline) = match stripped.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (stripped, None),
        };
        match name {
            "v" => return Ok(Legacy::Version),
            "h" | "help" => return Ok(Legacy::Help),
            "mode" => {
                mode = match inline {
                    Some(value) => value,
                    None => {
                        let value = args
                            .get(i)
                            .ok_or_else(|| anyhow::anyhow!("flag needs an argument: -mode"))?;
                        i += 1;
                        value.clone()
                    }
                };
                continue;
            }
            _ => {}
        }
        let Some(&(go, side, boolean, _)) = FLAGS.iter().find(|(go, ..)| *go == name) else {
            bail!("flag provided but not defined: -{name} (see -h)");
        };
        if let Some(&(_, off)) = INVERTED.iter().find(|(on, _)| *on == go) {
            // On by default: only `=false` says something, as the switch that turns it off.
            match inline.as_deref() {
                None | Some("true" | "1" | "t" | "T" | "TRUE" | "True") => {}
                Some("false" | "0" | "f" | "F" | "FALSE" | "False") => {
                    flags.push((side, off.to_owned(), None));
                }
                Some(other) => {
                    bail!("invalid boolean value {other:?} for -{go}: use true or false")
                }
            }
            continue;
        }
        let value = if boolean {
            match inline.as_deref() {
                None | Some("true" | "1" | "t" | "T" | "TRUE" | "True") => None,
                Some("false" | "0" | "f" | "F" | "FALSE" | "False") => continue,
                Some(other) => {
                    bail!("invalid boolean value {other:?} for -{go}: use true or false")
                }
            }
        } else {
            match inline {
                Some(value) => Some(value),
                None => {
                    let value = args
                        .get(i)
                        .ok_or_else(|| anyhow::anyhow!("flag needs an argument: -{go}"))?;
                    i += 1;
                    Some(value.clone())
                }
            }
        };
        flags.push((side, go.to_owned(), value));
    }
    let side = match mode.as_str() {
        "server" => Side::Server,
        "agent" => Side::Agent,
        other => bail!("invalid value {other:?} for flag -mode: use server or agent"),
    };
    let mut out = vec![mode];
    for (flag_side, go, value) in flags {
        if flag_side != Side::Common && flag_side != side {
            // Go defined every flag for both modes and ignored the other mode's.
            continue;
        }
        let long = go
            .strip_prefix("server.")
            .or_else(|| go.strip_prefix("agent."))
            .unwrap_or(&go)
            .replace('.', "-");
        out.push(format!("--{long}"));
        if let Some(value) = value {
            out.push(value);
        }
    }
    Ok(Legacy::Run(out))
}

/// The Go-style usage text.
pub(crate) fn usage() -> String {
    let mut text = String::from(
        "Usage of probermesh (Go-style flags; the subcommands `probermesh server|agent|demo \
         --help` take the same options without the mode prefix):\n  -mode string\n    \
         \tserver or agent (default \"server\")\n  -v\tprint the version and exit\n  -h\tprint \
         this help\n",
    );
    for (go, _, boolean, help) in FLAGS {
        if *boolean {
            text.push_str(&format!("  -{go}\n    \t{help}\n"));
        } else {
            text.push_str(&format!("  -{go} string\n    \t{help}\n"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn run(list: &[&str]) -> Vec<String> {
        match translate(&args(list)).unwrap() {
            Legacy::Run(out) => out,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_go_agent_command_line_translates() {
        assert_eq!(
            run(&[
                "-mode",
                "agent",
                "-agent.region=eu",
                "-agent.rpc.report.addr=127.0.0.1:6000"
            ]),
            [
                "agent",
                "--region",
                "eu",
                "--rpc-report-addr",
                "127.0.0.1:6000"
            ]
        );
    }

    #[test]
    fn server_is_the_default_mode_and_all_spellings_work() {
        assert_eq!(
            run(&[
                "--server.probe.file",
                "p.yaml",
                "-server.task",
                "-server.probe.self=false",
                "-log.level=5"
            ]),
            [
                "server",
                "--probe-file",
                "p.yaml",
                "--task",
                "--log-level",
                "5"
            ]
        );
        assert_eq!(run(&[]), ["server"]);
        assert_eq!(
            run(&["-mode=agent", "-agent.tls.insecure=true"]),
            ["agent", "--tls-insecure"]
        );
    }

    #[test]
    fn the_mesh_token_switch_has_a_go_spelling() {
        assert_eq!(
            run(&["-server.mesh.require-token"]),
            ["server", "--mesh-require-token"]
        );
        assert_eq!(run(&["-server.mesh.require-token=false"]), ["server"]);
    }

    #[test]
    fn tracing_is_on_by_default_and_its_go_flags_translate() {
        assert_eq!(run(&["-server.trace"]), ["server"]);
        assert_eq!(run(&["-server.trace=true"]), ["server"]);
        assert_eq!(run(&["-server.trace=false"]), ["server", "--trace-off"]);
        assert_eq!(
            run(&[
                "-server.trace.cooldown=5m",
                "-server.trace.loss-enter",
                "0.1",
                "-server.trace.store.max-records=10"
            ]),
            [
                "server",
                "--trace-cooldown",
                "5m",
                "--trace-loss-enter",
                "0.1",
                "--trace-store-max-records",
                "10"
            ]
        );
        let error = translate(&args(&["-server.trace=maybe"]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("-server.trace"), "{error}");
    }

    #[test]
    fn a_default_on_boolean_is_turned_off_by_false_only() {
        assert_eq!(run(&["-mode=agent", "-agent.trace"]), ["agent"]);
        assert_eq!(run(&["-mode=agent", "-agent.trace=true"]), ["agent"]);
        assert_eq!(
            run(&["-mode=agent", "-agent.trace=false", "-agent.task"]),
            ["agent", "--trace-off", "--task"]
        );
        assert_eq!(run(&["-agent.trace=false"]), ["server"]);
        let error = translate(&args(&["-mode=agent", "-agent.trace=no"]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("-agent.trace"), "{error}");
    }

    #[test]
    fn the_other_modes_flags_are_ignored_as_in_go() {
        assert_eq!(run(&["-mode", "agent", "-server.probe.file=x"]), ["agent"]);
    }

    #[test]
    fn errors_name_the_flag() {
        for (list, expected) in [
            (vec!["-server.nope=1"], "not defined: -server.nope"),
            (vec!["-mode", "proxy"], "\"proxy\" for flag -mode"),
            (vec!["-server.task=maybe"], "-server.task"),
            (vec!["-agent.region"], "needs an argument: -agent.region"),
            (
                vec!["-mode", "agent", "stray"],
                "unexpected argument \"stray\"",
            ),
        ] {
            let error = translate(&args(&list)).unwrap_err().to_string();
            assert!(error.contains(expected), "{list:?}: {error}");
        }
    }

    #[test]
    fn legacy_detection() {
        assert!(is_legacy(&args(&["-mode", "agent"])));
        assert!(is_legacy(&args(&["-server.probe.file=x"])));
        assert!(is_legacy(&args(&[])));
        assert!(!is_legacy(&args(&["server", "--probe-file", "x"])));
        assert!(!is_legacy(&args(&["--help"])));
        assert_eq!(translate(&args(&["-v"])).unwrap(), Legacy::Version);
        assert!(usage().contains("-server.aggregation.interval string"));
    }
}
