//! Opening the one ICMP socket of an address family, and receiving with kernel timestamps.
//!
//! Raw sockets need CAP_NET_RAW; unprivileged datagram ("ping") sockets need the process's
//! group inside `net.ipv4.ping_group_range` (which also governs ICMPv6). We try raw first,
//! then datagram, and when both are refused we say how to fix it.
//!
//! The path tracer (`trace`) opens its own non-blocking socket per trace with
//! [`IcmpSocket::open_for_trace`]: raw sockets get a kernel filter passing only echo replies
//! and ICMP errors, datagram sockets get `IP_RECVERR` so routers' errors reach the error
//! queue ([`IcmpSocket::receive_error`]).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, SystemTime};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg,
    recvmsg, sendmmsg, setsockopt, sockopt,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::filter;
use super::packet::Family;

/// Which kind of ICMP socket to use.
#[derive(Clone, Copy, Debug, Default, Eq, Hash, PartialEq)]
pub enum SocketMode {
    /// Raw when permitted, else datagram (the default).
    #[default]
    Auto,
    /// Raw only (CAP_NET_RAW).
    Raw,
    /// Unprivileged datagram only (`ping_group_range`).
    Datagram,
}

/// What the engine ended up with.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum SocketKind {
    /// A raw socket: we choose the identifier; IPv4 packets arrive with their IP header.
    Raw,
    /// A datagram socket: the kernel sets the identifier and filters replies for us.
    Datagram,
}

/// Why no ICMP socket could be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Neither kind is permitted to this process.
    #[error(
        "cannot open an ICMP{v} socket: raw sockets need CAP_NET_RAW (run as root, or \
         `setcap cap_net_raw+ep <binary>`, or systemd `AmbientCapabilities=CAP_NET_RAW`) and \
         datagram ICMP sockets need the process's group in `net.ipv4.ping_group_range` \
         (for example `sysctl -w net.ipv4.ping_group_range=\"0 2147483647\"`); raw: {raw}; \
         datagram: {datagram}",
        v = if *.family_is_v6 { "v6" } else { "v4" }
    )]
    NotPermitted {
        /// Whether this was the IPv6 socket.
        family_is_v6: bool,
        /// The raw socket's error.
        raw: String,
        /// The datagram socket's error.
        datagram: String,
    },
    /// Any other failure (no IPv6 support, out of descriptors, ...); the cause is in the
    /// message, not a `source`, so a chain says it once.
    #[error("cannot open an ICMP socket: {0}")]
    Other(io::Error),
}

impl From<io::Error> for OpenError {
    fn from(error: io::Error) -> Self {
        Self::Other(error)
    }
}

/// One open ICMP socket.
#[derive(Debug)]
pub(crate) struct IcmpSocket {
    socket: Socket,
    family: Family,
    kind: SocketKind,
}

/// One received datagram.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Received {
    /// Bytes written into the buffer.
    pub(crate) len: usize,
    /// The sender.
    pub(crate) from: IpAddr,
    /// When the kernel received it (`SO_TIMESTAMPNS`), if it said.
    pub(crate) kernel_time: Option<SystemTime>,
}

/// The receive buffer we ask for: it holds the replies that arrive while the engine's
/// thread sleeps out a batch window (`SO_RCVBUFFORCE` when permitted, else capped by
/// `net.core.rmem_max`).
const RECEIVE_BUFFER_BYTES: usize = 4 * 1024 * 1024;

