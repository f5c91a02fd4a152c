#!/usr/bin/env bash
# Sets up (if needed), configures, builds and runs every test.
#   scripts/test.sh                                   # RelWithDebInfo (the default build) in build/
#   BUILD_TYPE=Release BUILD_DIR=build-release scripts/test.sh   # another build type
#   SANITIZE=address,undefined scripts/test.sh        # sanitizer build (Debug) in build-asan/
#   CTEST_ARGS="-L unit" scripts/test.sh              # a subset
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

"$root/scripts/setup.sh"

build_dir=${BUILD_DIR:-build}
# RelWithDebInfo is what CMakeLists.txt builds when no type is given.
build_type=${BUILD_TYPE:-RelWithDebInfo}
cmake_args=(-G Ninja -DNBDTUNNEL_WERROR=ON)
# ccache, where installed, makes rebuilds of other checkouts of the tree cheap.
if command -v ccache >/dev/null; then
  cmake_args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$root} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
fi
if [[ -n "${SANITIZE:-}" ]]; then
  build_dir=${BUILD_DIR:-build-asan}
  build_type=${BUILD_TYPE:-Debug}
  cmake_args+=(-DSANITIZE="$SANITIZE" -DNBDTUNNEL_BENCH=OFF)
fi
cmake_args+=(-DCMAKE_BUILD_TYPE="$build_type")

echo "test: $build_type build in $build_dir"
cmake -S . -B "$build_dir" "${cmake_args[@]}"
cmake --build "$build_dir" -j "$(nproc)"
# shellcheck disable=SC2086
ctest --test-dir "$build_dir" --output-on-failure --timeout 300 ${CTEST_ARGS:-}
