//! A fake of the path-tracing port: reports answered from a script, requests recorded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use super::lock;
use crate::link::{TraceHop, TraceReport, TraceRequest};
use crate::ports::PathTracer;

/// A [`PathTracer`] that records each request and answers with the hops set for its target,
/// else with an error report ("no route scripted").
#[derive(Debug, Default)]
pub struct FakeTracer {
    paths: Mutex<HashMap<IpAddr, Vec<TraceHop>>>,
    requests: Mutex<Vec<TraceRequest>>,
}

impl FakeTracer {
    /// A tracer with no script.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Traces to `target` find `hops`.
    pub fn path_to(&self, target: IpAddr, hops: Vec<TraceHop>) {
        lock(&self.paths).insert(target, hops);
    }

    /// The requests so far, in order.
    #[must_use]
    pub fn requests(&self) -> Vec<TraceRequest> {
        lock(&self.requests).clone()
    }
}

#[async_trait::async_trait]
impl PathTracer for FakeTracer {
    async fn trace(&self, request: &TraceRequest) -> TraceReport {
        lock(&self.requests).push(request.clone());
        let hops = lock(&self.paths).get(&request.target).cloned();
        TraceReport {
            id: request.id,
            target: request.target,
            error: hops.is_none().then(|| "no route scripted".to_owned()),
            hops: hops.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::TraceProtocol;

    #[test]
    fn answers_the_scripted_path_and_records_the_request() {
        let tracer = FakeTracer::new();
        let target: IpAddr = "198.18.5.2".parse().expect("address");
        let hop = TraceHop {
            ttl: 1,
            addr: Some(target),
            sent: 3,
            received: 3,
            rtt_best: None,
            rtt_mean: None,
            rtt_worst: None,
            rtt_stddev: None,
        };
        tracer.path_to(target, vec![hop.clone()]);
        let request = TraceRequest {
            id: 7,
            target,
            protocol: TraceProtocol::Icmp,
            max_hops: 30,
            rounds: 3,
        };
        let report = pollster::block_on(tracer.trace(&request));
        assert_eq!(report.hops, vec![hop]);
        assert_eq!(report.error, None);
        let elsewhere = TraceRequest {
            target: "198.18.9.9".parse().expect("address"),
            ..request.clone()
        };
        let report = pollster::block_on(tracer.trace(&elsewhere));
        assert!(report.hops.is_empty());
        assert_eq!(report.error.as_deref(), Some("no route scripted"));
        assert_eq!(tracer.requests(), vec![request, elsewhere]);
    }
}