impl IcmpSocket {
    /// Opens the socket of `family` in `mode`, non-blocking, with receive timestamps and a
    /// large receive buffer.
    pub(crate) fn open(family: Family, mode: SocketMode, ttl: u8) -> Result<Self, OpenError> {
        let (domain, protocol) = match family {
            Family::V4 => (Domain::IPV4, Protocol::ICMPV4),
            Family::V6 => (Domain::IPV6, Protocol::ICMPV6),
        };
        let raw = match mode {
            SocketMode::Datagram => None,
            _ => Some(Socket::new(domain, Type::RAW, Some(protocol))),
        };
        let (socket, kind) = match raw {
            Some(Ok(socket)) => (socket, SocketKind::Raw),
            Some(Err(raw_error)) if mode == SocketMode::Raw => {
                return Err(classify_open_error(family, raw_error, None));
            }
            other => match Socket::new(domain, Type::DGRAM, Some(protocol)) {
                Ok(socket) => (socket, SocketKind::Datagram),
                Err(datagram_error) => {
                    let raw_error = other.and_then(Result::err);
                    return Err(classify_open_error(family, datagram_error, raw_error));
                }
            },
        };
        match family {
            Family::V4 => socket.set_ttl_v4(u32::from(ttl))?,
            Family::V6 => socket.set_unicast_hops_v6(u32::from(ttl))?,
        }
        setsockopt(&socket, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)?;
        // Best effort. A large buffer absorbs the reply bursts of thousands of targets and
        // what arrives while the engine sleeps out a batch window; without CAP_NET_ADMIN the
        // kernel caps it at net.core.rmem_max.
        if setsockopt(&socket, sockopt::RcvBufForce, &RECEIVE_BUFFER_BYTES).is_err() {
            let _ = socket.set_recv_buffer_size(RECEIVE_BUFFER_BYTES);
        }
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket,
            family,
            kind,
        })
    }

    /// The kind of socket this is.
    pub(crate) fn kind(&self) -> SocketKind {
        self.kind
    }

    /// Whether received datagrams start with an IP header (raw IPv4 only).
    pub(crate) fn has_ip_header(&self) -> bool {
        self.kind == SocketKind::Raw && self.family == Family::V4
    }

    /// Sends one ICMP message to `addr`.
    pub(crate) fn send_to(&self, packet: &[u8], addr: IpAddr) -> io::Result<usize> {
        self.socket
            .send_to(packet, &SockAddr::from(SocketAddr::new(addr, 0)))
    }

    /// Changes the TTL (hop limit) of later sends.
    pub(crate) fn set_ttl(&self, ttl: u8) -> io::Result<()> {
        match self.family {
            Family::V4 => self.socket.set_ttl_v4(u32::from(ttl)),
            Family::V6 => self.socket.set_unicast_hops_v6(u32::from(ttl)),
        }
    }

    /// Receives one datagram into `buf` (`ErrorKind::WouldBlock` when none is queued).
    #[expect(
        clippy::ptr_arg,
        reason = "nix's recvmsg takes the control buffer as a Vec"
    )]
    pub(crate) fn receive(&self, buf: &mut [u8], control: &mut Vec<u8>) -> io::Result<Received> {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<SockaddrStorage>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(control),
            MsgFlags::empty(),
        )
        .map_err(io::Error::from)?;
        let from = msg
            .address
            .as_ref()
            .and_then(sockaddr_ip)
            .ok_or_else(|| io::Error::other("an ICMP datagram without a source address"))?;
        let mut kernel_time = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for cmsg in cmsgs {
                if let ControlMessageOwned::ScmTimestampns(ts) = cmsg {
                    kernel_time = timestamp(ts.tv_sec(), ts.tv_nsec());
                }
            }
        }
        Ok(Received {
            len: msg.bytes,
            from,
            kernel_time,
        })
    }
}

impl IcmpSocket {
    /// Opens the ping engine's shared socket: as [`Self::open`], and on a raw socket a filter
    /// passing only echo replies and errors about requests with `identifier`
    /// ([`filter::engine`]).
    pub(crate) fn open_for_engine(
        family: Family,
        mode: SocketMode,
        ttl: u8,
        identifier: u16,
    ) -> Result<Self, OpenError> {
        let socket = Self::open(family, mode, ttl)?;
        if socket.kind == SocketKind::Raw {
            socket
                .socket
                .attach_filter(&filter::compile(&filter::engine(family, identifier)))?;
        }
        Ok(socket)
    }

