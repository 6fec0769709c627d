//! ICMP echo packets: building our requests and classifying whatever a socket hands back.
//!
//! Pure byte handling, no sockets, so every rule here is unit- and property-tested:
//! - our payload starts with an engine token, the probe id and the packet index, so a reply is
//!   matched to exactly one packet of one probe and stray or forged replies are ignored;
//! - a raw IPv4 socket delivers the IP header, a datagram one and every IPv6 socket do not;
//! - ICMP errors quote our original request, from which the probe and packet are recovered;
//! - the path tracer's requests ([`build_paris_echo_request`]) all carry one checksum, and
//!   the requests a datagram socket's error queue gives back are read by
//!   [`classify_queued_request`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Bytes of the ICMP header (type, code, checksum, identifier, sequence).
pub(crate) const ICMP_HEADER_LEN: usize = 8;
/// Bytes of our payload's fixed part: token (8), probe id (8), packet index (4).
pub(crate) const PAYLOAD_TAG_LEN: usize = 20;

/// ICMPv4 and ICMPv6 type numbers we send and understand.
mod icmp_type {
    pub(super) const V4_ECHO_REPLY: u8 = 0;
    pub(super) const V4_UNREACHABLE: u8 = 3;
    pub(super) const V4_ECHO_REQUEST: u8 = 8;
    pub(super) const V4_TIME_EXCEEDED: u8 = 11;
    pub(super) const V4_PARAMETER_PROBLEM: u8 = 12;
    pub(super) const V6_UNREACHABLE: u8 = 1;
    pub(super) const V6_PACKET_TOO_BIG: u8 = 2;
    pub(super) const V6_TIME_EXCEEDED: u8 = 3;
    pub(super) const V6_PARAMETER_PROBLEM: u8 = 4;
    pub(super) const V6_ECHO_REQUEST: u8 = 128;
    pub(super) const V6_ECHO_REPLY: u8 = 129;
}

/// Which IP version a socket speaks.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub(crate) enum Family {
    /// ICMPv4.
    V4,
    /// ICMPv6.
    V6,
}

impl Family {
    /// The family of `addr`.
    pub(crate) fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }
}

/// The tag every request carries in its payload.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub(crate) struct PayloadTag {
    /// Random per engine: replies to other processes' pings never match.
    pub(crate) token: u64,
    /// The probe (one `ping` call) the packet belongs to.
    pub(crate) probe_id: u64,
    /// The packet's index within its probe.
    pub(crate) index: u32,
}

impl PayloadTag {
    fn write(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.token.to_be_bytes());
        out[8..16].copy_from_slice(&self.probe_id.to_be_bytes());
        out[16..20].copy_from_slice(&self.index.to_be_bytes());
    }

    fn read(payload: &[u8]) -> Option<Self> {
        let token = u64::from_be_bytes(payload.get(0..8)?.try_into().ok()?);
        let probe_id = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
        let index = u32::from_be_bytes(payload.get(16..20)?.try_into().ok()?);
        Some(Self {
            token,
            probe_id,
            index,
        })
    }
}

/// Writes an echo request into `out` (cleared first): header, tag, then a filler pattern up to
/// `payload_len` bytes. `payload_len` must be at least [`PAYLOAD_TAG_LEN`].
///
/// The ICMPv4 checksum is computed here; for ICMPv6 the kernel computes it (it covers a
/// pseudo-header with the source address, which only the kernel knows).
pub(crate) fn build_echo_request(
    out: &mut Vec<u8>,
    family: Family,
    identifier: u16,
    sequence: u16,
    tag: PayloadTag,
    payload_len: usize,
) {
    let payload_len = payload_len.max(PAYLOAD_TAG_LEN);
    out.clear();
    out.resize(ICMP_HEADER_LEN + payload_len, 0);
    out[0] = match family {
        Family::V4 => icmp_type::V4_ECHO_REQUEST,
        Family::V6 => icmp_type::V6_ECHO_REQUEST,
    };
    out[4..6].copy_from_slice(&identifier.to_be_bytes());
    out[6..8].copy_from_slice(&sequence.to_be_bytes());
    tag.write(&mut out[ICMP_HEADER_LEN..ICMP_HEADER_LEN + PAYLOAD_TAG_LEN]);
    for (i, byte) in out[ICMP_HEADER_LEN + PAYLOAD_TAG_LEN..]
        .iter_mut()
        .enumerate()
    {
        // Truncation intended: a repeating 0..=255 pattern, like ping's.
        *byte = (i % 256) as u8;
    }
    if family == Family::V4 {
        let checksum = internet_checksum(out);
        out[2..4].copy_from_slice(&checksum.to_be_bytes());
    }
}

