//! Kernel socket filters (classic BPF, `SO_ATTACH_FILTER`) for raw ICMP sockets: a raw socket
//! gets a copy of every ICMP packet the host receives, so without a filter each one costs our
//! thread a read. The filters drop in the kernel what we would throw away after reading.
//!
//! - [`engine`]: the ping engine's shared socket passes only echo replies carrying our
//!   identifier and ICMP errors quoting a request with our identifier (not our own requests
//!   seen on loopback, not other processes' pings);
//! - [`trace`]: a path trace's socket passes echo replies, Destination Unreachable and Time
//!   Exceeded (what `ICMP_FILTER` does; it has no safe wrapper and this crate forbids `unsafe`,
//!   while `SO_ATTACH_FILTER` has one in socket2).
//!
//! Raw IPv4 packets reach the filter with their IP header, whose length varies (options), so
//! the IPv4 programs find the ICMP header with `LDX MSH`; an error's quoted header has a
//! variable length too, added with ALU steps. Raw ICMPv6 packets start at the ICMPv6 header;
//! an error quotes the fixed 40-byte IPv6 header (our requests carry no extension headers).
//! Datagram sockets need no filter: the kernel hands them only their own identifier's traffic.

use socket2::SockFilter;

use super::packet::Family;

/// One classic BPF instruction: opcode, jump-if-true and jump-if-false offsets, constant.
pub(crate) type Instruction = (u16, u8, u8, u32);

const fn op(code: u16, jt: u8, jf: u8, k: u32) -> Instruction {
    (code, jt, jf, k)
}

/// The program as the kernel takes it.
pub(crate) fn compile(program: &[Instruction]) -> Vec<SockFilter> {
    program
        .iter()
        .map(|&(code, jt, jf, k)| SockFilter::new(code, jt, jf, k))
        .collect()
}

// Classic BPF opcodes (linux/filter.h): class | size | mode, or class | op | source.
/// `BPF_LDX|BPF_B|BPF_MSH`: X = 4 × (byte at k & 0x0f), an IPv4 header's length.
const LDX_MSH: u16 = 0xb1;
/// `BPF_LD|BPF_B|BPF_IND`: A = byte at X + k.
const LD_B_IND: u16 = 0x50;
/// `BPF_LD|BPF_H|BPF_IND`: A = big-endian half-word at X + k.
const LD_H_IND: u16 = 0x48;
/// `BPF_LD|BPF_B|BPF_ABS`: A = byte at k.
const LD_B_ABS: u16 = 0x30;
/// `BPF_LD|BPF_H|BPF_ABS`: A = big-endian half-word at k.
const LD_H_ABS: u16 = 0x28;
/// `BPF_ALU|BPF_AND|BPF_K`, `BPF_ALU|BPF_LSH|BPF_K`, `BPF_ALU|BPF_ADD|BPF_X`.
const AND_K: u16 = 0x54;
const LSH_K: u16 = 0x64;
const ADD_X: u16 = 0x0c;
/// `BPF_MISC|BPF_TAX`: X = A.
const TAX: u16 = 0x07;
/// `BPF_JMP|BPF_JEQ|BPF_K`: skip `jt` instructions if A == k, else `jf`.
const JEQ: u16 = 0x15;
/// `BPF_RET|BPF_K`: keep at most k bytes of the packet (0 drops it).
const RET: u16 = 0x06;
const KEEP: u32 = u32::MAX;

