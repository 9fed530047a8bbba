// Writes the bundled supervised fine-tuning dataset: the chosen side of the preference
// dataset as prompt-completion pairs (TRL's prompt-completion layout), and the ids TRL's
// SFTTrainer would train on, computed with HuggingFace's Rust tokenizer (npm
// `tokenizers`) on testdata/tokenizer/tokenizer.json as an oracle for the Go encoder.
//
//   node testdata/gen_sft_dataset.mjs     (after gen_dataset.py and gen_tokenizer.mjs)
//
// Writes:
//   data/sft_train.jsonl, data/sft_train.parquet   prompt, completion (= train's chosen);
//                                                   Parquet by DuckDB, snappy, BYTE_ARRAY UTF8
//   expected/sft_ids.jsonl                          per row: input_ids and completion_start
// The oracle follows TRL v1.x SFTTrainer for non-conversational prompt-completion data:
// the EOS token text is appended to the completion (unless it ends with it), then
// prompt_ids = tokenizer(prompt) and input_ids = tokenizer(prompt + completion), both
// with the tokenizer's special tokens (its defaults); completion_mask = 0 for the first
// len(prompt_ids) tokens, 1 after.
import fs from 'node:fs';
import path from 'node:path';
import { require, testdataDir } from './nodemods.mjs';

const { Tokenizer } = require('tokenizers');
const { DuckDBInstance } = require('@duckdb/node-api');

const dataDir = path.join(testdataDir, 'data');
const tok = Tokenizer.fromFile(path.join(testdataDir, 'tokenizer', 'tokenizer.json'));
const cfg = JSON.parse(fs.readFileSync(path.join(testdataDir, 'tokenizer', 'tokenizer_config.json'), 'utf8'));
const eos = cfg.eos_token;

const rows = fs.readFileSync(path.join(dataDir, 'train.jsonl'), 'utf8')
  .split('\n').filter(Boolean).map((l) => JSON.parse(l))
  .map((r) => ({ prompt: r.prompt, completion: r.chosen }));
const jsonl = path.join(dataDir, 'sft_train.jsonl');
fs.writeFileSync(jsonl, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');

const q = (s) => "'" + s.replaceAll("'", "''") + "'";
const inst = await DuckDBInstance.create(':memory:', { threads: '1' });
const con = await inst.connect();
const parquet = path.join(dataDir, 'sft_train.parquet');
fs.rmSync(parquet, { force: true });
await con.run(`COPY (SELECT prompt, completion FROM read_json(${q(jsonl)}, format='newline_delimited',
  columns={'prompt': 'VARCHAR', 'completion': 'VARCHAR'})) TO ${q(parquet)} (FORMAT parquet, COMPRESSION snappy)`);

const enc = async (s) => Array.from((await tok.encode(s, null, { addSpecialTokens: true })).getIds());
const out = [];
for (const r of rows) {
  const completion = r.completion.endsWith(eos) ? r.completion : r.completion + eos;
  const promptIds = await enc(r.prompt);
  out.push({ input_ids: await enc(r.prompt + completion), completion_start: promptIds.length });
}
fs.writeFileSync(path.join(testdataDir, 'expected', 'sft_ids.jsonl'), out.map((o) => JSON.stringify(o)).join('\n') + '\n');
const n = (await con.runAndReadAll(`SELECT count(*) FROM read_parquet(${q(parquet)})`)).getRows()[0][0];
console.log(JSON.stringify({ rows: Number(n), max_tokens: Math.max(...out.map((o) => o.input_ids.length)) }));