/// Where the path tracer's compensating word sits: right after the tag.
pub(crate) const PARIS_WORD_OFFSET: usize = ICMP_HEADER_LEN + PAYLOAD_TAG_LEN;

/// Writes an echo request as [`build_echo_request`] does, but with a 16-bit word after the
/// tag chosen so that the ICMP checksum is `checksum` whatever the sequence and tag (Paris
/// traceroute's trick: per-flow load balancers hash the checksum field, so every probe of a
/// trace with one identifier and one checksum takes one path).
///
/// For ICMPv4 the field is written; for ICMPv6 the kernel computes it over a pseudo-header
/// that is the same for every probe of a trace, and over data whose sum this keeps constant,
/// so it is constant too. `checksum` must not be `0xffff` (no one's-complement sum gives it).
pub(crate) fn build_paris_echo_request(
    out: &mut Vec<u8>,
    family: Family,
    identifier: u16,
    sequence: u16,
    tag: PayloadTag,
    payload_len: usize,
    checksum: u16,
) {
    build_echo_request(
        out,
        family,
        identifier,
        sequence,
        tag,
        payload_len.max(PAYLOAD_TAG_LEN + 2),
    );
    out[2..4].copy_from_slice(&[0, 0]);
    out[PARIS_WORD_OFFSET..PARIS_WORD_OFFSET + 2].copy_from_slice(&[0, 0]);
    // internet_checksum = !S for the folded sum S. We need !(S + w) = checksum, so
    // w = !checksum - S = !checksum + !S in one's-complement arithmetic.
    let word = ones_complement_add(!checksum, internet_checksum(out));
    out[PARIS_WORD_OFFSET..PARIS_WORD_OFFSET + 2].copy_from_slice(&word.to_be_bytes());
    if family == Family::V4 {
        out[2..4].copy_from_slice(&checksum.to_be_bytes());
    }
}

fn ones_complement_add(a: u16, b: u16) -> u16 {
    let sum = u32::from(a) + u32::from(b);
    let folded = (sum & 0xffff) + (sum >> 16);
    u16::try_from(folded).unwrap_or(u16::MAX)
}

/// What a datagram socket's error queue gives back with an ICMP error: our original request
/// as the router quoted it (ICMP header first). Returns its identifier, sequence and tag (if
/// quoted), or `None` when it is not an echo request of `family`.
pub(crate) fn classify_queued_request(
    family: Family,
    quoted: &[u8],
) -> Option<(u16, u16, Option<PayloadTag>)> {
    let request_type = match family {
        Family::V4 => icmp_type::V4_ECHO_REQUEST,
        Family::V6 => icmp_type::V6_ECHO_REQUEST,
    };
    let icmp = quoted.get(..ICMP_HEADER_LEN)?;
    if icmp[0] != request_type {
        return None;
    }
    Some((
        u16::from_be_bytes([icmp[4], icmp[5]]),
        u16::from_be_bytes([icmp[6], icmp[7]]),
        PayloadTag::read(quoted.get(ICMP_HEADER_LEN..)?),
    ))
}