/// The ping engine's filter for a raw socket of `family` whose requests carry `identifier`.
pub(crate) fn engine(family: Family, identifier: u16) -> Vec<Instruction> {
    let id = u32::from(identifier);
    match family {
        Family::V4 => vec![
            /* 0 */ op(LDX_MSH, 0, 0, 0),
            /* 1 */ op(LD_B_IND, 0, 0, 0), // ICMP type
            /* 2 */ op(JEQ, 0, 2, 0), // echo reply → 3, else → 5
            /* 3 */ op(LD_H_IND, 0, 0, 4), // its identifier
            /* 4 */ op(JEQ, 11, 10, id), // → 16 keep, → 15 drop
            /* 5 */ op(JEQ, 2, 0, 3), // unreachable → 8
            /* 6 */ op(JEQ, 1, 0, 11), // time exceeded → 8
            /* 7 */ op(JEQ, 0, 7, 12), // parameter problem → 8, else → 15
            /* 8 */ op(LD_B_IND, 0, 0, 8), // the quoted IPv4 header's first byte
            /* 9 */ op(AND_K, 0, 0, 0x0f),
            /* 10 */ op(LSH_K, 0, 0, 2), // its length
            /* 11 */ op(ADD_X, 0, 0, 0),
            /* 12 */ op(TAX, 0, 0, 0), // X = both headers' lengths
            /* 13 */ op(LD_H_IND, 0, 0, 12), // the quoted request's identifier
            /* 14 */ op(JEQ, 1, 0, id),
            /* 15 */ op(RET, 0, 0, 0),
            /* 16 */ op(RET, 0, 0, KEEP),
        ],
        Family::V6 => vec![
            /* 0 */ op(LD_B_ABS, 0, 0, 0), // ICMPv6 type
            /* 1 */ op(JEQ, 0, 2, 129), // echo reply → 2, else → 4
            /* 2 */ op(LD_H_ABS, 0, 0, 4), // its identifier
            /* 3 */ op(JEQ, 7, 6, id), // → 11 keep, → 10 drop
            /* 4 */ op(JEQ, 3, 0, 1), // unreachable → 8
            /* 5 */ op(JEQ, 2, 0, 2), // packet too big → 8
            /* 6 */ op(JEQ, 1, 0, 3), // time exceeded → 8
            /* 7 */ op(JEQ, 0, 2, 4), // parameter problem → 8, else → 10
            /* 8 */ op(LD_H_ABS, 0, 0, 52), // 8 + 40 + 4: the quoted identifier
            /* 9 */ op(JEQ, 1, 0, id),
            /* 10 */ op(RET, 0, 0, 0),
            /* 11 */ op(RET, 0, 0, KEEP),
        ],
    }
}

/// A path trace's filter for a raw socket of `family`: echo replies, Destination Unreachable
/// and Time Exceeded (any identifier: the trace matches its own).
pub(crate) fn trace(family: Family) -> Vec<Instruction> {
    match family {
        Family::V4 => vec![
            op(LDX_MSH, 0, 0, 0),
            op(LD_B_IND, 0, 0, 0),
            op(JEQ, 3, 0, 0),
            op(JEQ, 2, 0, 3),
            op(JEQ, 1, 0, 11),
            op(RET, 0, 0, 0),
            op(RET, 0, 0, KEEP),
        ],
        Family::V6 => vec![
            op(LD_B_ABS, 0, 0, 0),
            op(JEQ, 3, 0, 129),
            op(JEQ, 2, 0, 1),
            op(JEQ, 1, 0, 3),
            op(RET, 0, 0, 0),
            op(RET, 0, 0, KEEP),
        ],
    }
}

#[cfg(test)]
mod tests {
    //! The programs run on a small interpreter of the opcodes above (the kernel's semantics:
    //! a load past the end drops the packet), against packets built by `packet`.
    use super::*;
    use crate::icmp::packet::{PayloadTag, build_echo_request};

    /// Runs `program` on `packet`: `true` when the packet is kept.
    fn keeps(program: &[Instruction], packet: &[u8]) -> bool {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        loop {
            let Some(&(code, jt, jf, k)) = program.get(pc) else {
                panic!("ran off the program at {pc}");
            };
            pc += 1;
            let byte = |at: u32| packet.get(at as usize).map(|b| u32::from(*b));
            let half = |at: u32| {
                let at = at as usize;
                packet
                    .get(at..at + 2)
                    .map(|b| u32::from(u16::from_be_bytes([b[0], b[1]])))
            };
            match code {
                LDX_MSH => match byte(k) {
                    Some(b) => x = (b & 0x0f) * 4,
                    None => return false,
                },
                LD_B_IND => match byte(x + k) {
                    Some(b) => a = b,
                    None => return false,
                },
                LD_H_IND => match half(x + k) {
                    Some(h) => a = h,
                    None => return false,
                },
                LD_B_ABS => match byte(k) {
                    Some(b) => a = b,
                    None => return false,
                },
                LD_H_ABS => match half(k) {
                    Some(h) => a = h,
                    None => return false,
                },
                AND_K => a &= k,
                LSH_K => a <<= k,
                ADD_X => a = a.wrapping_add(x),
                TAX => x = a,
                JEQ => pc += usize::from(if a == k { jt } else { jf }),
                RET => return k != 0,
                other => panic!("opcode {other:#x} not interpreted"),
            }
        }
    }

    const OURS: u16 = 0x4d2c;
    const THEIRS: u16 = 0x1111;

    fn request(family: Family, identifier: u16) -> Vec<u8> {
        let mut out = Vec::new();
        let tag = PayloadTag {
            token: 7,
            probe_id: 8,
            index: 9,
        };
        build_echo_request(&mut out, family, identifier, 3, tag, 56);
        out
    }

    fn reply(family: Family, identifier: u16) -> Vec<u8> {
        let mut packet = request(family, identifier);
        packet[0] = match family {
            Family::V4 => 0,
            Family::V6 => 129,
        };
        packet
    }

