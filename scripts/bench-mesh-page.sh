#!/usr/bin/env bash
# Times the mesh page at 100 regions (10,000 cells) in headless chromium: serves the synthetic
# mesh of adapters/examples/mesh_page_fixture.rs, opens the page through chromedriver's W3C
# WebDriver API (curl), and reads when the first matrix was drawn (the page's data-drawn-ms:
# milliseconds since navigation start, fetch and JSON parse included). Target: under 1 s.
# Needs chromium and chromium-driver (scripts/test-packages.sh). Prints one line per run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
runs="${RUNS:-5}"
cargo build --release -q -p probermesh-adapters --example mesh_page_fixture
out=$(mktemp)
"$CARGO_TARGET_DIR/release/examples/mesh_page_fixture" 127.0.0.1:0 >"$out" &
fixture=$!
driver_port=$((20000 + RANDOM % 20000))
chromedriver --port="$driver_port" >/dev/null 2>&1 &
driver=$!
profile=$(mktemp -d)
cleanup() { kill "$fixture" "$driver" 2>/dev/null || true; rm -rf "$profile" "$out"; }
trap cleanup EXIT
for _ in $(seq 100); do grep -q listening "$out" && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$out")
wd="http://127.0.0.1:$driver_port"
for _ in $(seq 100); do curl -sf "$wd/status" >/dev/null && break; sleep 0.1; done
session=$(curl -sf -X POST "$wd/session" -H 'Content-Type: application/json' -d "{\"capabilities\":{\"alwaysMatch\":{\"browserName\":\"chrome\",\"goog:chromeOptions\":{\"binary\":\"/usr/bin/chromium\",\"args\":[\"--headless=new\",\"--no-sandbox\",\"--disable-gpu\",\"--disable-dev-shm-usage\",\"--window-size=1400,1100\",\"--user-data-dir=$profile\"]}}}}" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["value"]["sessionId"])')
echo "mesh page at 100 regions (10,000 cells), chromium $(chromium --version 2>/dev/null | awk '{print $2}')"
for run in $(seq "$runs"); do
  curl -sf -X POST "$wd/session/$session/url" -H 'Content-Type: application/json' -d "{\"url\":\"http://$addr/\"}" >/dev/null
  drawn=""
  for _ in $(seq 300); do
    drawn=$(curl -sf -X POST "$wd/session/$session/execute/sync" -H 'Content-Type: application/json' \
      -d '{"script":"return [document.documentElement.getAttribute(\"data-drawn-ms\"), document.querySelectorAll(\"#matrix td.cell\").length];","args":[]}' \
      | python3 -c 'import json,sys; v=json.load(sys.stdin)["value"]; print("" if v[0] is None else "%s ms, %d cells" % (v[0], v[1]))')
    [ -n "$drawn" ] && break
    sleep 0.1
  done
  echo "run $run: first matrix drawn at ${drawn:-never (timed out)}"
done
curl -sf -X DELETE "$wd/session/$session" >/dev/null || true
