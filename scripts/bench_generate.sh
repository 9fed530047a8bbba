#!/usr/bin/env bash
# Side by side, same model, same machine, one run: ortalign (ONNX Runtime) against PyTorch
# eager (testdata/bench_generate.py), printing markdown tables.
#  1. greedy generation with the KV cache, 4 prompts x 32 tokens, 64 new tokens, 1 and 2
#     threads (BENCH_THREADS): tokens/s, ms per decoding step, peak RSS of the process, on
#     the tiny Llama (testdata/models/llama_opset17.onnx / llama.pt).
#  2. one online GRPO step on the tiny Llama, generation and update apart: ortalign's
#     BenchmarkRLStep (4 prompts x 8 completions x 16 tokens, 2 threads) against the same
#     work in PyTorch (bench_generate.py rl, on the same 4 prompts' token ids).
#  3. with BENCH_GEN_REAL=1 (scripts/bench.sh --real), the SmolLM2-135M shape
#     (testdata/bench/smollm2.onnx, gen_bench_real.py export smollm2; PyTorch takes
#     smollm2.pt, or random weights without it), BENCH_REAL_THREADS threads (default 2):
#     greedy decoding of 1, 4 and 16 prompts (BENCH_BATCHES) x 32 tokens, 64 new, each run
#     in its own process (its peak RSS), beside the machine's read bandwidth measured in
#     the same run (generate.BenchmarkReadBandwidth, same threads) and the bound it puts
#     on decoding, batch x bandwidth / weight bytes tokens/s; then one GRPO step, 8 prompts
#     x 4 completions x 64 tokens (rollout.BenchmarkRLStepReal; BENCH_RL_BEFORE names a
#     rollout test binary built from an earlier tree for a "before" row) beside PyTorch's
#     (bench_generate.py rl-real): generation, scoring and update times.
# PyTorch's BLAS: as scripts/bench.sh (OPENBLAS_CORETYPE, BENCH_OPENBLAS_DIR).
# BENCH_BINS names a folder of prebuilt generate.test and rollout.test (a machine without
# Go); BENCH_TINY=0 skips parts 1 and 2, BENCH_RL_REAL=0 part 3's GRPO step and
# BENCH_RL_PYTORCH=0 PyTorch's; BENCH_PYTHON picks the Python with torch.
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
if [ -n "${BENCH_BINS:-}" ]; then
  gen_bin=$(realpath "$BENCH_BINS/generate.test") rl_bin=$(realpath "$BENCH_BINS/rollout.test")
else
  go test -c -o "$tmp/generate.test" ./pipeline/generate
  go test -c -o "$tmp/rollout.test" ./pipeline/rollout
  gen_bin=$tmp/generate.test rl_bin=$tmp/rollout.test
fi
load() { cut -d' ' -f1-3 /proc/loadavg; }
# benchmark metric NAME from a go test -bench line
metric() { awk -v m="$2" '/^Benchmark/{for(i=2;i<=NF;i++) if($i==m) print $(i-1)}' "$1" | tail -1; }
js() { "$PY" -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])[sys.argv[2]])' "$1" "$2"; }

gen_rows=""
tiny=tiny
[ "${BENCH_TINY:-1}" = 0 ] && tiny=""
for m in $tiny; do
  onnx=$PWD/testdata/models/llama_opset17.onnx; reps=5
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

if [ -n "$tiny" ]; then
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
fi

echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}, OMP_WAIT_POLICY=$OMP_WAIT_POLICY"
if [ -n "$tiny" ]; then
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
fi
[ "${BENCH_GEN_REAL:-0}" = 1 ] || exit 0

