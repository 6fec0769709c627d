//! The release key and the signatures of release binaries: the server checks an upload with
//! `-server.upgrade.pubkey`, the agent re-checks it with its own pinned `-agent.upgrade.pubkey`
//! (so a compromised server cannot push code). Two kinds, as operators have them: a minisign
//! key (`minisign -G`; signatures from `minisign -S`, prehashed or legacy) and a bare ed25519
//! key (64 hex characters; a signature of 128 hex characters over the file's bytes).
//!
//! minisign-verify does the minisign verification (streaming for prehashed signatures); the
//! signature's fields are also parsed here, only to tell the operator *which* check failed
//! (another key, the file, the trusted comment): the crate says "invalid" for both of the
//! last two.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::bounded_read::{BoundedReadError, Links, read_regular_file};

use super::{hex, parse_hex};

/// The most a release key file may hold.
pub const MAX_KEY_FILE_BYTES: u64 = 4 * 1024;

/// The most a file verified as a whole (a legacy minisign signature or a bare ed25519 one:
/// neither can be checked while streaming) may hold; the fetch's default cap.
pub const MAX_WHOLE_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// The minisign signature algorithm of a prehashed signature (`ED`) and of a legacy one
/// (`Ed`); a key carries `Ed`.
const PREHASHED: [u8; 2] = *b"ED";
const LEGACY: [u8; 2] = *b"Ed";

/// The size of one read while streaming a file through the verifier.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A public key that release binaries are signed with.
#[derive(Clone, Debug)]
pub struct ReleaseKey {
    kind: KeyKind,
}

#[derive(Clone, Debug)]
enum KeyKind {
    /// A minisign public key.
    Minisign {
        key: minisign_verify::PublicKey,
        /// Its key id as minisign prints it (16 upper-case hex digits).
        key_id: String,
        /// The ed25519 key inside, for telling a bad trusted comment from a bad file.
        ed25519: ed25519_dalek::VerifyingKey,
    },
    /// A bare ed25519 public key.
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// Why a key could not be read or a signature was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseKeyError {
    /// The key's text is neither kind of key.
    #[error(
        "not a release key: {reason} (expected a minisign public key file, its base64 line, or \
         64 hex characters of an ed25519 public key)"
    )]
    BadKey {
        /// What is wrong with it.
        reason: String,
    },
    /// The key file could not be read.
    #[error("cannot read the release key {}: {cause}", path.display())]
    ReadKey {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        cause: BoundedReadError,
    },
    /// The key file holds no valid key.
    #[error("the release key {} is not usable: {cause}", path.display())]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// Why (a [`ReleaseKeyError::BadKey`]).
        cause: Box<ReleaseKeyError>,
    },
    /// The signature's text is neither kind of signature.
    #[error(
        "not a release signature: {reason} (expected a minisign .minisig text or 128 hex \
         characters of an ed25519 signature)"
    )]
    BadSignature {
        /// What is wrong with it.
        reason: String,
    },
    /// The signature is of the other kind than the key.
    #[error("the signature is a {signature} signature but the release key is a {key} key")]
    KindMismatch {
        /// The signature's kind.
        signature: &'static str,
        /// The key's kind.
        key: &'static str,
    },
    /// A minisign signature made with another key.
    #[error(
        "{} was signed with minisign key {signed_by}, not with the release key {release_key}",
        path.display()
    )]
    OtherKey {
        /// The file.
        path: PathBuf,
        /// The key id in the signature.
        signed_by: String,
        /// The release key's id.
        release_key: String,
    },
    /// The signature's trusted comment was altered (or the comment signature is bad).
    #[error(
        "the signature of {} is refused: its trusted comment ({comment:?}) was altered after \
         signing (the comment's signature does not match)",
        path.display()
    )]
    CommentAltered {
        /// The file.
        path: PathBuf,
        /// The trusted comment as it is now.
        comment: String,
    },
    /// The file is not the one that was signed.
    #[error(
        "the signature does not match {}: the file is not the one that was signed (altered, \
         truncated or another build)",
        path.display()
    )]
    FileMismatch {
        /// The file.
        path: PathBuf,
    },
    /// The file could not be read for verification.
    #[error("cannot read {} to verify its signature: {cause}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        cause: std::io::Error,
    },
    /// A file that must be verified whole is too large.
    #[error(
        "{} is {len_bytes} bytes long: a {what} signature is checked over the whole file in \
         memory, up to {max_bytes} bytes (sign it with a prehashed minisign signature instead)",
        path.display()
    )]
    TooLargeToVerify {
        /// The file.
        path: PathBuf,
        /// Its length.
        len_bytes: u64,
        /// The limit.
        max_bytes: u64,
        /// The kind of signature.
        what: &'static str,
    },
}

