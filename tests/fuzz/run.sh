#!/usr/bin/env bash
# A bounded fuzzing session of every target, for CI and for humans: ./run.sh SECONDS
# New inputs go to tests/fuzz/corpus/<target>/ (git-ignored); fixtures/wire/corpus/ seeds it.
# Crashes land in tests/fuzz/artifacts/<target>/ and make this script fail.
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); RUSTC_BOOTSTRAP=1 lets stable
# accept the -Z flags cargo-fuzz passes.
set -euo pipefail

seconds="${1:?usage: run.sh SECONDS}"
cd "$(dirname "$0")"
mkdir -p corpus/wire_decode
RUSTC_BOOTSTRAP=1 cargo fuzz run wire_decode corpus/wire_decode ../../fixtures/wire/corpus -- \
    -max_total_time="$seconds" -malloc_limit_mb=64 -rss_limit_mb=1024 -print_final_stats=1