# 3. Real size.
t=${BENCH_REAL_THREADS:-2}
onnx=$PWD/testdata/bench/smollm2.onnx
[ -f "$onnx" ] || OMP_NUM_THREADS=$t "$PY" testdata/gen_bench_real.py export smollm2
bandwidth() {
  (cd pipeline/generate && ORTALIGN_BENCH_THREADS=$t "$gen_bin" -test.run '^$' -test.bench 'BenchmarkReadBandwidth$' -test.benchtime 10x) | tee "$tmp/bw.txt" >&2
  metric "$tmp/bw.txt" GB/s
}
real_rows=""
wbytes=""
bws=""
for B in ${BENCH_BATCHES:-1 4 16}; do
  # The bandwidth is measured just before each decoding run: on a shared machine it moves.
  bw=$(bandwidth)
  bws+="$bw "
  l=$(load)
  echo "== decode smollm2, batch $B, $t threads: ortalign (load $l)" >&2
  (cd pipeline/generate && ORTALIGN_BENCH_GEN_MODEL=$onnx ORTALIGN_BENCH_THREADS=$t ORTALIGN_BENCH_BATCH=$B \
    "$gen_bin" -test.run '^$' -test.bench 'BenchmarkGenerateSide$' -test.benchtime 1x -test.v) | tee "$tmp/ort.txt" >&2
  l2=$(load)
  echo "== decode smollm2, batch $B, $t threads: PyTorch (load $l2)" >&2
  OMP_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t "$PY" testdata/bench_generate.py gen smollm2 --threads "$t" --reps 1 --batch "$B" --warmup 4 | tee "$tmp/pt.json" >&2
  wbytes=$(js "$tmp/pt.json" weight_bytes)
  bound=$(awk -v b="$B" -v bw="$bw" -v w="$wbytes" 'BEGIN{printf "%.1f", b*bw*1e9/w}')
  frac() { awk -v x="$1" -v y="$bound" 'BEGIN{printf "%.2f", x/y}'; }
  o=$(metric "$tmp/ort.txt" tokens/s); p=$(js "$tmp/pt.json" tokens_per_s)
  mode=$(grep -o 'cache mode [a-z]* (in place [a-z]*)' "$tmp/ort.txt" | head -1 | sed -E 's/cache mode ([a-z]+) \(in place true\)/\1 cache written in place/; s/cache mode ([a-z]+) \(in place false\)/\1 cache/')
  real_rows+="| $B | $bound | ortalign ($mode) | $o | $(frac "$o") | $(metric "$tmp/ort.txt" ms/step) | $(metric "$tmp/ort.txt" peakRSS_MB) | $l |"$'\n'
  real_rows+="| $B | $bound | PyTorch (own KV cache) | $p | $(frac "$p") | $(js "$tmp/pt.json" ms_per_step) | $(js "$tmp/pt.json" peak_rss_mb) | $l2 |"$'\n'
done
rlreal() { # $1 label, $2 rollout test binary
  l=$(load)
  echo "== GRPO step smollm2: $1 (load $l)" >&2
  (cd pipeline/rollout && ORTALIGN_BENCH_RL_MODEL=$onnx ORTALIGN_BENCH_THREADS=$t "$2" -test.run '^$' -test.bench 'BenchmarkRLStepReal$' -test.benchtime 1x) | tee "$tmp/rlr.txt" >&2
  rr() { metric "$tmp/rlr.txt" "$1"; }
  rlr_rows+="| $1 | $(rr generate_s) | $(rr gen_tokens/s) | $(rr score_s) | $(rr update1_s), $(rr update2_s) | $(rr peakRSS_MB) | $l |"$'\n'
}
rlr_rows=""
if [ "${BENCH_RL_REAL:-1}" = 1 ]; then
[ -n "${BENCH_RL_BEFORE:-}" ] && rlreal "ortalign before" "$BENCH_RL_BEFORE"
rlreal "ortalign" "$rl_bin"
if [ "${BENCH_RL_PYTORCH:-1}" = 1 ]; then
  l=$(load)
  echo "== GRPO step smollm2: PyTorch (load $l)" >&2
  OMP_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t "$PY" testdata/bench_generate.py rl-real smollm2 --threads "$t" | tee "$tmp/ptr.json" >&2
  rlr_rows+="| PyTorch (own KV cache) | $(js "$tmp/ptr.json" generate_s) | $(js "$tmp/ptr.json" gen_tokens_per_s) | $(js "$tmp/ptr.json" score_s) | $(js "$tmp/ptr.json" update1_s), $(js "$tmp/ptr.json" update2_s) | $(js "$tmp/ptr.json" peak_rss_mb) | $l |"$'\n'
fi
fi
echo
echo "SmolLM2-135M shape, $t threads: read bandwidth ${bws% } GB/s (generate.BenchmarkReadBandwidth, just before each batch's run), weights $(awk -v w="$wbytes" 'BEGIN{printf "%.0f", w/1e6}') MB read per decoding step; bound = batch x bandwidth / weight bytes"
echo
echo "Greedy decoding, batch x 32 prompt tokens, 64 new tokens (tokens/s over wall time, prefill included)"
echo
echo "| batch | bound (tokens/s) | side | tokens/s | of the bound | ms/step | peak RSS (MB) | load (1/5/15 min) |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s' "$real_rows"
echo
echo "One GRPO step, SmolLM2-135M shape, 8 prompts x 4 completions x 64 tokens (seconds; update 1 opens the training session)"
echo
echo "| side | generation (s) | generated tokens/s | scoring (s) | update 1, 2 (s) | peak RSS (MB) | load (1/5/15 min) |"
echo "|---|---|---|---|---|---|---|"
printf '%s' "$rlr_rows"
