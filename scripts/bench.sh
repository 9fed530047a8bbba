#!/usr/bin/env bash
# Side-by-side benchmarks: ortalign (ONNX Runtime) against PyTorch eager on the same
# GPT-2-style model (n_embd 256, 4 layers, vocab 8192), same thread counts.
# Needs Debian's python3-torch (and libopenblas0-pthread for a fair PyTorch).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-ort.sh
model=testdata/bench/gpt2_bench.onnx
[ -f "$model" ] || /usr/bin/python3 testdata/gen_bench.py "$model"
echo "== PyTorch eager scoring (batch 16 x 128)"
# peak RSS of the whole PyTorch process, printed after its JSON line
torch_bench() {
  /usr/bin/python3 - "$@" <<'PY'
import resource, runpy, sys
sys.argv = ["gen_bench.py"] + sys.argv[1:]
try:
    runpy.run_path("testdata/gen_bench.py", run_name="__main__")
finally:
    print('{"peak_rss_mb": %.1f}' % (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
PY
}
for t in 1 2; do torch_bench --torch-bench --threads "$t"; done
echo "== ortalign scoring (batch 16 x 128)"
ORTALIGN_ORT_LIB=$PWD/third_party/ort/libonnxruntime.so.1 \
  go test ./pipeline -run '^$' -bench 'BenchmarkScore$' -benchtime 20x -benchmem
