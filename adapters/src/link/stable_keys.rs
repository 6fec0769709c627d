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
//! leaves the process; a stateless reset cannot be forged without it. A new certificate means
//! new keys, which only costs the old behaviour (the idle timeout) once.

use std::sync::Arc;

use quinn::EndpointConfig;
use quinn_proto::HashedConnectionIdGenerator;
use sha2::{Digest, Sha256};

/// Label of the stateless-reset key derivation.
const RESET_KEY_LABEL: &[u8] = b"probermesh quic stateless reset key v1";
/// Label of the connection-ID generator key derivation.
const CID_KEY_LABEL: &[u8] = b"probermesh quic connection id key v1";

/// The endpoint configuration of a server whose private key (DER) is `private_key_der`.
pub(crate) fn endpoint_config(private_key_der: &[u8]) -> EndpointConfig {
    let reset_secret = derive(RESET_KEY_LABEL, private_key_der);
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset_secret);
    let mut config = EndpointConfig::new(Arc::new(reset_key));
    let cid_key = cid_key(private_key_der);
    config.cid_generator(move || Box::new(HashedConnectionIdGenerator::from_key(cid_key)));
    config
}

fn cid_key(private_key_der: &[u8]) -> u64 {
    let digest = derive(CID_KEY_LABEL, private_key_der);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
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
    use quinn_proto::ConnectionIdGenerator;

    use super::*;

    #[test]
    fn keys_are_stable_per_private_key_and_differ_between_keys() {
        assert_eq!(cid_key(b"key one"), cid_key(b"key one"));
        assert_ne!(cid_key(b"key one"), cid_key(b"key two"));
        assert_ne!(
            derive(RESET_KEY_LABEL, b"key one"),
            derive(CID_KEY_LABEL, b"key one"),
            "the two keys are independent"
        );
    }

    #[test]
    fn a_restarted_generator_recognises_the_ids_of_the_previous_one() {
        let mut before = HashedConnectionIdGenerator::from_key(cid_key(b"server key"));
        let after = HashedConnectionIdGenerator::from_key(cid_key(b"server key"));
        let other = HashedConnectionIdGenerator::from_key(cid_key(b"another key"));
        let ids: Vec<_> = (0..64).map(|_| before.generate_cid()).collect();
        assert!(ids.iter().all(|id| after.validate(id).is_ok()));
        // A 32-bit signature: a foreign key accepts an id by chance one time in 2^32.
        assert!(ids.iter().filter(|id| other.validate(id).is_ok()).count() <= 1);
    }
}
