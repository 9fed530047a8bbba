#!/usr/bin/env bash
# Fetches the ONNX Runtime 1.24.1 shared library (linux-x64) from the npm package
# onnxruntime-node@1.24.1 into third_party/ort/ (git-ignored). Idempotent: returns at
# once when the library is already there with the right checksum.
set -euo pipefail

version=1.24.1
want_sha=53ef1ac028dd1b05554b8da28d9159eb3876f99868193d2aaa6e67f0243c23d4
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/third_party/ort"
lib="$dest/libonnxruntime.so.1"

if [ -f "$lib" ] && echo "$want_sha  $lib" | sha256sum -c --status; then
  exit 0
fi
command -v npm >/dev/null || { echo "setup-ort: npm is required to fetch onnxruntime-node@$version" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "setup-ort: fetching onnxruntime-node@$version from the npm registry" >&2
(cd "$tmp" && npm pack --silent "onnxruntime-node@$version" >/dev/null)
tar -xzf "$tmp/onnxruntime-node-$version.tgz" -C "$tmp" package/bin/napi-v6/linux/x64/libonnxruntime.so.1
got=$(sha256sum "$tmp/package/bin/napi-v6/linux/x64/libonnxruntime.so.1" | cut -d' ' -f1)
if [ "$got" != "$want_sha" ]; then
  echo "setup-ort: checksum mismatch for libonnxruntime.so.1: got $got, want $want_sha" >&2
  exit 1
fi
mkdir -p "$dest"
mv "$tmp/package/bin/napi-v6/linux/x64/libonnxruntime.so.1" "$lib.tmp"
mv "$lib.tmp" "$lib"
echo "setup-ort: installed $lib" >&2
