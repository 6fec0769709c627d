//! Serves the mesh page over a synthetic 100-region mesh (10,000 cells) on loopback, for
//! `scripts/bench-mesh-page.sh` to time in chromium. Prints `listening on ADDR`, then serves
//! until killed.
//!
//! Run: `cargo run --release -p probermesh-adapters --example mesh_page_fixture [ADDR]`.

// A benchmark tool: its one line of output is for the script that runs it.
#![allow(clippy::print_stdout)]

#[path = "../benches/mesh100/mod.rs"]
mod mesh100;

use std::sync::Arc;

use probermesh_adapters::admin::{AdminApi, AdminServer};
use probermesh_core::aggregate::Aggregator;
use probermesh_core::mesh::{self, MeshHistory, MeshView, PairView};
use probermesh_core::model::{Region, UnixMillis};

struct Fixture {
    aggregator: Aggregator,
    history: MeshHistory,
    now: UnixMillis,
}

#[async_trait::async_trait]
impl AdminApi for Fixture {
    fn metrics(&self) -> Vec<u8> {
        Vec::new()
    }
    fn targets_generation(&self) -> u64 {
        0
    }
    fn targets_json(&self) -> (u64, String) {
        (0, "{}".to_owned())
    }
    async fn reload(&self) -> Result<(), String> {
        Err("a fixture".to_owned())
    }
    fn ready(&self) -> bool {
        true
    }
    fn mesh_view(&self) -> Option<MeshView> {
        Some(mesh::build(
            &self.aggregator,
            &self.history,
            Some("a synthetic 100-region mesh (benchmark fixture)"),
            self.now,
        ))
    }
    fn mesh_pair(&self, source: &Region, target: &Region) -> Option<PairView> {
        mesh::pair(&self.aggregator, &self.history, source, target, self.now)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let (aggregator, history, now) = mesh100::mesh(60);
    let api = Fixture {
        aggregator,
        history,
        now,
    };
    let server = AdminServer::start(&addr, Arc::new(api), None).await?;
    println!("listening on {}", server.local_addr());
    std::future::pending::<()>().await;
    Ok(())
}
