// Times HuggingFace's Rust tokenizers (npm binding) on one thread over the same documents as
// BenchmarkEncode in bench_test.go, and prints tokens/s.
//
//   RAYON_RS_NUM_CPUS=1 TOKENIZERS_PARALLELISM=false TESTDATA_NODE_DIR=$D \
//     node tokenize/testdata/bench_reference.mjs DIR_OF_FETCHED_TOKENIZERS
//
// DIR_OF_FETCHED_TOKENIZERS is the cache the Go tests fill (see sources_test.go):
// it holds one folder per tokenizer, named <name>-<version>-<sha prefix>.
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(process.env.TESTDATA_NODE_DIR
  ? path.join(path.resolve(process.env.TESTDATA_NODE_DIR), 'package.json')
  : path.join(here, 'package.json'));
const { Tokenizer } = require('tokenizers');

const TARGET = 3 << 20;
const texts = fs.readFileSync(path.join(here, 'corpus.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l).text);
const docs = [];
let size = 0;
for (let round = 0; size < TARGET; round++) {
  for (const s of texts) {
    const d = `${round}: ${s}`;
    docs.push(d);
    size += Buffer.byteLength(d);
  }
}

const cache = process.argv[2];
const dirs = fs.readdirSync(cache);
for (const name of ['gpt2', 'llama3', 'qwen3', 'gpt4o', 'llama2', 'gemma3', 'bert']) {
  let file;
  if (name === 'bert') file = path.resolve(here, '..', '..', '..', 'shared', 'tokenizers', 'bert', 'tokenizer.json');
  else {
    const d = dirs.find((x) => x.startsWith(name + '-'));
    if (!d) { console.log(`${name}: not fetched`); continue; }
    file = path.join(cache, d, 'tokenizer.json');
  }
  const tk = Tokenizer.fromFile(file);
  await tk.encodeBatch(docs.slice(0, 1000), { addSpecialTokens: false }); // warm up
  let best = Infinity; let tokens = 0;
  for (let rep = 0; rep < 3; rep++) {
    const t0 = process.hrtime.bigint();
    let n = 0;
    for (let i = 0; i < docs.length; i += 4096) {
      const encs = await tk.encodeBatch(docs.slice(i, i + 4096), { addSpecialTokens: false });
      for (const e of encs) n += e.getLength();
    }
    const dt = Number(process.hrtime.bigint() - t0) / 1e9;
    if (dt < best) { best = dt; tokens = n; }
  }
  console.log(`${name}: ${docs.length} docs, ${(size / 1e6).toFixed(2)} MB, ${tokens} tokens, ${best.toFixed(3)} s, ${Math.round(tokens / best)} tokens/s, ${(size / 1e6 / best).toFixed(2)} MB/s`);
}
