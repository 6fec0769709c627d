//! Secrets the adapters share (the link's agent token, the admin endpoints' bearer token):
//! not an adapter but a leaf both use. The shared agent token: loading it from a file or the environment, keeping it out of logs,
//! and comparing it in constant time.
//!
//! The server reads the token from a file (`-server.auth.token-file` later); an agent from a
//! file or the `PROBERMESH_TOKEN` environment variable. The comparison hashes both sides with
//! SHA-256 and compares the digests without an early exit, so neither the token's content nor
//! its length shows in how long a refusal takes.

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use probermesh_core::wire::MAX_TEXT_LEN;

/// The environment variable an agent reads its token from when no token file is given.
pub const TOKEN_ENV_VAR: &str = "PROBERMESH_TOKEN";

/// A shared secret between the server and its agents. `Debug` prints `Token(<redacted>)`
/// and there is no `Display`, so a token cannot reach a log by accident.
#[derive(Clone, Eq, PartialEq)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Why a token could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read.
    #[error("cannot read the token file {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error (in the message, not a `source`: a chain says it
        /// once).
        cause: std::io::Error,
    },
    /// The token is empty (after removing one trailing newline).
    #[error("the token from {origin} is empty")]
    Empty {
        /// Where it came from (a file path or the variable name).
        origin: String,
    },
    /// The token is longer than the protocol carries.
    #[error("the token from {origin} is {len_bytes} bytes, longer than the limit of {max_bytes}")]
    TooLong {
        /// Where it came from.
        origin: String,
        /// Its length.
        len_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// The token is not valid UTF-8 or the environment variable is not unicode.
    #[error("the token from {origin} is not valid UTF-8")]
    NotUtf8 {
        /// Where it came from.
        origin: String,
    },
    /// Neither a token file nor the environment variable was given.
    #[error("no token: give a token file or set {TOKEN_ENV_VAR}")]
    Missing,
}

impl Token {
    /// Who presents this token, for audit logs: `token:` and the first 8 hex digits of its
    /// SHA-256 (enough to tell two tokens apart, nothing of the token itself).
    #[must_use]
    pub fn identity(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        let mut identity = String::from("token:");
        for byte in &digest[..4] {
            identity.push_str(&format!("{byte:02x}"));
        }
        identity
    }

    /// A token from its text; one trailing newline (`\n` or `\r\n`) is removed, as left by
    /// `echo secret > file`. `origin` names the source in errors.
    ///
    /// # Errors
    /// [`TokenError::Empty`] or [`TokenError::TooLong`].
    pub fn new(text: &str, origin: &str) -> Result<Self, TokenError> {
        let text = probermesh_core::model::http_module::without_line_end(text);
        if text.is_empty() {
            return Err(TokenError::Empty {
                origin: origin.to_owned(),
            });
        }
        if text.len() > MAX_TEXT_LEN {
            return Err(TokenError::TooLong {
                origin: origin.to_owned(),
                len_bytes: text.len(),
                max_bytes: MAX_TEXT_LEN,
            });
        }
        Ok(Self(text.to_owned()))
    }

    /// Reads the token from `path`.
    ///
    /// # Errors
    /// [`TokenError::Read`], [`TokenError::NotUtf8`], or as [`Token::new`].
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|cause| TokenError::Read {
            path: path.to_owned(),
            cause,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| TokenError::NotUtf8 {
            origin: origin.clone(),
        })?;
        Self::new(&text, &origin)
    }

    /// The agent's token: from `file` when given, else from [`TOKEN_ENV_VAR`].
    ///
    /// # Errors
    /// [`TokenError::Missing`] when neither is there, or the error of the source used.
    pub fn load(file: Option<&Path>) -> Result<Self, TokenError> {
        Self::load_with(file, |name| std::env::var_os(name))
    }

    /// [`Token::load`] with the environment given as a function (for tests).
    ///
    /// # Errors
    /// As [`Token::load`].
    pub fn load_with(
        file: Option<&Path>,
        env: impl FnOnce(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Self, TokenError> {
        if let Some(path) = file {
            return Self::from_file(path);
        }
        let value = env(TOKEN_ENV_VAR).ok_or(TokenError::Missing)?;
        let text = value.into_string().map_err(|_| TokenError::NotUtf8 {
            origin: TOKEN_ENV_VAR.to_owned(),
        })?;
        Self::new(&text, TOKEN_ENV_VAR)
    }

    /// The secret itself, for the `Hello` message only.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this token, in time independent of both values.
    #[must_use]
    pub fn matches(&self, candidate: &str) -> bool {
        constant_time_eq(
            &Sha256::digest(self.0.as_bytes()),
            &Sha256::digest(candidate.as_bytes()),
        )
    }
}

/// Compares two byte strings of equal length without an early exit (different lengths are
/// unequal at once: callers compare fixed-size digests).
#[must_use]
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_newline_is_removed_and_empty_tokens_are_refused() {
        assert_eq!(Token::new("s3cret\n", "t").unwrap().expose(), "s3cret");
        assert_eq!(Token::new("s3cret\r\n", "t").unwrap().expose(), "s3cret");
        assert_eq!(Token::new("s3cret\n\n", "t").unwrap().expose(), "s3cret\n");
        assert!(matches!(
            Token::new("\n", "file x"),
            Err(TokenError::Empty { origin }) if origin == "file x"
        ));
        assert!(matches!(Token::new("", "t"), Err(TokenError::Empty { .. })));
        let long = "x".repeat(MAX_TEXT_LEN + 1);
        assert!(matches!(
            Token::new(&long, "t"),
            Err(TokenError::TooLong { .. })
        ));
    }

    #[test]
    fn a_file_wins_over_the_environment_and_the_environment_is_the_fallback() {
        let dir = std::env::temp_dir().join(format!("probermesh-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "from-file\n").unwrap();
        let env = |_: &str| Some("from-env".into());
        assert_eq!(
            Token::load_with(Some(&path), env).unwrap().expose(),
            "from-file"
        );
        assert_eq!(Token::load_with(None, env).unwrap().expose(), "from-env");
        assert!(matches!(
            Token::load_with(None, |_| None),
            Err(TokenError::Missing)
        ));
        assert!(matches!(
            Token::load_with(None, |_| Some("".into())),
            Err(TokenError::Empty { .. })
        ));
        let missing = dir.join("absent");
        let err = Token::load_with(Some(&missing), env).unwrap_err();
        assert!(err.to_string().contains("absent"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokens_compare_by_value_and_never_show_in_debug() {
        let token = Token::new("s3cret", "t").unwrap();
        assert!(token.matches("s3cret"));
        assert!(!token.matches("s3cre"));
        assert!(!token.matches("s3cret "));
        assert!(!token.matches(""));
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