    /// Sends `packets[i]` to `targets[i]` in one `sendmmsg`, from the first. Returns how many
    /// the kernel took (it stops at the first that fails; the error comes when that one is
    /// sent first).
    pub(crate) fn send_batch(
        &self,
        headers: &mut MultiHeaders<SockaddrStorage>,
        packets: &[&[u8]],
        targets: &[Option<SockaddrStorage>],
    ) -> io::Result<usize> {
        let slices: Vec<[IoSlice<'_>; 1]> = packets
            .iter()
            .map(|packet| [IoSlice::new(packet)])
            .collect();
        let sent = sendmmsg(
            self.socket.as_raw_fd(),
            headers,
            &slices,
            targets,
            [] as [ControlMessage<'_>; 0],
            MsgFlags::empty(),
        )
        .map_err(io::Error::from)?;
        Ok(sent.count())
    }

    /// Reads the datagrams queued on the socket into `batch` with one `recvmmsg` (at most
    /// [`ReceiveBatch::capacity`]). Returns how many; 0 when none was queued.
    pub(crate) fn receive_batch(&self, batch: &mut ReceiveBatch) -> io::Result<usize> {
        let ReceiveBatch {
            headers,
            buffer,
            slot_len,
            received,
        } = batch;
        received.clear();
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = buffer
            .chunks_exact_mut(*slot_len)
            .map(|slot| [IoSliceMut::new(slot)])
            .collect();
        let messages = match recvmmsg(
            self.socket.as_raw_fd(),
            headers,
            &mut slices,
            MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Ok(messages) => messages,
            Err(nix::errno::Errno::EAGAIN) => return Ok(0),
            Err(e) => return Err(io::Error::from(e)),
        };
        for message in messages {
            let from = message.address.as_ref().and_then(sockaddr_ip);
            let mut kernel_time = None;
            if let Ok(cmsgs) = message.cmsgs() {
                for cmsg in cmsgs {
                    if let ControlMessageOwned::ScmTimestampns(ts) = cmsg {
                        kernel_time = timestamp(ts.tv_sec(), ts.tv_nsec());
                    }
                }
            }
            received.push(BatchEntry {
                len: message.bytes.min(*slot_len),
                from,
                kernel_time,
                truncated: message.flags.contains(MsgFlags::MSG_TRUNC),
            });
        }
        Ok(received.len())
    }
}

/// What one `recvmmsg` brought: up to [`Self::capacity`] datagrams, each in its own slot of
/// one buffer. The slot size grows (never shrinks) to the largest datagram the engine
/// expects, so an echo reply is never cut short.
#[derive(Debug)]
pub(crate) struct ReceiveBatch {
    headers: MultiHeaders<SockaddrStorage>,
    buffer: Vec<u8>,
    slot_len: usize,
    received: Vec<BatchEntry>,
}

/// One datagram of a [`ReceiveBatch`].
#[derive(Clone, Copy, Debug)]
struct BatchEntry {
    len: usize,
    from: Option<IpAddr>,
    kernel_time: Option<SystemTime>,
    truncated: bool,
}

/// Bytes of the receive buffers of one batch at most (the slot count shrinks as slots grow).
const RECEIVE_BATCH_BYTES: usize = 256 * 1024;
/// Datagrams per `recvmmsg` at most.
const RECEIVE_BATCH_SLOTS: usize = 64;
/// The smallest slot: a reply with the default payload, or an ICMP error quoting a request
/// with both IP headers at their longest, fits many times over.
const MIN_SLOT_BYTES: usize = 2048;

impl ReceiveBatch {
    /// A batch whose slots hold datagrams of `datagram_len` bytes.
    pub(crate) fn new(datagram_len: usize) -> Self {
        let slot_len = datagram_len.max(MIN_SLOT_BYTES);
        let slots = (RECEIVE_BATCH_BYTES / slot_len).clamp(1, RECEIVE_BATCH_SLOTS);
        Self {
            headers: MultiHeaders::preallocate(slots, Some(control_buffer())),
            buffer: vec![0; slots * slot_len],
            slot_len,
            received: Vec::with_capacity(slots),
        }
    }

    /// Makes sure a datagram of `datagram_len` bytes fits a slot.
    pub(crate) fn fit(&mut self, datagram_len: usize) {
        if datagram_len > self.slot_len {
            *self = Self::new(datagram_len);
        }
    }

    /// Datagrams one receive takes at most.
    pub(crate) fn capacity(&self) -> usize {
        self.buffer.len() / self.slot_len
    }

    /// The datagrams of the last receive, with their sender and kernel receive time; a
    /// datagram without a source address, or cut short, is left out.
    pub(crate) fn datagrams(&self) -> impl Iterator<Item = (Received, &[u8])> {
        self.received
            .iter()
            .zip(self.buffer.chunks_exact(self.slot_len))
            .filter(|(entry, _)| !entry.truncated)
            .filter_map(|(entry, slot)| {
                let from = entry.from?;
                let received = Received {
                    len: entry.len,
                    from,
                    kernel_time: entry.kernel_time,
                };
                Some((received, &slot[..entry.len]))
            })
    }
}

impl AsFd for IcmpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl AsRawFd for IcmpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// One message of a datagram socket's error queue: an ICMP error a router (or the target)
/// sent about one of our requests.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueuedError {
    /// Bytes of the original request written into the buffer.
    pub(crate) len: usize,
    /// Who sent the error (`SO_EE_OFFENDER`), when the kernel said.
    pub(crate) offender: Option<IpAddr>,
    /// The ICMP type of the error.
    pub(crate) icmp_type: u8,
    /// When the kernel received it (`SO_TIMESTAMPNS`), if it said.
    pub(crate) kernel_time: Option<SystemTime>,
}

/// `SO_EE_ORIGIN_ICMP` and `SO_EE_ORIGIN_ICMP6` (linux/errqueue.h): the error came in an
/// ICMP message, not from the local stack.
const ORIGIN_ICMP: u8 = 2;
const ORIGIN_ICMP6: u8 = 3;

impl IcmpSocket {
    /// Opens a socket for one path trace: as [`Self::open`], non-blocking (for tokio's
    /// `AsyncFd`), and
    /// - raw: a socket filter passing only echo replies, Time Exceeded and Destination
    ///   Unreachable ([`filter::trace`]);
    /// - datagram: `IP_RECVERR` / `IPV6_RECVERR`, so ICMP errors about our requests are
    ///   queued on the error queue with the router's address.
    pub(crate) fn open_for_trace(family: Family, mode: SocketMode) -> Result<Self, OpenError> {
        let socket = Self::open(family, mode, 1)?;
        match (socket.kind, family) {
            (SocketKind::Raw, _) => socket
                .socket
                .attach_filter(&filter::compile(&filter::trace(family)))?,
            (SocketKind::Datagram, Family::V4) => {
                setsockopt(&socket.socket, sockopt::Ipv4RecvErr, &true).map_err(io::Error::from)?;
            }
            (SocketKind::Datagram, Family::V6) => {
                setsockopt(&socket.socket, sockopt::Ipv6RecvErr, &true).map_err(io::Error::from)?;
            }
        }
        Ok(socket)
    }

