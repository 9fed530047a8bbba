// Runs the exported test models through ONNX Runtime (npm onnxruntime-node@1.24.1, the
// same library the project uses) and compares the logits with PyTorch's.
//
//   node testdata/check_onnx.mjs /tmp/ortalign_models_check.json   (written by gen_models.py)
//
// Exits non-zero when a model fails to load or differs by more than 1e-4 (abs).
import fs from 'node:fs';
import path from 'node:path';
import { require, testdataDir } from './nodemods.mjs';

const ort = require('onnxruntime-node');
const checks = JSON.parse(fs.readFileSync(process.argv[2] || '/tmp/ortalign_models_check.json', 'utf8'));
let worst = 0;
for (const c of checks) for (const level of ['disabled', 'all']) {
  const sess = await ort.InferenceSession.create(path.join(testdataDir, 'models', c.model),
    { graphOptimizationLevel: level, intraOpNumThreads: 1 });
  const feeds = {};
  for (const [k, v] of Object.entries(c.feeds)) {
    const flat = v.flat().map((x) => BigInt(x));
    feeds[k] = new ort.Tensor('int64', BigInt64Array.from(flat), [v.length, v[0].length]);
  }
  const out = await sess.run(feeds);
  const got = out.logits;
  if (JSON.stringify(got.dims) !== JSON.stringify(c.dims)) throw new Error(`${c.model}: dims ${got.dims} vs ${c.dims}`);
  let maxAbs = 0;
  for (let i = 0; i < got.data.length; i++) maxAbs = Math.max(maxAbs, Math.abs(got.data[i] - c.logits[i]));
  worst = Math.max(worst, maxAbs);
  console.log(JSON.stringify({ model: c.model, graph_optimization: level, inputs: sess.inputNames, outputs: sess.outputNames, dims: got.dims, max_abs_diff: maxAbs }));
}
if (!(worst <= 1e-4)) { console.error(`FAIL: max abs diff ${worst}`); process.exit(1); }
console.log(`OK: all ${checks.length} models (graph optimizations off and on) agree with PyTorch (max abs diff ${worst.toExponential(2)})`);

// ---- completion log-probs through ORT vs the float64 PyTorch oracle (expected/logps.json) ----
const expPath = path.join(testdataDir, 'expected', 'logps.json');
if (fs.existsSync(expPath)) {
  const exp = JSON.parse(fs.readFileSync(expPath, 'utf8'));
  let worstLp = 0;
  for (const [name, info] of Object.entries(exp.models)) {
    for (const file of info.onnx_files) {
      const sess = await ort.InferenceSession.create(path.join(testdataDir, file), { intraOpNumThreads: 1 });
      for (const b of exp.batches.filter((x) => x.model === name)) {
        const B = b.input_ids.length; const T = b.input_ids[0].length;
        const feeds = {};
        for (const k of info.inputs) {
          feeds[k] = new ort.Tensor('int64', BigInt64Array.from(b[k].flat().map((x) => BigInt(x))), [B, T]);
        }
        const logits = (await sess.run(feeds)).logits;
        const V = logits.dims[2];
        for (let i = 0; i < B; i++) {
          let sum = 0;
          for (let t = 1; t < T; t++) {
            if (!b.completion_mask[i][t]) continue;
            const off = (i * T + t - 1) * V;
            let mx = -Infinity;
            for (let v = 0; v < V; v++) mx = Math.max(mx, logits.data[off + v]);
            let z = 0;
            for (let v = 0; v < V; v++) z += Math.exp(logits.data[off + v] - mx);
            sum += logits.data[off + b.input_ids[i][t]] - mx - Math.log(z);
          }
          worstLp = Math.max(worstLp, Math.abs(sum - b.logps_float64[i]));
        }
      }
    }
  }
  console.log(`logps: ORT float32 logits vs float64 oracle, max abs diff of row sums ${worstLp.toExponential(2)}`);
  if (!(worstLp <= 1e-3)) { console.error('FAIL: logps differ'); process.exit(1); }
}
