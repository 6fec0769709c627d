//! Task keys: an operator signs each task with an ed25519 key (RFC 8032) that the server never
//! holds; an agent started with `-agent.task.pubkey` runs only tasks whose signature verifies
//! under the pinned public key. The signature covers what the operator decided
//! (`core::wire::task_signing_bytes`: the id, the command, the timeout, the output limit, the
//! expiry and the region selector), so a compromised server can neither write a command, nor
//! send a signed one to regions the operator did not pick, nor keep it alive past its expiry.
//! What it can still do: withhold tasks, and replay a signed task, before it expires, to an
//! agent of the chosen regions that restarted since it ran it.
//!
//! Keys are text: 64 hexadecimal digits (the 32-byte public key, or the 32-byte private
//! seed), alone on a line; blank lines and lines starting with `#` are comments. Signatures in
//! requests are 128 hexadecimal digits.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::link::Signature;

/// A task public key an agent pins.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct TaskPublicKey(VerifyingKey);

/// A task private key an operator signs with. `Debug` shows only the public half.
#[derive(Clone)]
pub struct TaskSigningKey(SigningKey);

impl std::fmt::Debug for TaskSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TaskSigningKey(public {})", self.public().to_hex())
    }
}

/// Why a key's text was refused.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum KeyError {
    /// No key line.
    #[error("no key: expected a line of 64 hexadecimal digits")]
    Missing,
    /// A line that is not a key.
    #[error("line {line}: expected 64 hexadecimal digits (a 32-byte ed25519 key), found {found}")]
    Malformed {
        /// The 1-based line.
        line: usize,
        /// What was there, described (never the text: it may be a private key).
        found: String,
    },
    /// More than one key line.
    #[error("line {line}: a second key; a key file holds one key")]
    Second {
        /// The 1-based line.
        line: usize,
    },
    /// Thirty-two bytes that are not a usable public key (a weak point of the curve).
    #[error("the public key is not a usable ed25519 point")]
    BadPoint,
}

/// Why a task's signature was refused.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum SignatureRefusal {
    /// The agent pins a key and the task carries no signature.
    #[error("this agent runs only signed tasks (-agent.task.pubkey) and the task is unsigned")]
    Unsigned,
    /// The signature does not verify.
    #[error(
        "the task's signature does not verify under this agent's task key (-agent.task.pubkey \
         {key}): signed by another key, or changed after signing"
    )]
    Invalid {
        /// The pinned key in hex.
        key: String,
    },
}

fn hex32(text: &str) -> Result<[u8; 32], KeyError> {
    let mut key_line = None;
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if key_line.is_some() {
            return Err(KeyError::Second { line: index + 1 });
        }
        key_line = Some((index + 1, line));
    }
    let (line, digits) = key_line.ok_or(KeyError::Missing)?;
    let malformed = |found: String| KeyError::Malformed { line, found };
    if digits.len() != 64 {
        return Err(malformed(format!("{} characters", digits.chars().count())));
    }
    let bytes = decode_hex(digits).ok_or_else(|| malformed("a non-hexadecimal digit".into()))?;
    bytes
        .try_into()
        .map_err(|_| malformed("a wrong length".into()))
}

/// Decodes hexadecimal digits (either case).
#[must_use]
pub fn decode_hex(digits: &str) -> Option<Vec<u8>> {
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(digits.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Lowercase hexadecimal digits of `bytes`.
#[must_use]
pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl TaskPublicKey {
    /// The key of a key file's text.
    ///
    /// # Errors
    /// [`KeyError`] naming the line.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let bytes = hex32(text)?;
        VerifyingKey::from_bytes(&bytes)
            .ok()
            .filter(|key| !key.is_weak())
            .map(Self)
            .ok_or(KeyError::BadPoint)
    }

    /// The key in hex (what a key file holds).
    #[must_use]
    pub fn to_hex(&self) -> String {
        encode_hex(self.0.as_bytes())
    }

    /// Checks `signature` (when present) over `signed`, strictly (RFC 8032 with the checks
    /// against malleable signatures).
    ///
    /// # Errors
    /// [`SignatureRefusal`].
    pub fn verify(
        &self,
        signed: &[u8],
        signature: Option<&Signature>,
    ) -> Result<(), SignatureRefusal> {
        let signature = signature.ok_or(SignatureRefusal::Unsigned)?;
        self.0
            .verify_strict(signed, &ed25519_dalek::Signature::from_bytes(&signature.0))
            .map_err(|_| SignatureRefusal::Invalid { key: self.to_hex() })
    }
}

impl TaskSigningKey {
    /// The private key of a key file's text (its 32-byte seed).
    ///
    /// # Errors
    /// [`KeyError`] naming the line.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        Ok(Self::from_seed(hex32(text)?))
    }

    /// The key of a 32-byte seed (from the operating system's randomness, for a new key).
    #[must_use]
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// The seed in hex (what a private key file holds).
    #[must_use]
    pub fn to_hex(&self) -> String {
        encode_hex(self.0.as_bytes())
    }

    /// The public half.
    #[must_use]
    pub fn public(&self) -> TaskPublicKey {
        TaskPublicKey(self.0.verifying_key())
    }

    /// Signs `bytes`.
    #[must_use]
    pub fn sign(&self, bytes: &[u8]) -> Signature {
        Signature(self.0.sign(bytes).to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_under_its_key_and_over_its_bytes() {
        let key = TaskSigningKey::from_seed([7; 32]);
        let other = TaskSigningKey::from_seed([8; 32]);
        let signature = key.sign(b"task");
        assert_eq!(key.public().verify(b"task", Some(&signature)), Ok(()));
        assert!(matches!(
            key.public().verify(b"tasK", Some(&signature)),
            Err(SignatureRefusal::Invalid { .. })
        ));
        assert!(other.public().verify(b"task", Some(&signature)).is_err());
        assert_eq!(
            key.public().verify(b"task", None),
            Err(SignatureRefusal::Unsigned)
        );
    }

    #[test]
    fn key_files_round_trip_and_errors_name_the_line() {
        let key = TaskSigningKey::from_seed([9; 32]);
        let public_text = format!(
            "# probermesh task public key\n\n{}\n",
            key.public().to_hex()
        );
        assert_eq!(TaskPublicKey::parse(&public_text), Ok(key.public()));
        let private = TaskSigningKey::parse(&key.to_hex()).expect("a private key");
        assert_eq!(private.public(), key.public());
        assert_eq!(TaskPublicKey::parse("# nothing\n"), Err(KeyError::Missing));
        assert_eq!(
            TaskPublicKey::parse("#\nabc\n"),
            Err(KeyError::Malformed {
                line: 2,
                found: "3 characters".into()
            })
        );
        let two = format!("{0}\n{0}\n", key.public().to_hex());
        assert_eq!(
            TaskPublicKey::parse(&two),
            Err(KeyError::Second { line: 2 })
        );
        let debug = format!("{private:?}");
        assert!(!debug.contains(&key.to_hex()), "the seed stays out of logs");
    }
}
