#!/usr/bin/env bash
# Builds the Debian package from a fresh clone of this repository's HEAD (what is committed, not
# what is only in the work tree), in its own build directory, and copies the .deb out:
#   scripts/package.sh                 # → build-package/nbdtunnel_VERSION_ARCH.deb
#   OUT=/tmp/debs scripts/package.sh   # elsewhere
#   JOBS=2 BUILD_TYPE=Release          # the defaults
# Depends is computed by dpkg-shlibdeps from the libraries the binary links (CPack's DEB
# generator with CPACK_DEBIAN_PACKAGE_SHLIBDEPS). Install it with `apt install ./FILE.deb`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/build-package}
jobs=${JOBS:-2}
build_type=${BUILD_TYPE:-Release}

"$root/scripts/setup.sh"

work=$(mktemp -d "${TMPDIR:-/tmp}/nbdtunnel-package.XXXXXX")
trap 'rm -rf "$work"' EXIT
git clone --quiet --no-hardlinks "$root" "$work/src"
echo "package: $(git -C "$work/src" log -1 --format='%h %s')"

cmake_args=(-G Ninja -DCMAKE_BUILD_TYPE="$build_type" -DNBDTUNNEL_WERROR=ON
  -DNBDTUNNEL_TESTS=OFF -DNBDTUNNEL_BENCH=OFF)
if command -v ccache >/dev/null; then
  cmake_args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  export CCACHE_BASEDIR="$work/src" CCACHE_NOHASHDIR=1
fi
cmake -S "$work/src" -B "$work/build" "${cmake_args[@]}" >/dev/null
cmake --build "$work/build" -j "$jobs" --target nbdtunnel
(cd "$work/build" && cpack -G DEB -B "$work/out" >/dev/null)

mkdir -p "$out"
for deb in "$work"/out/*.deb; do
  cp "$deb" "$out/"
  echo "package: $out/$(basename "$deb")"
  dpkg-deb --field "$deb" Package Version Architecture Depends | sed 's/^/  /'
done
