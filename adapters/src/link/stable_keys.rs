//! Endpoint keys that survive a server restart, so agents learn at once that the server they
//! were talking to is gone.
//!
//! A QUIC server that crashed and came back on the same address knows nothing of the old
//! connections. With quinn's defaults (a random stateless-reset key and a randomly keyed
//! connection-ID generator, per process) it silently drops the agents' packets, and each agent
//! notices only at its idle timeout (30 s), its results waiting meanwhile. Keyed from the
//! server's private key instead, the new process recognises the old connection IDs as its own
//! and answers them with a valid stateless reset (RFC 9000 §10.3): the agent's connection ends
//! within one packet and it reconnects.
//!
//! Both keys are one-way derivations (SHA-256 with a label) of the private key, which never
//! leaves the process. Connection IDs are 16 bytes: 8 random bytes and an 8-byte HMAC-SHA256
//! tag of them, so they do not repeat across restarts (a stateless reset's token is tied to
//! its connection ID) and the server answers only IDs it issued; forging a reset or making
//! the server send one for an ID it never issued needs the private key. Two servers running
//! with the same key at once could reset each other's agents: give each its own certificate.
//! A new certificate means new keys, which only costs the old behaviour (the idle timeout)
//! once. quinn sends at most one reset per `RESET_INTERVAL` per endpoint, and a reset is
//! always smaller than the packet that caused it (no amplification).

use std::sync::Arc;
use std::time::Duration;

use quinn::{ConnectionId, ConnectionIdGenerator, EndpointConfig};
use quinn_proto::InvalidCid;
use ring::hmac;
use sha2::{Digest, Sha256};

use crate::secret::constant_time_eq;

/// Label of the stateless-reset key derivation.
const RESET_KEY_LABEL: &[u8] = b"probermesh quic stateless reset key v1";
/// Label of the connection-ID generator key derivation.
const CID_KEY_LABEL: &[u8] = b"probermesh quic connection id key v1";
/// Random bytes at the start of a connection ID.
const NONCE_LEN: usize = 8;
/// HMAC tag bytes after them.
const TAG_LEN: usize = 8;
/// Shortest interval between two stateless resets (quinn's default is 20 ms, which would take
/// 20 s to reset a thousand agents).
const RESET_INTERVAL: Duration = Duration::from_millis(1);

/// The endpoint configuration of a server whose private key (DER) is `private_key_der`.
pub(crate) fn endpoint_config(private_key_der: &[u8]) -> EndpointConfig {
    let reset_secret = derive(RESET_KEY_LABEL, private_key_der);
    let reset_key = hmac::Key::new(hmac::HMAC_SHA256, &reset_secret);
    let mut config = EndpointConfig::new(Arc::new(reset_key));
    let cid_key = hmac::Key::new(hmac::HMAC_SHA256, &derive(CID_KEY_LABEL, private_key_der));
    config.cid_generator(move || Box::new(TaggedCidGenerator::new(cid_key.clone())));
    config.min_reset_interval(RESET_INTERVAL);
    config
}

/// Connection IDs of 8 random bytes and an 8-byte HMAC tag of them.
struct TaggedCidGenerator {
    key: hmac::Key,
    /// Only used when the OS random source fails.
    fallback_counter: u64,
}

impl TaggedCidGenerator {
    fn new(key: hmac::Key) -> Self {
        Self {
            key,
            fallback_counter: 0,
        }
    }

    fn tag(&self, nonce: &[u8]) -> [u8; TAG_LEN] {
        let full = hmac::sign(&self.key, nonce);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full.as_ref()[..TAG_LEN]);
        tag
    }
}

impl ConnectionIdGenerator for TaggedCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; NONCE_LEN + TAG_LEN];
        self.fallback_counter = self.fallback_counter.wrapping_add(1);
        let nonce = getrandom::u64().unwrap_or_else(|_| {
            // The trait cannot fail. Without the OS random source, a keyed hash of a counter
            // and the clock is still unpredictable to anyone without the key.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let mut seed = self.fallback_counter.to_le_bytes().to_vec();
            seed.extend_from_slice(&nanos.to_le_bytes());
            u64::from_le_bytes(self.tag(&seed))
        });
        bytes[..NONCE_LEN].copy_from_slice(&nonce.to_le_bytes());
        let tag = self.tag(&bytes[..NONCE_LEN]);
        bytes[NONCE_LEN..].copy_from_slice(&tag);
        ConnectionId::new(&bytes)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if cid.len() != NONCE_LEN + TAG_LEN {
            return Err(InvalidCid);
        }
        let (nonce, tag) = cid.split_at(NONCE_LEN);
        if constant_time_eq(&self.tag(nonce), tag) {
            Ok(())
        } else {
            Err(InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        NONCE_LEN + TAG_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

fn derive(label: &[u8], secret: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(label);
    hasher.update((secret.len() as u64).to_be_bytes());
    hasher.update(secret);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generator(secret: &[u8]) -> TaggedCidGenerator {
        TaggedCidGenerator::new(hmac::Key::new(
            hmac::HMAC_SHA256,
            &derive(CID_KEY_LABEL, secret),
        ))
    }

    #[test]
    fn derived_keys_are_stable_per_private_key_and_independent() {
        assert_eq!(
            derive(RESET_KEY_LABEL, b"key one"),
            derive(RESET_KEY_LABEL, b"key one")
        );
        assert_ne!(
            derive(RESET_KEY_LABEL, b"key one"),
            derive(RESET_KEY_LABEL, b"key two")
        );
        assert_ne!(
            derive(RESET_KEY_LABEL, b"key one"),
            derive(CID_KEY_LABEL, b"key one"),
            "the two keys are independent"
        );
    }

    #[test]
    fn a_restarted_generator_recognises_the_ids_of_the_previous_one_only() {
        let mut before = generator(b"server key");
        let after = generator(b"server key");
        let other = generator(b"another key");
        let ids: Vec<ConnectionId> = (0..256).map(|_| before.generate_cid()).collect();
        assert!(ids.iter().all(|id| id.len() == 16));
        assert!(ids.iter().all(|id| after.validate(id).is_ok()));
        // A 64-bit tag: a foreign key accepts an id by chance one time in 2^64.
        assert!(ids.iter().all(|id| other.validate(id).is_err()));
        let distinct: std::collections::HashSet<&[u8]> = ids.iter().map(|id| &id[..]).collect();
        assert_eq!(distinct.len(), ids.len(), "random nonces");
        // Tampered or short ids are refused.
        let mut tampered = ids[0][..].to_vec();
        tampered[15] ^= 1;
        assert!(after.validate(&ConnectionId::new(&tampered)).is_err());
        assert!(after.validate(&ConnectionId::new(&ids[0][..8])).is_err());
    }
}
