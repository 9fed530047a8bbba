#!/usr/bin/env bash
# Side by side, same model, same machine, one run: ortalign (ONNX Runtime) against PyTorch
# eager (testdata/bench_generate.py), printing markdown tables.
#  1. greedy generation with the KV cache, 4 prompts x 32 tokens, 64 new tokens, 1 and 2
#     threads (BENCH_THREADS): tokens/s, ms per decoding step, peak RSS of the process, on
#     the tiny Llama (testdata/models/llama_opset17.onnx / llama.pt); with BENCH_GEN_REAL=1
#     also on testdata/bench/smollm2.onnx/.pt (gen_bench_real.py export smollm2; minutes
#     per side on 2 cores).
#  2. one online GRPO step on the tiny Llama, generation and update apart: ortalign's
#     BenchmarkRLStep (4 prompts x 8 completions x 16 tokens, 2 threads) against the same
#     work in PyTorch (bench_generate.py rl, on the same 4 prompts' token ids).
# PyTorch's BLAS: as scripts/bench.sh (OPENBLAS_CORETYPE, BENCH_OPENBLAS_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f third_party/ort/libonnxruntime.so.1 ] || ./scripts/setup-ort.sh
export ORTALIGN_ORT_LIB=$PWD/third_party/ort/libonnxruntime.so.1
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
  if grep -qw avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX
  elif grep -qw avx2 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Haswell; fi
fi
if [ -z "${BENCH_OPENBLAS_DIR:-}" ] && [ -d /tmp/oblas/root/usr/lib/x86_64-linux-gnu/openblas-pthread ]; then
  BENCH_OPENBLAS_DIR=/tmp/oblas/root/usr/lib/x86_64-linux-gnu/openblas-pthread
fi
if [ -n "${BENCH_OPENBLAS_DIR:-}" ]; then
  export LD_LIBRARY_PATH=$BENCH_OPENBLAS_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
elif ! ls /usr/lib/x86_64-linux-gnu/libopenblas*.so* >/dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/openblas*/libblas.so.3 >/dev/null 2>&1; then
  echo "WARNING: no OpenBLAS found: PyTorch will run on the reference BLAS (set BENCH_OPENBLAS_DIR)" >&2
fi
PY=${BENCH_PYTHON:-/usr/bin/python3}
# libgomp's threads busy-wait between parallel regions by default; on a loaded machine with
# as many threads as cores they starve each other (PyTorch at 2 threads on 2 busy cores ran
# 20x slower than at 1). PASSIVE makes them sleep; BENCH_OMP_WAIT_POLICY=ACTIVE restores it.
export OMP_WAIT_POLICY=${BENCH_OMP_WAIT_POLICY:-PASSIVE}
THREADS=${BENCH_THREADS:-1 2}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go test -c -o "$tmp/generate.test" ./pipeline/generate
go test -c -o "$tmp/rollout.test" ./pipeline/rollout
gen_bin=$tmp/generate.test
rl_bin=$tmp/rollout.test
load() { cut -d' ' -f1-3 /proc/loadavg; }
# benchmark metric NAME from a go test -bench line
metric() { awk -v m="$2" '/^Benchmark/{for(i=2;i<=NF;i++) if($i==m) print $(i-1)}' "$1" | tail -1; }
js() { "$PY" -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])[sys.argv[2]])' "$1" "$2"; }

models="tiny"
[ "${BENCH_GEN_REAL:-0}" = 1 ] && models="tiny smollm2"
gen_rows=""
for m in $models; do
  if [ "$m" = tiny ]; then onnx=$PWD/testdata/models/llama_opset17.onnx; reps=5; else onnx=$PWD/testdata/bench/smollm2.onnx; reps=1; fi
  for t in $THREADS; do
    l=$(load)
    echo "== generate $m, $t threads: ortalign (load $l)" >&2
    (cd pipeline/generate && ORTALIGN_BENCH_GEN_MODEL=$onnx ORTALIGN_BENCH_THREADS=$t \
      "$gen_bin" -test.run '^$' -test.bench 'BenchmarkGenerateSide$' -test.benchtime ${reps}x -test.v) | tee "$tmp/ort.txt" >&2
    gen_rows+="| $m | $t | ortalign (ORT, $(grep -o 'cache mode [a-z]*' "$tmp/ort.txt" | head -1 | cut -d' ' -f3) KV cache) | $(metric "$tmp/ort.txt" tokens/s) | $(metric "$tmp/ort.txt" ms/step) | $(metric "$tmp/ort.txt" peakRSS_MB) | $l |"$'\n'
    l=$(load)
    echo "== generate $m, $t threads: PyTorch eager (load $l)" >&2
    OMP_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t "$PY" testdata/bench_generate.py gen "$m" --threads "$t" --reps $reps | tee "$tmp/pt.json" >&2
    gen_rows+="| $m | $t | PyTorch eager (KV cache) | $(js "$tmp/pt.json" tokens_per_s) | $(js "$tmp/pt.json" ms_per_step) | $(js "$tmp/pt.json" peak_rss_mb) | $l |"$'\n'
  done
done

(cd pipeline/rollout && ORTALIGN_DUMP_RL_PROMPTS=$tmp/rl_prompts.json "$rl_bin" -test.run '^TestDumpRLBenchPrompts$' >/dev/null)
l=$(load)
echo "== GRPO step: ortalign BenchmarkRLStep (load $l)" >&2
(cd pipeline/rollout && "$rl_bin" -test.run '^$' -test.bench 'BenchmarkRLStep' -test.benchtime 10x) | tee "$tmp/rl.txt" >&2
sub() { awk -v s="BenchmarkRLStep/$1" -v m="$2" 'index($1,s)==1 && (substr($1,length(s)+1,1)=="-" || length($1)==length(s)){for(i=2;i<=NF;i++) if($i==m) print $(i-1)}' "$tmp/rl.txt" | tail -1; }
rl_rows="| 2 | ortalign (ORT) | $(sub generate ms/op) | $(sub generate tokens/s) | $(sub update ms/op) | $(sub collect ms/op) | $l |"$'\n'
for t in $THREADS; do
  l=$(load)
  reps=10; [ "$t" -gt 1 ] && reps=${BENCH_RL_REPS_MT:-3}
  echo "== GRPO step: PyTorch eager, $t threads (load $l)" >&2
  OMP_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t "$PY" testdata/bench_generate.py rl "$tmp/rl_prompts.json" --threads "$t" --reps $reps | tee "$tmp/ptrl.json" >&2
  rl_rows+="| $t | PyTorch eager | $(js "$tmp/ptrl.json" generate_ms) | $(js "$tmp/ptrl.json" generate_tokens_per_s) | $(js "$tmp/ptrl.json" update_ms) | – | $l |"$'\n'
done

echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}, OMP_WAIT_POLICY=$OMP_WAIT_POLICY"
echo
echo "Greedy generation, 4 prompts x 32 tokens, 64 new tokens (tokens/s: generated tokens over wall time, prefill included; ms/step: one decoding step of the batch)"
echo
echo "| model | threads | side | tokens/s | ms/step | peak RSS (MB) | load (1/5/15 min) |"
echo "|---|---|---|---|---|---|---|"
printf '%s' "$gen_rows"
echo
echo "One GRPO step on the tiny Llama: 4 prompts x 8 completions x 16 tokens (ms per step)"
echo
echo "| threads | side | generate (ms) | generate tokens/s | update (ms) | whole rollout (ms) | load (1/5/15 min) |"
echo "|---|---|---|---|---|---|---|"
printf '%s' "$rl_rows"
