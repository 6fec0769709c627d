#!/usr/bin/env bash
# Architecture invariant: probermesh-core is pure. It must not depend, even transitively, on a
# runtime or a network crate. Lists core's normal (non-dev) dependency tree by package name and
# fails on any forbidden name.
set -euo pipefail
cd "$(dirname "$0")/.."
forbidden='^(tokio|quinn|quinn-proto|quinn-udp|socket2|hickory-resolver|hickory-proto|hickory-net|hyper|hyper-util|rustls|tokio-rustls|mio|async-std|smol|reqwest|libc)$'
packages=$(cargo tree --locked -p probermesh-core --all-features -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u)
count=$(printf '%s\n' "$packages" | grep -c . || true)
if [ "$count" -lt 2 ]; then
  echo "core purity check is broken: cargo tree listed $count packages" >&2
  exit 1
fi
bad=$(printf '%s\n' "$packages" | grep -E "$forbidden" || true)
if [ -n "$bad" ]; then
  echo "core purity violated: probermesh-core depends on:" >&2
  printf '  %s\n' $bad >&2
  exit 1
fi
echo "core purity: ok ($count packages in probermesh-core's tree, none forbidden)"

# Companion invariant: only the ring crypto provider is linked anywhere in the workspace
# (two rustls providers are a runtime panic, not a compile error).
if grep -q '^name = "aws-lc' Cargo.lock; then
  echo "aws-lc-rs is in Cargo.lock: some dependency enabled it; use default-features = false and ring" >&2
  exit 1
fi
echo "crypto provider: ring only"
