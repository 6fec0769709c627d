#!/usr/bin/env bash
# The project's test command (README.md): formatting, lints, every test, docs, and the
# architecture checks. Installs the Debian packages the tests use when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

started=$SECONDS
step() { printf '\n=== %s (at %ds)\n' "$*" "$((SECONDS - started))"; }

step "test packages"
bash scripts/test-packages.sh

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --locked --workspace --all-targets --all-features -- -D warnings

step "tests"
cargo test --locked --workspace --all-features

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps --all-features

step "core purity"
bash scripts/check-core-purity.sh

step "packaging (scripts/check-packaging.sh)"
bash scripts/check-packaging.sh

step "benches compile"
# In the dev profile: this checks that they build and link, reusing the tests' build (the
# bench profile would compile the whole workspace again, optimised: over 10 minutes here).
cargo bench --locked --workspace --no-run --profile dev

echo
echo "all checks passed in $((SECONDS - started))s"
