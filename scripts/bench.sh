#!/usr/bin/env bash
# Side-by-side benchmarks: ortalign (ONNX Runtime) against PyTorch eager on the same
# GPT-2-style model (n_embd 256, 4 layers, vocab 8192), same thread counts, same machine.
# Needs Debian's python3-torch with OpenBLAS (libopenblas0-pthread).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-ort.sh
export ORTALIGN_ORT_LIB=$PWD/third_party/ort/libonnxruntime.so.1
model=testdata/bench/gpt2_bench.onnx
[ -f "$model" ] || /usr/bin/python3 testdata/gen_bench.py "$model"

# OpenBLAS picks its kernels from the CPU model; on VMs reporting a generic model it falls
# back to SSE3 kernels 3-8x slower. Give PyTorch the kernels the CPU supports.
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
  if grep -qw avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX
  elif grep -qw avx2 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Haswell; fi
fi
echo "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(unset)}"

# peak RSS of the whole PyTorch process, printed after its JSON line
torch_bench() {
  OMP_NUM_THREADS=$2 OPENBLAS_NUM_THREADS=$2 /usr/bin/python3 - "$@" <<'PY'
import resource, runpy, sys
sys.argv = ["gen_bench.py"] + sys.argv[1:]
try:
    runpy.run_path("testdata/gen_bench.py", run_name="__main__")
finally:
    print('{"peak_rss_mb": %.1f}' % (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
PY
}

echo "== scoring, batch 16 x 128 tokens: PyTorch eager (forward + log_softmax + gather + sum)"
for t in 1 2; do torch_bench --threads "$t" --torch-bench; done
echo "== scoring, batch 16 x 128 tokens: ortalign"
go test ./pipeline -run '^$' -bench 'BenchmarkScore$' -benchtime 20x

echo "== DPO step, 8 pairs x 128 tokens: PyTorch eager (forward + loss + backward + AdamW)"
/usr/bin/python3 testdata/gen_dpo_oracle.py --bench --coretypes "${OPENBLAS_CORETYPE:-default}"
echo "== DPO step, 8 pairs x 128 tokens: ortalign, and ORT's MatMul throughput"
go test ./pipeline -run '^$' -bench 'BenchmarkDPOStep|BenchmarkMatMul' -benchtime 10x
