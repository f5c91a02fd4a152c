#!/usr/bin/env bash
# The full soak: the ctest label "soak" (tests/migrate/migrate_soak_test.cpp) with 100 sequential
# migrations against one destination daemon (CI runs 10), then the daemon's open descriptors and
# RSS after run 1 and every 10th run, as a table.
#   scripts/soak.sh                      # build/ (RelWithDebInfo), 100 runs
#   NBDTUNNEL_SOAK_RUNS=300 scripts/soak.sh
#   BUILD_DIR=build-release scripts/soak.sh   # an already configured build directory
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

build_dir=${BUILD_DIR:-build}
export NBDTUNNEL_SOAK_RUNS=${NBDTUNNEL_SOAK_RUNS:-100}
if [[ ! -f "$build_dir/build.ninja" ]]; then
  "$root/scripts/setup.sh"
  cmake_args=(-G Ninja -DNBDTUNNEL_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo)
  if command -v ccache >/dev/null; then
    cmake_args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
    export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$root} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
  fi
  cmake -S . -B "$build_dir" "${cmake_args[@]}"
fi
cmake --build "$build_dir" --target nbdtunnel migrate_soak_test -j "${SOAK_JOBS:-2}"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
ctest --test-dir "$build_dir" -L soak --output-on-failure -V | tee "$log" || status=$?

echo
echo "destination daemon after each sampled run ($NBDTUNNEL_SOAK_RUNS runs):"
awk '/soak-sample/ {
       for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
       if (!n++) { fd0 = v["fds"]; rss0 = v["rss_kib"];
                   printf "%6s %6s %10s %12s\n", "run", "fds", "RSS KiB", "RSS growth" }
       printf "%6d %6d %10d %+12d\n", v["run"], v["fds"], v["rss_kib"], v["rss_kib"] - rss0
     }
     /soak-total/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); t[kv[1]] = kv[2] } }
     END { if (t["seconds"] != "") printf "%d runs in %.0f s\n", t["runs"], t["seconds"] }' "$log"
exit "$status"
