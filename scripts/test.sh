#!/usr/bin/env bash
# Sets up (if needed), configures, builds and runs every test.
#   scripts/test.sh                 # RelWithDebInfo build in build/
#   SANITIZE=address,undefined scripts/test.sh   # sanitizer build in build-asan/
#   CTEST_ARGS="-L unit" scripts/test.sh         # a subset
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

"$root/scripts/setup.sh"

build_dir=${BUILD_DIR:-build}
cmake_args=(-G Ninja -DNBDTUNNEL_WERROR=ON)
if [[ -n "${SANITIZE:-}" ]]; then
  build_dir=${BUILD_DIR:-build-asan}
  cmake_args+=(-DSANITIZE="$SANITIZE" -DCMAKE_BUILD_TYPE=Debug -DNBDTUNNEL_BENCH=OFF)
fi

cmake -S . -B "$build_dir" "${cmake_args[@]}"
cmake --build "$build_dir" -j "$(nproc)"
# shellcheck disable=SC2086
ctest --test-dir "$build_dir" --output-on-failure --timeout 300 ${CTEST_ARGS:-}