    /// An IPv4 header of `words` 32-bit words (5 without options) before `rest`.
    fn ipv4(words: u8, rest: &[u8]) -> Vec<u8> {
        let mut header = vec![0u8; usize::from(words) * 4];
        header[0] = 0x40 | words;
        header[9] = 1;
        header.extend_from_slice(rest);
        header
    }

    /// An ICMP error of `icmp_type` quoting the first bytes of `original` (a whole IP
    /// packet for IPv4, the ICMPv6 message after a 40-byte IPv6 header for IPv6).
    fn error(family: Family, icmp_type: u8, original: &[u8]) -> Vec<u8> {
        let mut message = vec![icmp_type, 0, 0, 0, 0, 0, 0, 0];
        match family {
            Family::V4 => message.extend_from_slice(&original[..original.len().min(48)]),
            Family::V6 => {
                let mut header = vec![0u8; 40];
                header[0] = 0x60;
                header[6] = 58;
                message.extend_from_slice(&header);
                message.extend_from_slice(&original[..original.len().min(48)]);
            }
        }
        message
    }

    #[test]
    fn the_v4_engine_filter_keeps_our_replies_and_errors_only() {
        let program = engine(Family::V4, OURS);
        for words in [5, 6, 15] {
            assert!(keeps(&program, &ipv4(words, &reply(Family::V4, OURS))));
            assert!(!keeps(&program, &ipv4(words, &reply(Family::V4, THEIRS))));
            // Our own request, seen on loopback.
            assert!(!keeps(&program, &ipv4(words, &request(Family::V4, OURS))));
            for icmp_type in [3, 11, 12] {
                for inner_words in [5, 7] {
                    let ours = ipv4(inner_words, &request(Family::V4, OURS));
                    let theirs = ipv4(inner_words, &request(Family::V4, THEIRS));
                    assert!(keeps(
                        &program,
                        &ipv4(words, &error(Family::V4, icmp_type, &ours))
                    ));
                    assert!(!keeps(
                        &program,
                        &ipv4(words, &error(Family::V4, icmp_type, &theirs))
                    ));
                }
            }
            // A redirect quoting our request is not something the engine reads.
            let ours = ipv4(5, &request(Family::V4, OURS));
            assert!(!keeps(&program, &ipv4(words, &error(Family::V4, 5, &ours))));
        }
        // Truncated packets are dropped, never read past their end.
        assert!(!keeps(&program, &ipv4(5, &reply(Family::V4, OURS)[..5])));
        assert!(!keeps(&program, &[0x45]));
        assert!(!keeps(&program, &[]));
    }

    #[test]
    fn the_v6_engine_filter_keeps_our_replies_and_errors_only() {
        let program = engine(Family::V6, OURS);
        assert!(keeps(&program, &reply(Family::V6, OURS)));
        assert!(!keeps(&program, &reply(Family::V6, THEIRS)));
        assert!(!keeps(&program, &request(Family::V6, OURS)));
        for icmp_type in [1, 2, 3, 4] {
            let ours = error(Family::V6, icmp_type, &request(Family::V6, OURS));
            let theirs = error(Family::V6, icmp_type, &request(Family::V6, THEIRS));
            assert!(keeps(&program, &ours));
            assert!(!keeps(&program, &theirs));
            assert!(!keeps(&program, &ours[..50]));
        }
        assert!(!keeps(
            &program,
            &error(Family::V6, 137, &request(Family::V6, OURS))
        ));
        assert!(!keeps(&program, &[129, 0, 0]));
    }

    #[test]
    fn the_trace_filters_keep_replies_and_path_errors_of_any_identifier() {
        let v4 = trace(Family::V4);
        for identifier in [OURS, THEIRS] {
            assert!(keeps(&v4, &ipv4(5, &reply(Family::V4, identifier))));
            assert!(keeps(&v4, &ipv4(6, &reply(Family::V4, identifier))));
            let quoted = ipv4(5, &request(Family::V4, identifier));
            assert!(keeps(&v4, &ipv4(5, &error(Family::V4, 11, &quoted))));
            assert!(keeps(&v4, &ipv4(5, &error(Family::V4, 3, &quoted))));
            assert!(!keeps(&v4, &ipv4(5, &request(Family::V4, identifier))));
        }
        let v6 = trace(Family::V6);
        assert!(keeps(&v6, &reply(Family::V6, THEIRS)));
        assert!(keeps(
            &v6,
            &error(Family::V6, 3, &request(Family::V6, OURS))
        ));
        assert!(keeps(
            &v6,
            &error(Family::V6, 1, &request(Family::V6, OURS))
        ));
        assert!(!keeps(&v6, &request(Family::V6, OURS)));
        assert!(!keeps(
            &v6,
            &error(Family::V6, 2, &request(Family::V6, OURS))
        ));
    }
}
