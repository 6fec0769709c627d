//! SHA-256 certificate fingerprints: how an operator pins the server's certificate on agents.
//!
//! Printed as 32 uppercase hex bytes joined by colons (the format of
//! `openssl x509 -noout -fingerprint -sha256`); parsed from that, or from plain hex in either
//! case, so a value copied from the server's start-up log or from openssl works.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// The SHA-256 digest of a certificate's DER bytes.
#[derive(Clone, Copy, Eq, Hash, PartialEq)]
pub struct Sha256Fingerprint(pub [u8; 32]);

impl Sha256Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    #[must_use]
    pub fn of_der(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }
}

impl fmt::Display for Sha256Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sha256Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Fingerprint({self})")
    }
}

/// Why a fingerprint did not parse.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error(
    "invalid SHA-256 fingerprint {text:?}: expected 64 hex digits, optionally in colon-separated pairs"
)]
pub struct FingerprintError {
    /// The text given (a fingerprint is public, so it may be shown).
    pub text: String,
}

impl FromStr for Sha256Fingerprint {
    type Err = FingerprintError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || FingerprintError {
            text: text.chars().take(200).collect(),
        };
        let trimmed = text.trim();
        let digits: Vec<u8> = if trimmed.contains(':') {
            let pairs: Vec<&str> = trimmed.split(':').collect();
            if pairs.iter().any(|p| p.len() != 2) {
                return Err(err());
            }
            pairs.concat().into_bytes()
        } else {
            trimmed.as_bytes().to_vec()
        };
        if digits.len() != 64 {
            return Err(err());
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            let hi = hex_value(pair[0]).ok_or_else(err)?;
            let lo = hex_value(pair[1]).ok_or_else(err)?;
            *byte = (hi << 4) | lo;
        }
        Ok(Self(bytes))
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_print_with_colons_and_parse_in_both_spellings() {
        let fp = Sha256Fingerprint::of_der(b"certificate");
        let text = fp.to_string();
        assert_eq!(text.len(), 32 * 3 - 1);
        assert!(text.chars().all(|c| c == ':' || c.is_ascii_hexdigit()));
        assert_eq!(text.parse::<Sha256Fingerprint>().unwrap(), fp);
        assert_eq!(
            text.to_lowercase().parse::<Sha256Fingerprint>().unwrap(),
            fp
        );
        assert_eq!(
            text.replace(':', "").parse::<Sha256Fingerprint>().unwrap(),
            fp
        );
        assert_eq!(
            format!(" {text}\n").parse::<Sha256Fingerprint>().unwrap(),
            fp
        );
    }

    #[test]
    fn malformed_fingerprints_are_refused() {
        for bad in [
            "",
            "AB",
            &"A".repeat(63),
            &"G".repeat(64),
            "ABC:DE",
            &"AB:".repeat(32),
        ] {
            assert!(bad.parse::<Sha256Fingerprint>().is_err(), "{bad:?}");
        }
    }
}