    /// Takes one message off the error queue (`MSG_ERRQUEUE`): the original request (as far
    /// as the router quoted it) into `buf`, the error's origin in the result.
    /// `ErrorKind::WouldBlock` when the queue is empty; `Ok(None)` for a queued error that
    /// did not come in an ICMP message (a local error).
    #[expect(
        clippy::ptr_arg,
        reason = "nix's recvmsg takes the control buffer as a Vec"
    )]
    pub(crate) fn receive_error(
        &self,
        buf: &mut [u8],
        control: &mut Vec<u8>,
    ) -> io::Result<Option<QueuedError>> {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<SockaddrStorage>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(control),
            MsgFlags::MSG_ERRQUEUE,
        )
        .map_err(io::Error::from)?;
        let mut kernel_time = None;
        let mut error = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for cmsg in cmsgs {
                match cmsg {
                    ControlMessageOwned::ScmTimestampns(ts) => {
                        kernel_time = timestamp(ts.tv_sec(), ts.tv_nsec());
                    }
                    ControlMessageOwned::Ipv4RecvErr(ee, offender) => {
                        let offender = offender.map(|a| {
                            IpAddr::V4(std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)))
                        });
                        error = Some((ee.ee_origin, ee.ee_type, offender));
                    }
                    ControlMessageOwned::Ipv6RecvErr(ee, offender) => {
                        let offender = offender
                            .map(|a| IpAddr::V6(std::net::Ipv6Addr::from(a.sin6_addr.s6_addr)));
                        error = Some((ee.ee_origin, ee.ee_type, offender));
                    }
                    _ => {}
                }
            }
        }
        Ok(error.and_then(|(origin, icmp_type, offender)| {
            (origin == ORIGIN_ICMP || origin == ORIGIN_ICMP6).then_some(QueuedError {
                len: msg.bytes,
                offender,
                icmp_type,
                kernel_time,
            })
        }))
    }
}

fn timestamp(secs: i64, nanos: i64) -> Option<SystemTime> {
    let secs = u64::try_from(secs).ok()?;
    let nanos = u32::try_from(nanos).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// The bytes of control-message space an error-queue receive needs: the extended error with
/// its offender's address, and the timestamp.
pub(crate) fn error_control_buffer() -> Vec<u8> {
    nix::cmsg_space!(
        nix::libc::sock_extended_err,
        nix::libc::sockaddr_in6,
        nix::sys::time::TimeSpec,
        nix::sys::time::TimeSpec
    )
}

fn sockaddr_ip(addr: &SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(IpAddr::V4(v4.ip()));
    }
    addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
}

fn classify_open_error(family: Family, last: io::Error, raw: Option<io::Error>) -> OpenError {
    let denied = |e: &io::Error| e.kind() == io::ErrorKind::PermissionDenied;
    let raw_denied = raw.as_ref().is_none_or(denied);
    if denied(&last) && raw_denied {
        return OpenError::NotPermitted {
            family_is_v6: family == Family::V6,
            raw: raw.map_or_else(|| "not tried".to_owned(), |e| e.to_string()),
            datagram: last.to_string(),
        };
    }
    OpenError::Other(last)
}

/// The bytes of control-message space a receive needs (one `timespec`, with headroom).
pub(crate) fn control_buffer() -> Vec<u8> {
    nix::cmsg_space!(nix::sys::time::TimeSpec, nix::sys::time::TimeSpec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_permission_error_says_how_to_fix_it() {
        let error = classify_open_error(
            Family::V4,
            io::Error::from(io::ErrorKind::PermissionDenied),
            Some(io::Error::from_raw_os_error(1)),
        );
        let text = error.to_string();
        assert!(text.contains("CAP_NET_RAW"), "{text}");
        assert!(text.contains("ping_group_range"), "{text}");
        assert!(matches!(error, OpenError::NotPermitted { .. }));
    }

    #[test]
    fn other_errors_are_not_reported_as_permission() {
        let error = classify_open_error(
            Family::V6,
            io::Error::from_raw_os_error(97), // EAFNOSUPPORT
            None,
        );
        assert!(matches!(error, OpenError::Other(_)));
    }
}