/// A signature's text, parsed.
enum SignatureText {
    Minisign {
        signature: Box<minisign_verify::Signature>,
        /// The key id it names, as minisign prints it.
        key_id: String,
        /// Whether it signs BLAKE2b-512 of the file (streamable) rather than the file.
        prehashed: bool,
        /// The ed25519 signature of the file (or its hash).
        file_signature: [u8; 64],
        /// The ed25519 signature of `file_signature` and the trusted comment.
        global_signature: [u8; 64],
    },
    Ed25519(ed25519_dalek::Signature),
}

impl ReleaseKey {
    /// A key from its text: a minisign public key file (`untrusted comment: …` then the
    /// `RW…` line), the bare base64 line, or 64 hex characters of an ed25519 public key.
    /// Surrounding white space is ignored.
    ///
    /// # Errors
    /// [`ReleaseKeyError::BadKey`], saying what is wrong.
    pub fn parse(text: &str) -> Result<Self, ReleaseKeyError> {
        let bad = |reason: &str| ReleaseKeyError::BadKey {
            reason: reason.to_owned(),
        };
        let trimmed = text.trim();
        if let Some(bytes) = parse_hex::<32>(trimmed) {
            let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                .map_err(|_| bad("the 64 hex characters are not a valid ed25519 public key"))?;
            return Ok(Self {
                kind: KeyKind::Ed25519(key),
            });
        }
        let mut lines = trimmed.lines().map(str::trim).filter(|l| !l.is_empty());
        let first = lines.next().ok_or_else(|| bad("it is empty"))?;
        let base64_line = if first.starts_with("untrusted comment:") {
            lines
                .next()
                .ok_or_else(|| bad("the untrusted comment is not followed by a key line"))?
        } else {
            first
        };
        if lines.next().is_some() {
            return Err(bad("it has more lines than a minisign public key"));
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(base64_line)
            .map_err(|_| bad("the key line is not base64"))?;
        if raw.len() != 42 {
            return Err(bad(&format!(
                "the key line decodes to {} bytes, a minisign key has 42",
                raw.len()
            )));
        }
        let (Some(algorithm), Some(id), Some(ed25519_bytes)) =
            (raw.get(..2), raw.get(2..10), raw.get(10..))
        else {
            return Err(bad("the key line is too short for a minisign key"));
        };
        if algorithm != LEGACY {
            return Err(bad(
                "the key line is not a minisign ed25519 key (no `Ed` tag)",
            ));
        }
        let ed25519_bytes: [u8; 32] = ed25519_bytes
            .try_into()
            .map_err(|_| bad("the key line is too short for a minisign key"))?;
        let ed25519 = ed25519_dalek::VerifyingKey::from_bytes(&ed25519_bytes)
            .map_err(|_| bad("the minisign key holds an invalid ed25519 key"))?;
        let key = minisign_verify::PublicKey::from_base64(base64_line)
            .map_err(|error| bad(&format!("minisign refuses it: {error}")))?;
        Ok(Self {
            kind: KeyKind::Minisign {
                key,
                key_id: key_id_text(id),
                ed25519,
            },
        })
    }

    /// The key in the file at `path` (a regular file of at most [`MAX_KEY_FILE_BYTES`]).
    ///
    /// # Errors
    /// [`ReleaseKeyError::ReadKey`] or [`ReleaseKeyError::KeyFile`], naming the path.
    pub fn load(path: &Path) -> Result<Self, ReleaseKeyError> {
        let bytes =
            read_regular_file(path, MAX_KEY_FILE_BYTES, Links::Follow).map_err(|cause| {
                ReleaseKeyError::ReadKey {
                    path: path.to_owned(),
                    cause,
                }
            })?;
        let text = String::from_utf8_lossy(&bytes);
        Self::parse(&text).map_err(|cause| ReleaseKeyError::KeyFile {
            path: path.to_owned(),
            cause: Box::new(cause),
        })
    }

    /// What kind of key this is (`minisign` or `ed25519`), for messages.
    #[must_use]
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            KeyKind::Minisign { .. } => "minisign",
            KeyKind::Ed25519(_) => "bare ed25519",
        }
    }

    /// Verifies that `signature_text` signs the file `binary` with this key: a minisign
    /// `.minisig` text (prehashed signatures are checked while streaming the file; legacy ones
    /// over the whole file, up to [`MAX_WHOLE_FILE_BYTES`]) for a minisign key, or 128 hex
    /// characters of an ed25519 signature over the file's bytes for a bare key.
    ///
    /// # Errors
    /// A [`ReleaseKeyError`] saying which check failed: the signature's text, its kind against
    /// the key's, another key, the trusted comment, the file, or reading the file.
    pub fn verify_file(&self, binary: &Path, signature_text: &str) -> Result<(), ReleaseKeyError> {
        self.verify_file_trusted_comment(binary, signature_text)
            .map(drop)
    }

    /// [`ReleaseKey::verify_file`], returning the signature's trusted comment once verified
    /// (a minisign signature's; none for a bare ed25519 one).
    ///
    /// # Errors
    /// As [`ReleaseKey::verify_file`].
    pub fn verify_file_trusted_comment(
        &self,
        binary: &Path,
        signature_text: &str,
    ) -> Result<Option<String>, ReleaseKeyError> {
        let signature = parse_signature(signature_text)?;
        match (&self.kind, signature) {
            (
                KeyKind::Minisign {
                    key,
                    key_id,
                    ed25519,
                },
                SignatureText::Minisign {
                    signature,
                    key_id: signed_by,
                    prehashed,
                    file_signature,
                    global_signature,
                },
            ) => {
                if signed_by != *key_id {
                    return Err(ReleaseKeyError::OtherKey {
                        path: binary.to_owned(),
                        signed_by,
                        release_key: key_id.clone(),
                    });
                }
                // The trusted comment's signature first: it does not need the file, and a
                // failure there says precisely what was changed.
                let comment = signature.trusted_comment().to_owned();
                let mut global = file_signature.to_vec();
                global.extend_from_slice(comment.as_bytes());
                let global_signature = ed25519_dalek::Signature::from_bytes(&global_signature);
                if ed25519.verify_strict(&global, &global_signature).is_err() {
                    return Err(ReleaseKeyError::CommentAltered {
                        path: binary.to_owned(),
                        comment,
                    });
                }
                let verified = if prehashed {
                    stream_verify(key, &signature, binary)?
                } else {
                    let bytes = read_whole(binary, "legacy minisign")?;
                    key.verify(&bytes, &signature, true)
                };
                match verified {
                    Ok(()) => Ok(Some(comment)),
                    Err(minisign_verify::Error::IoError(cause)) => Err(ReleaseKeyError::ReadFile {
                        path: binary.to_owned(),
                        cause,
                    }),
                    Err(_) => Err(ReleaseKeyError::FileMismatch {
                        path: binary.to_owned(),
                    }),
                }
            }
            (KeyKind::Ed25519(key), SignatureText::Ed25519(signature)) => {
                let bytes = read_whole(binary, "bare ed25519")?;
                key.verify_strict(&bytes, &signature)
                    .map(|()| None)
                    .map_err(|_| ReleaseKeyError::FileMismatch {
                        path: binary.to_owned(),
                    })
            }
            (KeyKind::Minisign { .. }, SignatureText::Ed25519(_)) => {
                Err(ReleaseKeyError::KindMismatch {
                    signature: "bare ed25519",
                    key: "minisign",
                })
            }
            (KeyKind::Ed25519(_), SignatureText::Minisign { .. }) => {
                Err(ReleaseKeyError::KindMismatch {
                    signature: "minisign",
                    key: "bare ed25519",
                })
            }
        }
    }
}

