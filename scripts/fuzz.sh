#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ with clang in build-fuzz/ and runs each in turn.
#   scripts/fuzz.sh            # 60 s per target
#   scripts/fuzz.sh 10         # a smoke run (CI)
#   scripts/fuzz.sh 600 xdr    # one target (or several), 10 minutes each
# Each run starts from the committed seeds (fuzz/corpus/<target>/) and the crash regressions
# (fuzz/crashes/<target>/), copied into build-fuzz/work/<target>/corpus, which is where new
# inputs go: the committed files are never rewritten. A crash, leak, timeout or out-of-memory
# ends with a non-zero exit and the path of the input that caused it. FUZZ_JOBS_NICE (default 10)
# is the nice level of the fuzzers.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

"$root/scripts/setup.sh"

seconds=${1:-60}
shift || true
all_targets=(xdr packet protocol migration_protocol frame_steps json_lines control_command
  cli_values endpoint http_request domain_xml dest_state)
targets=("${@:-${all_targets[@]}}")
build_dir=${FUZZ_BUILD_DIR:-build-fuzz}
cxx=${FUZZ_CXX:-clang++-14}

# The largest input worth trying, per target: bodies are small; the control socket takes lines
# of up to 64 KiB; the frame reader needs room for a few packets.
max_len() {
  case $1 in
    control_command | domain_xml) echo 65536 ;;
    frame_steps | packet | json_lines) echo 8192 ;;
    *) echo 4096 ;;
  esac
}

if ! command -v "$cxx" >/dev/null; then
  echo "fuzz: $cxx not found; scripts/setup.sh installs it" >&2
  exit 1
fi
cmake_args=(-G Ninja -DNBDTUNNEL_FUZZ=ON -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=RelWithDebInfo)
if command -v ccache >/dev/null; then
  cmake_args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$root} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
fi
cmake -S . -B "$build_dir" "${cmake_args[@]}" >/dev/null
cmake --build "$build_dir" -j "$(nproc)" --target "${targets[@]/%/_fuzz}"

failed=()
results=()
for t in "${targets[@]}"; do
  work="$build_dir/work/$t"
  rm -rf "$work"
  mkdir -p "$work/corpus" "$work/artifacts"
  cp fuzz/corpus/"$t"/* "$work/corpus/" 2>/dev/null || true
  if [[ -d fuzz/crashes/$t ]]; then cp fuzz/crashes/"$t"/* "$work/corpus/" 2>/dev/null || true; fi
  dict=()
  if [[ -f fuzz/dict/$t.dict ]]; then dict=(-dict="fuzz/dict/$t.dict"); fi
  echo "fuzz: $t for ${seconds}s"
  set +e
  nice -n "${FUZZ_JOBS_NICE:-10}" "$build_dir/fuzz/${t}_fuzz" "$work/corpus" \
    -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
    -max_len="$(max_len "$t")" -print_final_stats=1 -artifact_prefix="$work/artifacts/" \
    "${dict[@]}" >"$work/log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -1)
  if ((rc != 0)); then
    failed+=("$t")
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$work/log" | tail -1)
    echo "fuzz: $t FAILED (exit $rc); input: ${artifact:-see $work/log}" >&2
    grep -m 5 -E 'ERROR|SUMMARY|invariant failed|deadly signal' "$work/log" >&2 || true
    results+=("$(printf '%-20s %14s  %s' "$t" "${execs:-?}" "FAILED: ${artifact:-$work/log}")")
  else
    results+=("$(printf '%-20s %14s  %s' "$t" "${execs:-?}" ok)")
  fi
done

echo
printf '%-20s %14s  %s\n' target executions result
for line in "${results[@]}"; do echo "$line"; done
if ((${#failed[@]} > 0)); then
  echo "fuzz: failed: ${failed[*]}" >&2
  exit 1
fi
