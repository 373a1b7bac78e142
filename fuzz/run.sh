#!/usr/bin/env bash
# Runs each fuzz target for 60 seconds (FUZZ_SECONDS overrides), starting from the seeds in
# fuzz/corpus/. Needs cargo-fuzz and the nightly toolchain: `cargo install cargo-fuzz`.
# A crash leaves its input in fuzz/artifacts/TARGET/; turn it into a unit test beside the
# parser before fixing it.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-60}"
for target in merchant_body psp_answer; do
  # New inputs go to target/corpus (ignored by git); corpus/ holds the committed seeds.
  mkdir -p "target/corpus/$target"
  echo "== $target for ${seconds}s"
  cargo +nightly fuzz run "$target" "target/corpus/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=4096
done