/// A minisign key id as minisign prints it: the 8 bytes as a little-endian number in hex.
fn key_id_text(id: &[u8]) -> String {
    let mut reversed = id.to_vec();
    reversed.reverse();
    hex(&reversed).to_uppercase()
}

/// Parses a signature's text (see [`ReleaseKey::verify_file`]).
fn parse_signature(text: &str) -> Result<SignatureText, ReleaseKeyError> {
    let bad = |reason: &str| ReleaseKeyError::BadSignature {
        reason: reason.to_owned(),
    };
    let trimmed = text.trim();
    if let Some(bytes) = parse_hex::<64>(trimmed) {
        return Ok(SignatureText::Ed25519(
            ed25519_dalek::Signature::from_bytes(&bytes),
        ));
    }
    let lines: Vec<&str> = trimmed
        .lines()
        .map(|line| line.trim_end_matches('\r'))
        .collect();
    let [untrusted, signature_line, trusted, global_line] = lines.as_slice() else {
        return Err(bad(&format!(
            "it has {} lines, a minisign signature has 4",
            lines.len()
        )));
    };
    if !untrusted.starts_with("untrusted comment:") {
        return Err(bad("the first line is not an untrusted comment"));
    }
    if !trusted.starts_with("trusted comment: ") {
        return Err(bad("the third line is not a trusted comment"));
    }
    let engine = base64::engine::general_purpose::STANDARD;
    let raw = engine
        .decode(signature_line.trim())
        .map_err(|_| bad("the signature line is not base64"))?;
    let global = engine
        .decode(global_line.trim())
        .map_err(|_| bad("the comment signature line is not base64"))?;
    let (Some(algorithm), Some(id), Some(file_signature)) =
        (raw.get(..2), raw.get(2..10), raw.get(10..))
    else {
        return Err(bad("the signature line is too short"));
    };
    let file_signature: [u8; 64] = file_signature
        .try_into()
        .map_err(|_| bad("the signature line does not hold a 64-byte signature"))?;
    let global_signature: [u8; 64] = global
        .as_slice()
        .try_into()
        .map_err(|_| bad("the comment signature line does not hold a 64-byte signature"))?;
    let prehashed = match [algorithm.first().copied(), algorithm.get(1).copied()] {
        [Some(a), Some(b)] if [a, b] == PREHASHED => true,
        [Some(a), Some(b)] if [a, b] == LEGACY => false,
        _ => return Err(bad("the signature algorithm is neither `ED` nor `Ed`")),
    };
    let key_id = key_id_text(id);
    let signature = minisign_verify::Signature::decode(&lines.join("\n"))
        .map_err(|error| bad(&format!("minisign refuses it: {error}")))?;
    Ok(SignatureText::Minisign {
        signature: Box::new(signature),
        key_id,
        prehashed,
        file_signature,
        global_signature,
    })
}

