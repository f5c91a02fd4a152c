#!/usr/bin/env bash
# Benchmarks nbdtunnel: installs dependencies, builds Release into build-release/, runs the macro
# bench (direct NBD vs nbdtunnel vs socat vs ssh) and writes bench/results/RESULTS-<date>.md and
# results-<date>.json. See bench/README.md.
#
#   scripts/bench.sh [--quick] [--tls | --w6] [--micro | --micro-only] [run_bench.py options...]
#
# Options for the macro bench (also settable by environment):
#   --quick                 smoke test: 256 MiB, 1 run, no warm-up (under 2 minutes)
#   --tls                   the TLS comparison: W1,W2 over direct, qemu-tcp, qemu-tls, nbdtunnel
#                           (default mode and copy), nbdtunnel-tls, ssh-aes128-gcm; 1 warm-up + 5 runs;
#                           writes RESULTS-<date>-tls.md (--size 512M: ~4 min on 2 busy cores).
#                           Certificates come from scripts/make-certs.sh, fresh for every bench run.
#   --w6                    W6: a 256 MiB mirror across a 20 ms round trip (bench/tools/delay_line,
#                           10 ms each way) over QEMU's own NBD on TCP and over nbdtunnel (default
#                           and copy mode), and through the line at 0 ms (its own cost); 1 warm-up
#                           + 3 runs; writes RESULTS-<date>-w6.md (--w6-size 64M: about 2 min)
#   --size S                image size for W1-W3, e.g. 2G            (BENCH_SIZE, default 2G)
#   --runs N --warmup N     measured / discarded runs                (BENCH_RUNS=3, BENCH_WARMUP=1)
#   --workloads W1,W4       which workloads                          (BENCH_WORKLOADS)
#   --transports LIST       direct,naive-relay,nbdtunnel,socat,socat-b262144,ssh,ssh-aes128-gcm (BENCH_TRANSPORTS);
#                           also qemu-tcp, qemu-tls, nbdtunnel:default, nbdtunnel:<mode>, nbdtunnel-tls
#   --modes copy,splice     nbdtunnel copy modes (default: read from `nbdtunnel dest --help`)
#                                                                    (BENCH_MODES)
#   --nbdtunnel-args "..."  extra arguments for both roles, e.g. "--threads 2" (BENCH_NBDTUNNEL_ARGS)
#   --baseline BIN          a second nbdtunnel binary: 'baseline:<mode>' runs interleaved with ours
#   run bench/macro/run_bench.py --help for the rest.
# Other:
#   --micro                 also run the Google Benchmark micro-benchmarks (codecs, copy methods)
#   --micro-only            only the micro-benchmarks
#   BENCH_JOBS              build parallelism (default 2)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD="$ROOT/build-release"
RESULTS="$ROOT/bench/results"
JOBS=${BENCH_JOBS:-2}

micro=0
macro=1
args=()
while (($#)); do
  case "$1" in
    --micro) micro=1 ;;
    --micro-only) micro=1; macro=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) args+=("$1") ;;
  esac
  shift
done
[[ -n ${BENCH_SIZE:-} ]] && args=(--size "$BENCH_SIZE" "${args[@]}")
[[ -n ${BENCH_RUNS:-} ]] && args=(--runs "$BENCH_RUNS" "${args[@]}")
[[ -n ${BENCH_WARMUP:-} ]] && args=(--warmup "$BENCH_WARMUP" "${args[@]}")
[[ -n ${BENCH_WORKLOADS:-} ]] && args=(--workloads "$BENCH_WORKLOADS" "${args[@]}")
[[ -n ${BENCH_TRANSPORTS:-} ]] && args=(--transports "$BENCH_TRANSPORTS" "${args[@]}")
[[ -n ${BENCH_MODES:-} ]] && args=(--modes "$BENCH_MODES" "${args[@]}")
[[ -n ${BENCH_NBDTUNNEL_ARGS:-} ]] && args=(--nbdtunnel-args "$BENCH_NBDTUNNEL_ARGS" "${args[@]}")

"$ROOT/scripts/setup.sh"

# Release, no tests. Warnings are shown but not fatal here: GCC's -O3 false positives must not
# stop a benchmark (scripts/test.sh builds with -Werror).
cmake_args=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DNBDTUNNEL_TESTS=OFF -DNBDTUNNEL_BENCH=ON -DNBDTUNNEL_WERROR=OFF)
# ccache, where installed, makes rebuilds of other checkouts of the tree cheap (as in scripts/test.sh).
if command -v ccache >/dev/null; then
  cmake_args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$ROOT} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
fi
cmake -S "$ROOT" -B "$BUILD" "${cmake_args[@]}" >/dev/null
cmake --build "$BUILD" --target nbdtunnel nbd_latency naive_relay delay_line bench_codec bench_copy \
  -j"$JOBS"

mkdir -p "$RESULTS"
stamp=$(date +%Y-%m-%dT%H%M)
status=0

if ((micro)); then
  echo "== micro-benchmarks (results in $RESULTS/micro-*-$stamp.{txt,json})"
  "$BUILD/bench/micro/bench_codec" --benchmark_out="$RESULTS/micro-codec-$stamp.json" \
    --benchmark_out_format=json | tee "$RESULTS/micro-codec-$stamp.txt"
  "$BUILD/bench/micro/bench_copy" --benchmark_out="$RESULTS/micro-copy-$stamp.json" \
    --benchmark_out_format=json | tee "$RESULTS/micro-copy-$stamp.txt"
fi

if ((macro)); then
  python3 "$ROOT/bench/macro/run_bench.py" \
    --nbdtunnel "$BUILD/engine/nbdtunnel" \
    --latency-tool "$BUILD/bench/tools/nbd_latency" \
    --results-dir "$RESULTS" "${args[@]}" || status=$?
fi
exit "$status"
