// Converts the JSONL dataset to Parquet with an independent writer (DuckDB, npm
// @duckdb/node-api) and writes the pre-tokenized TRL variant using HuggingFace's Rust
// tokenizer (npm `tokenizers`) on testdata/tokenizer/tokenizer.json.
//
//   node testdata/gen_parquet.mjs     (after gen_dataset.py and gen_tokenizer.mjs; see README)
//
// Writes testdata/data/:
//   train.parquet, test.parquet        prompt, chosen, rejected (BYTE_ARRAY UTF8), snappy
//   train_tokenized.parquet            prompt_input_ids, chosen_input_ids, rejected_input_ids
//                                      (3-level LIST of INT64), snappy
// Each file is ONE row group (DuckDB does not cut row groups below 2048 rows).
//   train_tokenized.jsonl              the same ids as JSON (read by the Python oracles).
// Tokenization follows TRL's DPOTrainer.tokenize_row for decoder-only models: each of
// prompt / chosen / rejected is encoded on its own without special tokens, and the EOS
// id is appended to chosen and rejected (no BOS; the prompt gets nothing).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { require, testdataDir } from './nodemods.mjs';

const { Tokenizer } = require('tokenizers');
const { DuckDBInstance } = require('@duckdb/node-api');

const dataDir = path.join(testdataDir, 'data');
const tok = Tokenizer.fromFile(path.join(testdataDir, 'tokenizer', 'tokenizer.json'));
const cfg = JSON.parse(fs.readFileSync(path.join(testdataDir, 'tokenizer', 'tokenizer_config.json'), 'utf8'));
const eosId = tok.tokenToId(cfg.eos_token);
if (eosId == null) throw new Error('no eos id');

const q = (s) => "'" + s.replaceAll("'", "''") + "'";
const inst = await DuckDBInstance.create(':memory:', { threads: '1' });
const con = await inst.connect();

const COLS = "{'prompt': 'VARCHAR', 'chosen': 'VARCHAR', 'rejected': 'VARCHAR'}";
for (const split of ['train', 'test']) {
  const src = path.join(dataDir, `${split}.jsonl`);
  const dst = path.join(dataDir, `${split}.parquet`);
  fs.rmSync(dst, { force: true });
  await con.run(`COPY (SELECT prompt, chosen, rejected FROM read_json(${q(src)}, format='newline_delimited', columns=${COLS}))
    TO ${q(dst)} (FORMAT parquet, COMPRESSION snappy)`);
}

// ---- pre-tokenized variant ----
const rows = fs.readFileSync(path.join(dataDir, 'train.jsonl'), 'utf8')
  .split('\n').filter(Boolean).map((l) => JSON.parse(l));
const enc = async (s) => (await tok.encode(s, null, { addSpecialTokens: false })).getIds();
const out = [];
for (const r of rows) {
  out.push({
    prompt_input_ids: await enc(r.prompt),
    chosen_input_ids: [...(await enc(r.chosen)), eosId],
    rejected_input_ids: [...(await enc(r.rejected)), eosId],
  });
}
const tokJsonl = path.join(dataDir, 'train_tokenized.jsonl');
fs.writeFileSync(tokJsonl, out.map((o) => JSON.stringify(o)).join('\n') + '\n');
const tokParquet = path.join(dataDir, 'train_tokenized.parquet');
fs.rmSync(tokParquet, { force: true });
const TCOLS = "{'prompt_input_ids': 'BIGINT[]', 'chosen_input_ids': 'BIGINT[]', 'rejected_input_ids': 'BIGINT[]'}";
await con.run(`COPY (SELECT * FROM read_json(${q(tokJsonl)}, format='newline_delimited', columns=${TCOLS}))
  TO ${q(tokParquet)} (FORMAT parquet, COMPRESSION snappy)`);

// ---- report what was written, read back through DuckDB ----
for (const f of ['train.parquet', 'test.parquet', 'train_tokenized.parquet']) {
  const p = q(path.join(dataDir, f));
  const n = (await con.runAndReadAll(`SELECT count(*) FROM read_parquet(${p})`)).getRows()[0][0];
  const groups = (await con.runAndReadAll(`SELECT count(DISTINCT row_group_id), min(compression) FROM parquet_metadata(${p})`)).getRows()[0];
  const schema = (await con.runAndReadAll(`SELECT name, type, logical_type FROM parquet_schema(${p})`)).getRows()
    .map((r) => r.map((x) => (x == null ? '' : String(x))).join(':')).join(' ');
  console.log(JSON.stringify({ file: f, rows: Number(n), row_groups: Number(groups[0]), compression: groups[1], schema }));
}
const lens = out.map((o) => o.prompt_input_ids.length + Math.max(o.chosen_input_ids.length, o.rejected_input_ids.length));
console.log(JSON.stringify({ eos_id: eosId, max_prompt_plus_completion_tokens: Math.max(...lens) }));
