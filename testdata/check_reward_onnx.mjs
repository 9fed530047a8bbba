// Loads a reward model written by `ortalign reward` in ONNX Runtime's node binding (npm
// onnxruntime-node, a separate build of the library the project uses) and checks its
// contract and its rewards.
//
//   TESTDATA_NODE_DIR=$D node testdata/check_reward_onnx.mjs check.json
//
// check.json: {"model": "/path/reward.onnx", "input_ids": [[...]], "attention_mask": [[...]],
// "rewards": [...]} (the rewards ortalign computed for those rows). The model must take
// exactly input_ids and attention_mask and output exactly rewards, of shape [batch]; its
// rewards must agree within 1e-4 (abs) with graph optimizations off and on.
// Exit status: 0 OK, 1 mismatch or load failure, 3 onnxruntime-node is not installed.
import fs from 'node:fs';
import { require } from './nodemods.mjs';

let ort;
try {
  ort = require('onnxruntime-node');
} catch (e) {
  console.error(`onnxruntime-node not found (set TESTDATA_NODE_DIR to a folder with testdata/package.json installed): ${e.message}`);
  process.exit(3);
}
const c = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
let worst = 0;
for (const level of ['disabled', 'all']) {
  const sess = await ort.InferenceSession.create(c.model, { graphOptimizationLevel: level, intraOpNumThreads: 1 });
  if (!same(sess.inputNames, ['input_ids', 'attention_mask']) || !same(sess.outputNames, ['rewards'])) {
    console.error(`FAIL: inputs ${sess.inputNames}, outputs ${sess.outputNames}; want input_ids, attention_mask -> rewards`);
    process.exit(1);
  }
  const B = c.input_ids.length; const T = c.input_ids[0].length;
  const feeds = {};
  for (const k of ['input_ids', 'attention_mask']) {
    feeds[k] = new ort.Tensor('int64', BigInt64Array.from(c[k].flat().map((x) => BigInt(x))), [B, T]);
  }
  const r = (await sess.run(feeds)).rewards;
  if (!same(r.dims, [B]) || r.type !== 'float32') {
    console.error(`FAIL: rewards ${r.type} ${r.dims}, want float32 [${B}]`);
    process.exit(1);
  }
  for (let i = 0; i < B; i++) worst = Math.max(worst, Math.abs(r.data[i] - c.rewards[i]));
  console.log(JSON.stringify({ graph_optimization: level, inputs: sess.inputNames, outputs: sess.outputNames, dims: r.dims }));
}
if (!(worst <= 1e-4)) { console.error(`FAIL: rewards differ from ortalign's by ${worst}`); process.exit(1); }
console.log(`OK: onnxruntime-node ${ort.env.versions?.common ?? ''} loads the reward model; rewards agree (max abs diff ${worst.toExponential(2)})`);
