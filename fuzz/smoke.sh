#!/usr/bin/env bash
# Fuzz smoke run: builds every target, then runs each for a few seconds from the committed
# seed corpus. Fails on the first crash, panic, timeout or out-of-memory. Not a substitute for
# the long runs in README.md; it catches a target that no longer builds or that breaks at once.
#
#   fuzz/smoke.sh            # 5 s per target
#   SMOKE_SECONDS=30 fuzz/smoke.sh
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Uses the nightly toolchain when rustup has one;
# the build uses no sanitizer (`-s none`), which also works on stable.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${SMOKE_SECONDS:-5}"
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
fi
# Overflow checks and debug assertions on (-a), no sanitizer (-s none): the code under test is
# safe Rust, so ASan adds cost and little else.
flags=(-s none -a)

cargo "${toolchain[@]}" fuzz build "${flags[@]}"

scratch="$(mktemp -d)"
# wal_replay writes its segment files here (in memory when /dev/shm exists).
if [ -d /dev/shm ]; then shm="$(mktemp -d -p /dev/shm)"; else shm="$scratch/shm"; mkdir "$shm"; fi
export VOUCHERD_FUZZ_SCRATCH="$shm"
trap 'rm -rf "$scratch" "$shm"' EXIT
for target in wal_frame_decode journal_decode claim_body wal_replay snapshot_load; do
  dict=()
  case "$target" in
    claim_body) dict=(-dict=dict/claim_body.dict) ;;
    wal_*) dict=(-dict=dict/wal.dict) ;;
  esac
  # New inputs go to the scratch directory; the committed corpus is only read.
  mkdir -p "$scratch/$target"
  echo "== $target (${seconds}s)"
  log="$scratch/$target.log"
  status=0
  cargo "${toolchain[@]}" fuzz run "${flags[@]}" "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "${dict[@]}" \
    >"$log" 2>&1 || status=$?
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log" >&2
    echo "fuzz target $target failed (exit $status); the reproducer is in fuzz/artifacts/$target/" >&2
    exit "$status"
  fi
done
echo "fuzz smoke: 5 targets ran ${seconds}s each with no crash"