/// Verifies a prehashed minisign signature while reading `binary` in chunks; the outer error is
/// reading, the inner the verifier's verdict.
fn stream_verify(
    key: &minisign_verify::PublicKey,
    signature: &minisign_verify::Signature,
    binary: &Path,
) -> Result<Result<(), minisign_verify::Error>, ReleaseKeyError> {
    let read_error = |cause| ReleaseKeyError::ReadFile {
        path: binary.to_owned(),
        cause,
    };
    let mut verifier = match key.verify_stream(signature) {
        Ok(verifier) => verifier,
        Err(error) => return Ok(Err(error)),
    };
    let mut file = File::open(binary).map_err(read_error)?;
    let mut chunk = vec![0; READ_CHUNK_BYTES];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(len) => verifier.update(chunk.get(..len).unwrap_or(&chunk)),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(read_error(error)),
        }
    }
    Ok(verifier.finalize())
}

/// The whole of `binary`, for a signature that cannot be checked while streaming.
fn read_whole(binary: &Path, what: &'static str) -> Result<Vec<u8>, ReleaseKeyError> {
    let read_error = |cause| ReleaseKeyError::ReadFile {
        path: binary.to_owned(),
        cause,
    };
    let file = File::open(binary).map_err(read_error)?;
    let len_bytes = file.metadata().map_err(read_error)?.len();
    if len_bytes > MAX_WHOLE_FILE_BYTES {
        return Err(ReleaseKeyError::TooLargeToVerify {
            path: binary.to_owned(),
            len_bytes,
            max_bytes: MAX_WHOLE_FILE_BYTES,
            what,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len_bytes).unwrap_or(0));
    file.take(MAX_WHOLE_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::test_dir::TestDir;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/upgrade")
            .join(name)
    }

    fn text(name: &str) -> String {
        std::fs::read_to_string(fixture(name)).unwrap()
    }

    #[test]
    fn the_fixtures_verify_with_their_keys_in_every_spelling() {
        let key = ReleaseKey::load(&fixture("release.pub")).unwrap();
        assert_eq!(key.kind_name(), "minisign");
        let binary = fixture("release.bin");
        assert_eq!(
            key.verify_file_trusted_comment(&binary, &text("release.bin.minisig"))
                .unwrap()
                .as_deref(),
            Some("version:1.1.0 target:x86_64-unknown-linux-gnu")
        );
        key.verify_file(&binary, &text("release.bin.legacy.minisig"))
            .unwrap();
        // The bare base64 line is the same key.
        let line = text("release.pub").lines().nth(1).unwrap().to_owned();
        ReleaseKey::parse(&line)
            .unwrap()
            .verify_file(&binary, &text("release.bin.minisig"))
            .unwrap();

        let bare = ReleaseKey::load(&fixture("release.ed25519.pub")).unwrap();
        assert_eq!(bare.kind_name(), "bare ed25519");
        bare.verify_file(&binary, &text("release.bin.ed25519.sig"))
            .unwrap();
        ReleaseKey::parse(&text("release.ed25519.pub").to_uppercase())
            .unwrap()
            .verify_file(&binary, &text("release.bin.ed25519.sig").to_uppercase())
            .unwrap();
    }

    #[test]
    fn another_key_a_changed_file_and_a_changed_comment_are_refused_each_saying_so() {
        let dir = TestDir::new("refusals");
        let key = ReleaseKey::load(&fixture("release.pub")).unwrap();
        let other = ReleaseKey::load(&fixture("other.pub")).unwrap();
        let signature = text("release.bin.minisig");
        let binary = fixture("release.bin");

        let error = other.verify_file(&binary, &signature).unwrap_err();
        assert!(matches!(error, ReleaseKeyError::OtherKey { .. }), "{error}");
        assert!(
            error.to_string().contains(
                "was signed with minisign key 592ED3AAF8257C91, not with the release key"
            ),
            "{error}"
        );

        let tampered = dir.path().join("release.bin");
        let mut bytes = std::fs::read(&binary).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&tampered, &bytes).unwrap();
        for signature_name in ["release.bin.minisig", "release.bin.legacy.minisig"] {
            let error = key
                .verify_file(&tampered, &text(signature_name))
                .unwrap_err();
            assert!(
                matches!(error, ReleaseKeyError::FileMismatch { .. }),
                "{error}"
            );
            assert!(
                error
                    .to_string()
                    .contains("the file is not the one that was signed"),
                "{error}"
            );
        }
        let bare = ReleaseKey::load(&fixture("release.ed25519.pub")).unwrap();
        let error = bare
            .verify_file(&tampered, &text("release.bin.ed25519.sig"))
            .unwrap_err();
        assert!(
            matches!(error, ReleaseKeyError::FileMismatch { .. }),
            "{error}"
        );

        let altered = signature.replace("version:1.1.0", "version:9.9.9");
        assert_ne!(altered, signature);
        let error = key.verify_file(&binary, &altered).unwrap_err();
        assert!(
            matches!(error, ReleaseKeyError::CommentAltered { .. }),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .contains("\"version:9.9.9 target:x86_64-unknown-linux-gnu\") was altered"),
            "{error}"
        );

        let missing = dir.path().join("absent");
        let error = key.verify_file(&missing, &signature).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with(&format!("cannot read {}", missing.display())),
            "{error}"
        );
    }

    #[test]
    fn a_signature_of_the_other_kind_and_malformed_texts_are_clear_errors() {
        let binary = fixture("release.bin");
        let key = ReleaseKey::load(&fixture("release.pub")).unwrap();
        let bare = ReleaseKey::load(&fixture("release.ed25519.pub")).unwrap();
        assert_eq!(
            key.verify_file(&binary, &text("release.bin.ed25519.sig"))
                .unwrap_err()
                .to_string(),
            "the signature is a bare ed25519 signature but the release key is a minisign key"
        );
        assert_eq!(
            bare.verify_file(&binary, &text("release.bin.minisig"))
                .unwrap_err()
                .to_string(),
            "the signature is a minisign signature but the release key is a bare ed25519 key"
        );
        let error = key.verify_file(&binary, "nonsense").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("not a release signature: it has 1 lines"),
            "{error}"
        );
        for (key_text, expected) in [
            ("", "it is empty"),
            ("zz", "the key line is not base64"),
            ("untrusted comment: x", "not followed by a key line"),
            ("AAAA", "decodes to 3 bytes"),
        ] {
            let error = ReleaseKey::parse(key_text).unwrap_err().to_string();
            assert!(error.contains(expected), "{key_text:?}: {error}");
        }
        let dir = TestDir::new("keyfile");
        let path = dir.path().join("key.pub");
        std::fs::write(&path, "junk").unwrap();
        let error = ReleaseKey::load(&path).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!(
                "the release key {} is not usable: not a release key",
                path.display()
            )),
            "{error}"
        );
        std::fs::write(&path, vec![b'a'; 5000]).unwrap();
        let error = ReleaseKey::load(&path).unwrap_err().to_string();
        assert!(error.contains("the limit is 4096 bytes"), "{error}");
    }

    #[test]
    fn signatures_made_here_by_the_minisign_tool_verify() {
        // The checked-in fixtures cover machines without the tool; where it is, a fresh key
        // pair and signature prove the format has not drifted.
        if std::process::Command::new("minisign")
            .arg("-v")
            .output()
            .is_err()
        {
            eprintln!("minisign is not installed: only the checked-in fixtures were verified");
            return;
        }
        let dir = TestDir::new("minisign");
        let (public, secret) = (dir.path().join("k.pub"), dir.path().join("k.key"));
        let binary = dir.path().join("probermesh");
        std::fs::write(&binary, vec![7u8; 300_000]).unwrap();
        let run = |args: &[&std::ffi::OsStr]| {
            let output = std::process::Command::new("minisign")
                .args(args)
                .output()
                .unwrap();
            assert!(output.status.success(), "{output:?}");
        };
        run(&[
            "-G".as_ref(),
            "-W".as_ref(),
            "-f".as_ref(),
            "-p".as_ref(),
            public.as_os_str(),
            "-s".as_ref(),
            secret.as_os_str(),
        ]);
        run(&[
            "-S".as_ref(),
            "-s".as_ref(),
            secret.as_os_str(),
            "-m".as_ref(),
            binary.as_os_str(),
            "-t".as_ref(),
            "version:2.0.0".as_ref(),
        ]);
        let key = ReleaseKey::load(&public).unwrap();
        let signature = std::fs::read_to_string(dir.path().join("probermesh.minisig")).unwrap();
        assert_eq!(
            key.verify_file_trusted_comment(&binary, &signature)
                .unwrap()
                .as_deref(),
            Some("version:2.0.0")
        );
        std::fs::write(&binary, vec![7u8; 299_999]).unwrap();
        assert!(matches!(
            key.verify_file(&binary, &signature),
            Err(ReleaseKeyError::FileMismatch { .. })
        ));
    }
}
