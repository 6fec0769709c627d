//! Fuzz target for the protocol's untrusted-input path: arbitrary bytes go through
//! `FrameDecoder` as the message types of both versions, in chunks of a fuzzer-chosen size,
//! and every message that decodes is checked for limits, converted to domain values and
//! re-encoded; every frame body also goes through the hello reader and the version-dispatching
//! decoders the link uses. Nothing may panic, buffer past the frame limit or fail to
//! round-trip.

#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use probermesh_core::model::{AgentId, Region};
use probermesh_core::wire::{
    AgentMessage, AgentMessageV2, FrameDecoder, LEN_PREFIX_BYTES, ProtocolVersion, ServerMessage,
    ServerMessageV2, decode_frame, decode_from_agent, decode_from_server, decode_hello,
    encode_frame, pool_into_domain, results_into_domain,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A small limit, so oversized prefixes are common and each run stays fast.
const MAX_FRAME_LEN: usize = 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size the stream arrives in.
    let Some((&chunk_byte, stream)) = data.split_first() else {
        return;
    };
    let chunk_len = usize::from(chunk_byte) + 1;
    let source = AgentId::new(
        Region::new("fuzz").expect("a valid region"),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    );

    decode_stream::<AgentMessage>(stream, chunk_len, |msg| {
        let _ = msg.check_limits();
        if let AgentMessage::ResultBatch { results, .. } = msg {
            if let Ok(domain) = results_into_domain(results, &source) {
                // What the server accepted converts back to a DTO without loss of validity.
                let again: Vec<_> = domain.iter().map(Into::into).collect();
                assert_eq!(
                    results_into_domain(again, &source).expect("a converted result converts again"),
                    domain
                );
            }
        }
    });
    decode_stream::<ServerMessage>(stream, chunk_len, |msg| {
        let _ = msg.check_limits();
        if let ServerMessage::TargetPool { configs, .. } = msg {
            if let Ok(domain) = pool_into_domain(configs) {
                let again: Vec<_> = domain.iter().map(Into::into).collect();
                assert_eq!(
                    pool_into_domain(again).expect("a converted pool converts again"),
                    domain
                );
            }
        }
    });
    decode_stream::<AgentMessageV2>(stream, chunk_len, |msg| {
        let _ = msg.check_limits();
    });
    decode_stream::<ServerMessageV2>(stream, chunk_len, |msg| {
        let _ = msg.check_limits();
    });
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    decoder.push(stream);
    while let Ok(Some(body)) = decoder.next_body() {
        let _ = decode_hello(body);
        for version in ProtocolVersion::ALL {
            let _ = decode_from_agent(version, body, &source);
            let _ = decode_from_server(version, body);
        }
    }
});

/// Pushes `stream` in `chunk_len` pieces, checks the buffer bound, and hands every decoded
/// message (after an encode/decode round trip check) to `handle`.
fn decode_stream<T>(stream: &[u8], chunk_len: usize, mut handle: impl FnMut(T))
where
    T: Clone + DeserializeOwned + PartialEq + Serialize + std::fmt::Debug,
{
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    for chunk in stream.chunks(chunk_len) {
        decoder.push(chunk);
        assert!(decoder.buffered_len() <= LEN_PREFIX_BYTES + MAX_FRAME_LEN + chunk_len);
        loop {
            match decoder.next_frame::<T>() {
                Ok(Some(msg)) => {
                    let frame = encode_frame(&msg, usize::MAX).expect("a decoded message encodes");
                    let decoded: T = decode_frame(&frame[LEN_PREFIX_BYTES..])
                        .expect("a re-encoded message decodes");
                    assert_eq!(decoded, msg);
                    handle(msg);
                }
                Ok(None) => break,
                // Decode errors consume their frame; an oversized prefix repeats forever.
                Err(probermesh_core::wire::WireError::FrameTooLarge { .. }) => return,
                Err(_) => {}
            }
        }
    }
}