/// The RFC 1071 one's-complement checksum of `bytes`.
pub(crate) fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(u16::from_be_bytes([*last, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // After folding, `sum` fits in 16 bits.
    !(u16::try_from(sum).unwrap_or(u16::MAX))
}

/// What a received datagram is, as far as the engine cares.
#[derive(Clone, Debug, Eq, PartialEq)]
pub(crate) enum Incoming {
    /// An echo reply carrying our tag.
    Reply {
        /// The identifier field (rewritten by the kernel on datagram sockets).
        identifier: u16,
        /// The sequence field.
        sequence: u16,
        /// The tag from the payload.
        tag: PayloadTag,
    },
    /// An ICMP error quoting one of our echo requests.
    Error {
        /// The ICMP type of the error.
        icmp_type: u8,
        /// Its code.
        code: u8,
        /// Where the quoted request was going.
        original_destination: IpAddr,
        /// The quoted request's identifier.
        identifier: u16,
        /// The quoted request's sequence.
        sequence: u16,
        /// The quoted tag, when the router quoted enough of the payload (RFC 792 only
        /// promises 8 bytes past the IP header; Linux and RFC 1812 routers quote more).
        tag: Option<PayloadTag>,
    },
    /// Anything else: our own requests seen on loopback, other processes' traffic, other
    /// ICMP types, truncated or corrupt packets.
    Ignored,
}

/// Classifies a datagram. `has_ip_header` is true for raw IPv4 sockets.
pub(crate) fn classify(family: Family, has_ip_header: bool, datagram: &[u8]) -> Incoming {
    let icmp = if has_ip_header {
        match skip_ipv4_header(datagram) {
            Some(icmp) => icmp,
            None => return Incoming::Ignored,
        }
    } else {
        datagram
    };
    if icmp.len() < ICMP_HEADER_LEN {
        return Incoming::Ignored;
    }
    // Raw IPv4 sockets see packets before the kernel checks them; ICMPv6 checksums are
    // verified by the kernel before delivery, and datagram sockets only get valid packets.
    if family == Family::V4 && has_ip_header && internet_checksum(icmp) != 0 {
        return Incoming::Ignored;
    }
    let (kind, code) = (icmp[0], icmp[1]);
    let reply_type = match family {
        Family::V4 => icmp_type::V4_ECHO_REPLY,
        Family::V6 => icmp_type::V6_ECHO_REPLY,
    };
    if kind == reply_type && code == 0 {
        return match PayloadTag::read(&icmp[ICMP_HEADER_LEN..]) {
            Some(tag) => Incoming::Reply {
                identifier: u16::from_be_bytes([icmp[4], icmp[5]]),
                sequence: u16::from_be_bytes([icmp[6], icmp[7]]),
                tag,
            },
            None => Incoming::Ignored,
        };
    }
    if is_error_type(family, kind) {
        return classify_error(family, kind, code, &icmp[ICMP_HEADER_LEN..]);
    }
    Incoming::Ignored
}

fn is_error_type(family: Family, kind: u8) -> bool {
    match family {
        Family::V4 => matches!(
            kind,
            icmp_type::V4_UNREACHABLE
                | icmp_type::V4_TIME_EXCEEDED
                | icmp_type::V4_PARAMETER_PROBLEM
        ),
        Family::V6 => matches!(
            kind,
            icmp_type::V6_UNREACHABLE
                | icmp_type::V6_PACKET_TOO_BIG
                | icmp_type::V6_TIME_EXCEEDED
                | icmp_type::V6_PARAMETER_PROBLEM
        ),
    }
}

/// Parses the quoted original packet of an ICMP error.
fn classify_error(family: Family, icmp_type: u8, code: u8, quoted: &[u8]) -> Incoming {
    let (original_destination, inner) = match family {
        Family::V4 => {
            let Some(inner) = skip_ipv4_header(quoted) else {
                return Incoming::Ignored;
            };
            // The protocol field must say ICMP.
            if quoted[9] != 1 {
                return Incoming::Ignored;
            }
            let dst = Ipv4Addr::new(quoted[16], quoted[17], quoted[18], quoted[19]);
            (IpAddr::V4(dst), inner)
        }
        Family::V6 => {
            const IPV6_HEADER_LEN: usize = 40;
            let Some(header) = quoted.get(..IPV6_HEADER_LEN) else {
                return Incoming::Ignored;
            };
            // Next header must be ICMPv6 (we send no extension headers).
            if header[6] != 58 {
                return Incoming::Ignored;
            }
            let mut dst = [0u8; 16];
            dst.copy_from_slice(&header[24..40]);
            (IpAddr::V6(Ipv6Addr::from(dst)), &quoted[IPV6_HEADER_LEN..])
        }
    };
    let request_type = match family {
        Family::V4 => icmp_type::V4_ECHO_REQUEST,
        Family::V6 => icmp_type::V6_ECHO_REQUEST,
    };
    if inner.len() < ICMP_HEADER_LEN || inner[0] != request_type {
        return Incoming::Ignored;
    }
    Incoming::Error {
        icmp_type,
        code,
        original_destination,
        identifier: u16::from_be_bytes([inner[4], inner[5]]),
        sequence: u16::from_be_bytes([inner[6], inner[7]]),
        tag: PayloadTag::read(&inner[ICMP_HEADER_LEN..]),
    }
}

/// The bytes after a well-formed IPv4 header, or `None`.
fn skip_ipv4_header(packet: &[u8]) -> Option<&[u8]> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(first & 0x0f) * 4;
    if header_len < 20 {
        return None;
    }
    packet.get(header_len..)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TAG: PayloadTag = PayloadTag {
        token: 0x0123_4567_89ab_cdef,
        probe_id: 42,
        index: 7,
    };

    fn ipv4_header(protocol: u8, src: [u8; 4], dst: [u8; 4], payload_len: usize) -> Vec<u8> {
        let total = u16::try_from(20 + payload_len).unwrap();
        let mut h = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, protocol, 0, 0];
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h
    }

    /// Turns one of our requests into the reply a host would send.
    fn reply_of(request: &[u8], family: Family) -> Vec<u8> {
        let mut reply = request.to_vec();
        reply[0] = match family {
            Family::V4 => 0,
            Family::V6 => 129,
        };
        reply[2..4].copy_from_slice(&[0, 0]);
        let checksum = internet_checksum(&reply);
        reply[2..4].copy_from_slice(&checksum.to_be_bytes());
        reply
    }

    #[test]
    fn a_request_has_a_valid_checksum_and_the_requested_size() {
        let mut packet = Vec::new();
        build_echo_request(&mut packet, Family::V4, 0xbeef, 513, TAG, 56);
        assert_eq!(packet.len(), 64);
        assert_eq!(packet[0], 8);
        assert_eq!(internet_checksum(&packet), 0);
        assert_eq!(&packet[4..8], &[0xbe, 0xef, 0x02, 0x01]);
        // Too small a payload is raised to the tag length.
        build_echo_request(&mut packet, Family::V6, 1, 1, TAG, 4);
        assert_eq!(packet.len(), ICMP_HEADER_LEN + PAYLOAD_TAG_LEN);
        assert_eq!(packet[0], 128);
    }

    #[test]
    fn raw_v4_reply_is_matched_and_own_request_is_ignored() {
        let mut request = Vec::new();
        build_echo_request(&mut request, Family::V4, 9, 10, TAG, 56);
        let mut on_loopback = ipv4_header(1, [127, 0, 0, 1], [127, 0, 0, 1], request.len());
        on_loopback.extend_from_slice(&request);
        assert_eq!(classify(Family::V4, true, &on_loopback), Incoming::Ignored);

        let mut reply = ipv4_header(1, [127, 0, 0, 1], [127, 0, 0, 1], request.len());
        reply.extend_from_slice(&reply_of(&request, Family::V4));
        assert_eq!(
            classify(Family::V4, true, &reply),
            Incoming::Reply {
                identifier: 9,
                sequence: 10,
                tag: TAG
            }
        );
    }

    #[test]
    fn a_corrupt_raw_v4_reply_is_ignored() {
        let mut request = Vec::new();
        build_echo_request(&mut request, Family::V4, 9, 10, TAG, 56);
        let mut reply = ipv4_header(1, [127, 0, 0, 1], [127, 0, 0, 1], request.len());
        reply.extend_from_slice(&reply_of(&request, Family::V4));
        let last = reply.len() - 1;
        reply[last] ^= 0xff;
        assert_eq!(classify(Family::V4, true, &reply), Incoming::Ignored);
    }

    #[test]
    fn datagram_and_v6_replies_have_no_ip_header() {
        let mut request = Vec::new();
        build_echo_request(&mut request, Family::V6, 3, 4, TAG, 30);
        let reply = reply_of(&request, Family::V6);
        assert!(matches!(
            classify(Family::V6, false, &reply),
            Incoming::Reply { sequence: 4, tag, .. } if tag == TAG
        ));
        assert_eq!(classify(Family::V6, false, &request), Incoming::Ignored);
    }

    #[test]
    fn an_unreachable_error_quotes_the_request_v4() {
        let mut request = Vec::new();
        build_echo_request(&mut request, Family::V4, 9, 10, TAG, 56);
        let mut quoted = ipv4_header(1, [198, 18, 0, 1], [198, 18, 0, 9], request.len());
        quoted.extend_from_slice(&request);
        let mut error = vec![3, 1, 0, 0, 0, 0, 0, 0];
        error.extend_from_slice(&quoted);
        let checksum = internet_checksum(&error);
        error[2..4].copy_from_slice(&checksum.to_be_bytes());
        let mut datagram = ipv4_header(1, [198, 18, 0, 9], [198, 18, 0, 1], error.len());
        datagram.extend_from_slice(&error);
        assert_eq!(
            classify(Family::V4, true, &datagram),
            Incoming::Error {
                icmp_type: 3,
                code: 1,
                original_destination: "198.18.0.9".parse().unwrap(),
                identifier: 9,
                sequence: 10,
                tag: Some(TAG),
            }
        );
        // An RFC 792 router quoting only 8 bytes: no tag, still classified.
        let short = &quoted[..20 + ICMP_HEADER_LEN];
        let mut error = vec![11, 0, 0, 0, 0, 0, 0, 0];
        error.extend_from_slice(short);
        let checksum = internet_checksum(&error);
        error[2..4].copy_from_slice(&checksum.to_be_bytes());
        let mut datagram = ipv4_header(1, [198, 18, 0, 5], [198, 18, 0, 1], error.len());
        datagram.extend_from_slice(&error);
        assert!(matches!(
            classify(Family::V4, true, &datagram),
            Incoming::Error {
                icmp_type: 11,
                tag: None,
                sequence: 10,
                ..
            }
        ));
    }

    #[test]
    fn an_error_about_someone_elses_udp_is_ignored() {
        let mut quoted = ipv4_header(17, [198, 18, 0, 1], [198, 18, 0, 9], 8);
        quoted.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0]);
        let mut error = vec![3, 3, 0, 0, 0, 0, 0, 0];
        error.extend_from_slice(&quoted);
        let checksum = internet_checksum(&error);
        error[2..4].copy_from_slice(&checksum.to_be_bytes());
        assert_eq!(classify(Family::V4, false, &error), Incoming::Ignored);
    }

    #[test]
    fn an_icmpv6_time_exceeded_quotes_the_request() {
        let mut request = Vec::new();
        build_echo_request(&mut request, Family::V6, 1, 2, TAG, 40);
        let mut quoted = vec![0x60, 0, 0, 0, 0, 0, 58, 64];
        quoted.extend_from_slice(&[0; 16]);
        let dst: Ipv6Addr = "2001:db8::9".parse().unwrap();
        quoted.extend_from_slice(&dst.octets());
        quoted.extend_from_slice(&request);
        let mut error = vec![3, 0, 0, 0, 0, 0, 0, 0];
        error.extend_from_slice(&quoted);
        assert!(matches!(
            classify(Family::V6, false, &error),
            Incoming::Error { icmp_type: 3, original_destination, tag: Some(tag), .. }
                if original_destination == IpAddr::V6(dst) && tag == TAG
        ));
    }

    #[test]
    fn a_queued_request_is_read_back() {
        let mut request = Vec::new();
        build_echo_request(&mut request, Family::V4, 9, 0x0305, TAG, 56);
        assert_eq!(
            classify_queued_request(Family::V4, &request),
            Some((9, 0x0305, Some(TAG)))
        );
        assert_eq!(
            classify_queued_request(Family::V4, &request[..ICMP_HEADER_LEN]),
            Some((9, 0x0305, None))
        );
        assert_eq!(classify_queued_request(Family::V6, &request), None);
        assert_eq!(classify_queued_request(Family::V4, &request[..4]), None);
    }

    proptest! {
        #[test]
        fn any_bytes_classify_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            v6 in any::<bool>(),
            header in any::<bool>(),
        ) {
            let family = if v6 { Family::V6 } else { Family::V4 };
            let _ = classify(family, header, &bytes);
        }

        #[test]
        fn a_paris_request_has_the_chosen_checksum(
            identifier in any::<u16>(),
            sequence in any::<u16>(),
            index in any::<u32>(),
            checksum in 0u16..0xffff,
            payload_len in 0usize..200,
        ) {
            let tag = PayloadTag { token: 5, probe_id: 6, index };
            let mut request = Vec::new();
            build_paris_echo_request(
                &mut request, Family::V4, identifier, sequence, tag, payload_len, checksum,
            );
            prop_assert_eq!(internet_checksum(&request), 0);
            prop_assert_eq!(u16::from_be_bytes([request[2], request[3]]), checksum);
            let reply = reply_of(&request, Family::V4);
            prop_assert_eq!(
                classify(Family::V4, false, &reply),
                Incoming::Reply { identifier, sequence, tag }
            );
        }

        #[test]
        fn every_request_round_trips_through_its_reply(
            identifier in any::<u16>(),
            sequence in any::<u16>(),
            token in any::<u64>(),
            probe_id in any::<u64>(),
            index in any::<u32>(),
            payload_len in 0usize..1500,
            v6 in any::<bool>(),
        ) {
            let family = if v6 { Family::V6 } else { Family::V4 };
            let tag = PayloadTag { token, probe_id, index };
            let mut request = Vec::new();
            build_echo_request(&mut request, family, identifier, sequence, tag, payload_len);
            if family == Family::V4 {
                prop_assert_eq!(internet_checksum(&request), 0);
            }
            let reply = reply_of(&request, family);
            prop_assert_eq!(
                classify(family, false, &reply),
                Incoming::Reply { identifier, sequence, tag }
            );
        }
    }
}
