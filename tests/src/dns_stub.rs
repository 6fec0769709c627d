//! A name server on loopback for tests: answers A queries for the names it was given after a
//! known delay, NXDOMAIN for every other name, and an empty answer (NODATA) for other types.
//! The sandbox's own resolver is unreachable, and `localhost` never touches the network, so
//! DNS timing is tested against this.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

/// A running stub; stops when dropped.
#[derive(Debug)]
pub struct DnsStub {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    queries: Arc<AtomicU32>,
}

impl DnsStub {
    /// Starts a stub on 127.0.0.1 (a free port) answering `names` (lower-case, no trailing
    /// dot) after `delay`.
    ///
    /// # Errors
    /// When the socket cannot be bound.
    pub fn start(names: &[(&str, Ipv4Addr)], delay: Duration) -> std::io::Result<Self> {
        Self::start_on(names, delay, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The same, listening on `bind` (the lab binds port 53 of its namespace's address).
    ///
    /// # Errors
    /// When the socket cannot be bound.
    pub fn start_on(
        names: &[(&str, Ipv4Addr)],
        delay: Duration,
        bind: SocketAddr,
    ) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(bind)?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = socket.local_addr()?;
        let names: Arc<HashMap<String, Ipv4Addr>> = Arc::new(
            names
                .iter()
                .map(|(name, ip)| ((*name).to_owned(), *ip))
                .collect(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU32::new(0));
        let (stop_flag, counter) = (Arc::clone(&stop), Arc::clone(&queries));
        let socket = Arc::new(socket);
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop_flag.load(Ordering::Relaxed) {
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let Some(answer) = answer(&buf[..len], &names) else {
                    continue;
                };
                let socket = Arc::clone(&socket);
                thread::spawn(move || {
                    thread::sleep(delay);
                    let _ = socket.send_to(&answer, from);
                });
            }
        });
        Ok(Self {
            addr,
            stop,
            queries,
        })
    }

    /// Where the stub listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries received so far.
    #[must_use]
    pub fn queries(&self) -> u32 {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for DnsStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The response to one query, or `None` for something that is not a query.
fn answer(query: &[u8], names: &HashMap<String, Ipv4Addr>) -> Option<Vec<u8>> {
    const HEADER_LEN: usize = 12;
    if query.len() < HEADER_LEN || query[2] & 0x80 != 0 {
        return None;
    }
    // The question: labels, then type and class.
    let mut at = HEADER_LEN;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question_end = at + 4;
    let question = query.get(HEADER_LEN..question_end)?;
    let name = labels.join(".");
    let known = names.get(&name);

    let mut response = Vec::with_capacity(question_end + 16);
    response.extend_from_slice(&query[0..2]);
    let rcode: u8 = if known.is_some() { 0 } else { 3 };
    let answer_count: u16 = u16::from(known.is_some() && qtype == 1);
    response.extend_from_slice(&[0x81, 0x80 | rcode]);
    response.extend_from_slice(&1u16.to_be_bytes());
    response.extend_from_slice(&answer_count.to_be_bytes());
    response.extend_from_slice(&[0, 0, 0, 0]);
    response.extend_from_slice(question);
    if let (Some(ip), 1) = (known, qtype) {
        // Name as a pointer to the question, type A, class IN, TTL 60, 4 bytes of address.
        response.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        response.extend_from_slice(&ip.octets());
    }
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(u8::try_from(label.len()).unwrap());
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    #[test]
    fn known_names_get_their_address_and_others_nxdomain() {
        let names = HashMap::from([("db.lab".to_owned(), Ipv4Addr::new(198, 18, 0, 2))]);
        let a = answer(&query("DB.lab", 1), &names).unwrap();
        assert_eq!(&a[0..2], &[0x12, 0x34]);
        assert_eq!(a[3] & 0x0f, 0);
        assert_eq!(&a[6..8], &[0, 1]);
        assert_eq!(&a[a.len() - 4..], &[198, 18, 0, 2]);
        let nodata = answer(&query("db.lab", 28), &names).unwrap();
        assert_eq!((nodata[3] & 0x0f, nodata[7]), (0, 0));
        let nx = answer(&query("nowhere.lab", 1), &names).unwrap();
        assert_eq!(nx[3] & 0x0f, 3);
        assert!(answer(&[0; 5], &names).is_none());
    }
}
