//! A standalone plain-HTTP test origin for benchmarks (`scripts/bench-http.sh`): serves the
//! routes of `probermesh_tests::http_origin` on 127.0.0.1, prints its port, runs until killed.

use std::io::Write;

use probermesh_tests::http_origin::{Origin, Security};

fn main() {
    let origin = Origin::start(Security::Plain, None);
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{}", origin.addr().port());
    let _ = stdout.flush();
    loop {
        std::thread::park();
    }
}
