#!/usr/bin/env bash
# Fuzz hivesync with cargo-fuzz (libFuzzer), each target for a bounded time.
#
#   tests/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 45; TARGET defaults to all of: decode_json decode_bin session
# apply import_line. Exits non-zero when any target finds a crash, a hang (an input running
# longer than FUZZ_TIMEOUT seconds) or a memory blow-up (RSS over FUZZ_RSS_MB); the input is
# then in tests/fuzz/artifacts/<target>/, to be fixed and kept in regressions/<target>/
# (tests/fuzz_regressions.rs replays those under `cargo test`).
#
# Environment:
#   FUZZ_TIMEOUT    seconds one input may run (default 10)
#   FUZZ_RSS_MB     memory limit of the fuzzing process (default 2048)
#   FUZZ_SANITIZER  none (default) or address. cargo-fuzz passes no nightly-only flag with
#                   `--sanitizer none`, so that works on stable Rust as it is; the sanitizers
#                   need `-Zsanitizer`, which RUSTC_BOOTSTRAP=1 unlocks on a stable compiler
#                   (its ASan runtime ships with the standard library). Known leaks in
#                   third-party C code are suppressed with lsan.supp.
#
# Inputs that reach new code go to tests/fuzz/work/<target>/ (not committed; delete it to
# start from the seeds again); the seeds in tests/fuzz/corpus/<target>/ are only read.
# Logs: tests/fuzz/work/<target>.log.
set -euo pipefail
cd "$(dirname "$0")"

secs=${1:-45}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(decode_json decode_bin session apply import_line)
timeout=${FUZZ_TIMEOUT:-10}
rss=${FUZZ_RSS_MB:-2048}
sanitizer=${FUZZ_SANITIZER:-none}

if cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz: $(cargo fuzz --version)"
else
  echo "installing cargo-fuzz (a few minutes, once)"
  cargo install cargo-fuzz --locked
fi

opts=(--fuzz-dir . --sanitizer "$sanitizer")
if [ "$sanitizer" != none ]; then
  export RUSTC_BOOTSTRAP=1
  # A separate build: the instrumentation differs.
  opts+=(--target-dir "target/$sanitizer")
  # Known leaks in third-party C code (each explained in the file).
  export LSAN_OPTIONS="suppressions=$PWD/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
fi

echo "== building the fuzz targets (sanitizer: $sanitizer)"
cargo fuzz build "${opts[@]}"

mkdir -p work
failed=()
for t in "${targets[@]}"; do
  echo "== fuzzing $t for ${secs}s (timeout ${timeout}s per input, rss limit ${rss} MB)"
  mkdir -p "work/$t" "corpus/$t" "artifacts/$t"
  log="work/$t.log"
  if cargo fuzz run "${opts[@]}" "$t" "work/$t" "corpus/$t" -- \
    -max_total_time="$secs" -timeout="$timeout" -rss_limit_mb="$rss" \
    -print_final_stats=1 >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$t")
  fi
  # The last status line and the final stats: executions, speed, corpus.
  grep -E '^#[0-9]+' "$log" | tail -n 1 || true
  grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)' "$log" || true
  echo "corpus: $(find "work/$t" -type f | wc -l) inputs in work/$t + $(find "corpus/$t" -type f | wc -l) seeds"
  echo "$t: $status"
  if [ "$status" = FAILED ]; then
    grep -E -B2 -A30 '^(==[0-9]+==|thread .* panicked|ERROR: libFuzzer|SUMMARY)' "$log" | head -n 60 || true
    ls -l "artifacts/$t" || true
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found problems in: ${failed[*]} (inputs in tests/fuzz/artifacts/, logs in tests/fuzz/work/)"
  exit 1
fi
echo "fuzzing: no crash in ${targets[*]}"
