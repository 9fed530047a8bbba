#!/usr/bin/env bash
# Side-by-side benchmarks: ortalign (ONNX Runtime) against PyTorch eager on the same
# GPT-2-style model (n_embd 256, 4 layers, vocab 8192), same thread counts, same machine.
# Needs Debian's python3-torch with OpenBLAS (libopenblas0-pthread).
#
# scripts/bench.sh --real [SHAPE]: the same side by side at real size (SHAPE smollm2, the
# default, or qwen2.5; testdata/gen_bench_real.py): whole `ortalign dpo` runs (2 pairs,
# 2 steps) against the same run in PyTorch eager at 128/256/512 tokens (BENCH_SEQS) —
# peak RSS, start-up, step times, save — then LoRA DPO at 512 tokens (BENCH_LORA_SEQS) and
# scoring tokens/s; prints markdown tables. For smollm2 it ends with scripts/bench_generate.sh's
# real-size rows (decoding at batch 1/4/16 against the read-bandwidth bound, one GRPO step;
# BENCH_SKIP_GEN=1 skips them).
# Needs ~12 GB of free memory at 512 tokens; results in testdata/bench/results-SHAPE/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-ort.sh
export ORTALIGN_ORT_LIB=$PWD/third_party/ort/libonnxruntime.so.1

# OpenBLAS picks its kernels from the CPU model; on VMs reporting a generic model it falls
# back to SSE3 kernels 3-8x slower. Give PyTorch the kernels the CPU supports.
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
  if grep -qw avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX
  elif grep -qw avx2 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Haswell; fi
fi
echo "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(unset)}"

# Debian's python3-torch calls whatever libblas.so.3 is installed; the reference (netlib)
# BLAS is 10-50x slower than OpenBLAS and would make PyTorch look absurdly slow. Without
# libopenblas0-pthread installed, point BENCH_OPENBLAS_DIR at an unpacked copy
# (apt-get download libopenblas0-pthread; dpkg -x *.deb DIR; DIR/usr/lib/x86_64-linux-gnu/openblas-pthread).
if [ -n "${BENCH_OPENBLAS_DIR:-}" ]; then
  export LD_LIBRARY_PATH=$BENCH_OPENBLAS_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
elif ! ls /usr/lib/x86_64-linux-gnu/libopenblas*.so* >/dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/openblas*/libblas.so.3 >/dev/null 2>&1; then
  echo "WARNING: no OpenBLAS found: PyTorch will run on the reference BLAS (set BENCH_OPENBLAS_DIR)" >&2
fi

if [ "${1:-}" = "--real" ]; then
  shape=${2:-smollm2}
  threads=${BENCH_THREADS:-2}
  py() { OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads /usr/bin/python3 testdata/gen_bench_real.py "$@"; }
  [ -f "testdata/bench/$shape.onnx" ] || py export "$shape"
  go build -o bin/ortalign ./cmd/ortalign
  res=testdata/bench/results-$shape
  mkdir -p "$res"
  # Full DPO of the Qwen2.5-0.5B shape at 512 tokens needs more than 24 GB on both sides.
  seqs=${BENCH_SEQS:-128 256 512}
  [ "$shape" = qwen2.5 ] && seqs=${BENCH_SEQS:-256}
  for T in $seqs; do
    data=testdata/bench/${shape}_pairs_$T.jsonl
    py data "$shape" --seq "$T" "$data"
    out=$(mktemp -d)
    echo "== $shape, DPO 2 pairs x $T tokens, 2 steps: ortalign"
    py watch "$res/ort_dpo_$T.json" -- bin/ortalign dpo --model "testdata/bench/$shape.onnx" --data "$data" \
      --out "$out/run" --batch-size 2 --max-steps 2 --threads "$threads" || true
    rm -rf "$out"
    echo "== $shape, DPO 2 pairs x $T tokens, 2 steps: PyTorch eager"
    out=$(mktemp -d)
    py dpo "$shape" --data "$data" --steps 2 --threads "$threads" --out "$out" | tee "$res/torch_dpo_$T.json" || true
    rm -rf "$out"
  done
  # LoRA (r 16, alpha 32, attention and MLP projections) on both sides, as PEFT does it.
  for T in ${BENCH_LORA_SEQS:-512}; do
    data=testdata/bench/${shape}_pairs_$T.jsonl
    [ -f "$data" ] || py data "$shape" --seq "$T" "$data"
    out=$(mktemp -d)
    echo "== $shape, LoRA DPO 2 pairs x $T tokens, 2 steps: ortalign"
    py watch "$res/ort_lora_$T.json" -- bin/ortalign dpo --model "testdata/bench/$shape.onnx" --data "$data" \
      --out "$out/run" --batch-size 2 --max-steps 2 --threads "$threads" --lora-r 16 --lora-alpha 32 || true
    rm -rf "$out"
    echo "== $shape, LoRA DPO 2 pairs x $T tokens, 2 steps: PyTorch eager"
    out=$(mktemp -d)
    py dpo "$shape" --data "$data" --steps 2 --threads "$threads" --out "$out" --lora-r 16 --lora-alpha 32 | tee "$res/torch_lora_$T.json" || true
    rm -rf "$out"
  done
  echo "== $shape, scoring 4 x 256 tokens"
  py score "$shape" --seq 256 --batch 4 --threads "$threads" | tee "$res/torch_score.json"
  ORTALIGN_BENCH_MODEL=$PWD/testdata/bench/$shape.onnx ORTALIGN_BENCH_SEQ=256 ORTALIGN_BENCH_THREADS=$threads \
    go test ./pipeline/objective -run '^$' -bench 'BenchmarkScoreReal$' -benchtime 3x | tee "$res/ort_score.txt"
  echo
  echo "$(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/{print $2}') GiB, $threads threads"
  py table "$res"
  # Decoding at batch 1, 4 and 16 against the bandwidth bound, and one GRPO step at this
  # size, beside PyTorch's own KV cache (scripts/bench_generate.sh).
  if [ "$shape" = smollm2 ] && [ "${BENCH_SKIP_GEN:-0}" != 1 ]; then
    echo
    BENCH_GEN_REAL=1 BENCH_REAL_THREADS=$threads ./scripts/bench_generate.sh
  fi
  exit 0
fi

model=testdata/bench/gpt2_bench.onnx
[ -f "$model" ] || /usr/bin/python3 testdata/gen_bench.py "$model"

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
go test ./pipeline/objective -run '^$' -bench 'BenchmarkScore$' -benchtime 20x

echo "== DPO step, 8 pairs x 128 tokens: PyTorch eager (forward + loss + backward + AdamW)"
/usr/bin/python3 testdata/gen_dpo_oracle.py --bench --coretypes "${OPENBLAS_CORETYPE:-default}"
echo "== DPO step, 8 pairs x 128 tokens: ortalign, and ORT's MatMul throughput"
go test ./pipeline/objective -run '^$' -bench 'BenchmarkDPOStep|BenchmarkMatMul' -benchtime 10x
