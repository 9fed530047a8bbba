#!/usr/bin/env bash
# Installs ONNX Runtime 1.24.1 for linux-x64 from the npm package onnxruntime-node@1.24.1
# into third_party/ort/ (git-ignored):
#   third_party/ort/libonnxruntime.so.1   the shared library ortalign loads (sha256 checked)
#   third_party/ort/node/                 onnxruntime-node itself (ONNX Runtime's node
#                                         binding), for the tests that load ortalign's
#                                         outputs in a second ONNX Runtime binding
#                                         (TESTDATA_NODE_DIR for testdata/*.mjs)
# The package is installed with `npm install --ignore-scripts` (its install script only
# fetches GPU providers); binaries for other platforms are removed. Idempotent: returns at
# once when both are there with the right version and checksum.
set -euo pipefail

version=1.24.1
want_sha=53ef1ac028dd1b05554b8da28d9159eb3876f99868193d2aaa6e67f0243c23d4
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/third_party/ort"
lib="$dest/libonnxruntime.so.1"
node_dir="$dest/node"
pkg="$node_dir/node_modules/onnxruntime-node"
pkg_lib="$pkg/bin/napi-v6/linux/x64/libonnxruntime.so.1"

lib_ok() { [ -f "$1" ] && echo "$want_sha  $1" | sha256sum -c --status; }
node_ok() {
  [ -f "$pkg/bin/napi-v6/linux/x64/onnxruntime_binding.node" ] && lib_ok "$pkg_lib" &&
    grep -q "\"version\": \"$version\"" "$pkg/package.json"
}

if lib_ok "$lib" && node_ok; then
  exit 0
fi
command -v npm >/dev/null || { echo "setup-ort: npm is required to fetch onnxruntime-node@$version" >&2; exit 1; }

mkdir -p "$dest"
tmp=$(mktemp -d "$dest/.setup.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "setup-ort: fetching onnxruntime-node@$version from the npm registry" >&2
npm install --ignore-scripts --no-audit --no-fund --no-save --no-package-lock --silent \
  --prefix "$tmp/node" "onnxruntime-node@$version" >/dev/null
tpkg="$tmp/node/node_modules/onnxruntime-node"
got=$(sha256sum "$tpkg/bin/napi-v6/linux/x64/libonnxruntime.so.1" | cut -d' ' -f1)
if [ "$got" != "$want_sha" ]; then
  echo "setup-ort: checksum mismatch for libonnxruntime.so.1: got $got, want $want_sha" >&2
  exit 1
fi
# Keep linux-x64 only (the package ships every platform's binaries: 210 MB).
find "$tpkg/bin/napi-v6" -mindepth 2 -maxdepth 2 -type d ! -path '*/linux/x64' -exec rm -rf {} +

cp "$tpkg/bin/napi-v6/linux/x64/libonnxruntime.so.1" "$lib.tmp"
mv "$lib.tmp" "$lib"
rm -rf "$node_dir"
mv "$tmp/node" "$node_dir"
echo "setup-ort: installed $lib and $node_dir (onnxruntime-node $version)" >&2
