// gen_sft.mjs writes the supervised fine-tuning and prompt-only test files of
// package data with the same two writers as gen.mjs (DuckDB: list elements
// "element"; arrow-rs through parquet-wasm: list elements "item", data page
// v2), and JSON Lines through DuckDB. It writes only the files below, so the
// preference fixtures of gen.mjs stay as they are.
//
// Usage (see README.md): node gen_sft.mjs OUTDIR
//
// Every value is a formula of the row index i; data/sft_test.go computes the
// same formulas and compares all rows. Keep the two in step.
import { DuckDBInstance } from "@duckdb/node-api";
import * as arrow from "apache-arrow";
import * as pq from "parquet-wasm/node";
import fs from "node:fs";
import path from "node:path";
import os from "node:os";

const out = path.resolve(process.argv[2] ?? ".");
fs.mkdirSync(out, { recursive: true });
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "ortalign-gen-sft-"));

// ---- formulas (mirrored in sft_test.go) ----

const user = (c) => ({ role: "user", content: c });
const asst = (c) => ({ role: "assistant", content: c });
const sys = (c) => ({ role: "system", content: c });

// prompt-completion (strings); an unrelated column is ignored.
function pcRow(i) {
  let prompt = `Question ${i}: what is ${i} times two?`;
  let completion = ` It is ${2 * i}.`;
  if (i === 7) completion = "";
  if (i % 13 === 5) completion = null;
  if (i === 11) prompt = null;
  return { prompt, completion, source: `gen ${i}` };
}

// conversational prompt-completion
function convPCRow(i) {
  let prompt = [user(`ask ${i}`)];
  if (i % 4 === 3) prompt = [sys(`be brief ${i}`), user(`first ${i}`), asst(`ok ${i}`), user(`then ${i}`)];
  let completion = [asst(`reply ${i}`)];
  if (i === 6) completion = [asst(null)];
  if (i === 9) completion = [];
  return { prompt, completion };
}

// conversational language modeling
function messagesRow(i) {
  let messages;
  switch (i % 3) {
    case 0:
      messages = [user(`hi ${i}`), asst(`hello ${i}`)];
      break;
    case 1:
      messages = [sys(`sys ${i}`), user(`q1 ${i}`), asst(`a1 ${i}`), user(`q2 ${i}`), asst(`a2 ${i}`)];
      break;
    default:
      messages = [user(`u ${i}`), asst(`a ${i}`), user(`left open ${i}`)];
  }
  if (i === 8) messages = [user(`alone ${i}`)];
  if (i === 10) messages = null;
  return { messages };
}

// pre-tokenized prompt-completion
function tokPCRow(i) {
  return {
    prompt_input_ids: [1, i, i + 1],
    completion_input_ids: i === 4 ? [] : i === 6 ? null : [10 + i, 11 + i],
  };
}

// language modeling
function textRow(i) {
  let text = `Document ${i} says ${i * 3}.`;
  if (i === 2) text = null;
  if (i === 5) text = "";
  return { text };
}

// prompt-only (string) and conversational prompt-only
function promptRow(i) {
  return { prompt: i === 3 ? null : `Tell me about ${i}` };
}
function convPromptRow(i) {
  return { prompt: i % 2 === 0 ? [user(`tell ${i}`)] : [sys(`short ${i}`), user(`tell ${i}`)] };
}

// mapped names: question / answer (strings), dialog (messages), q_ids / a_ids
function mappedRow(i) {
  return {
    question: `q${i}`,
    answer: ` a${i}`,
    dialog: [user(`u${i}`), asst(`a${i}`)],
    q_ids: [i, i + 1],
    a_ids: [100 + i],
  };
}

const range = (n, f) => Array.from({ length: n }, (_, i) => f(i));

// ---- DuckDB ----

const db = await DuckDBInstance.create(":memory:");
const con = await db.connect();
await con.run("SET threads=1; SET preserve_insertion_order=true");

async function duck(name, rows, columns, options) {
  const src = path.join(tmp, name + ".jsonl");
  fs.writeFileSync(src, rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
  const cols = Object.entries(columns)
    .map(([k, v]) => `'${k}': '${v}'`)
    .join(", ");
  const dst = path.join(out, name);
  const fmt = name.endsWith(".jsonl") ? "FORMAT json" : `FORMAT parquet, ${options}`;
  await con.run(`COPY (SELECT * FROM read_json('${src}', format='newline_delimited', columns={${cols}}))
                 TO '${dst}' (${fmt})`);
  console.log("duckdb", name);
}

const msg = "STRUCT(role VARCHAR, content VARCHAR)[]";
const pcCols = { prompt: "VARCHAR", completion: "VARCHAR", source: "VARCHAR" };
await duck("duckdb_sft_pc.parquet", range(30, pcRow), pcCols, "COMPRESSION snappy");
await duck("duckdb_sft_pc.jsonl", range(30, pcRow), pcCols, "");
await duck("duckdb_sft_conv_pc.parquet", range(16, convPCRow), { prompt: msg, completion: msg }, "COMPRESSION zstd");
await duck("duckdb_sft_conv_pc.jsonl", range(16, convPCRow), { prompt: msg, completion: msg }, "");
await duck("duckdb_sft_messages.parquet", range(15, messagesRow), { messages: msg }, "COMPRESSION snappy");
await duck("duckdb_sft_messages.jsonl", range(15, messagesRow), { messages: msg }, "");
await duck("duckdb_sft_tokenized_int32.parquet", range(12, tokPCRow),
  { prompt_input_ids: "INTEGER[]", completion_input_ids: "INTEGER[]" }, "COMPRESSION zstd, PARQUET_VERSION V2");
await duck("duckdb_sft_tokenized.jsonl", range(12, tokPCRow),
  { prompt_input_ids: "INTEGER[]", completion_input_ids: "INTEGER[]" }, "");
await duck("duckdb_sft_text.parquet", range(10, textRow), { text: "VARCHAR" }, "COMPRESSION snappy");
await duck("duckdb_prompts.parquet", range(10, promptRow), { prompt: "VARCHAR" }, "COMPRESSION snappy");
await duck("duckdb_prompts_conv.jsonl", range(6, convPromptRow), { prompt: msg }, "");
await duck("duckdb_sft_mapped.parquet", range(6, mappedRow),
  { question: "VARCHAR", answer: "VARCHAR", dialog: msg, q_ids: "INTEGER[]", a_ids: "INTEGER[]" }, "COMPRESSION snappy");

// ---- arrow-rs (parquet-wasm) ----

function props({ compression, dictionary, v2, rowGroup }) {
  let b = new pq.WriterPropertiesBuilder()
    .setCompression(compression)
    .setDictionaryEnabled(dictionary)
    .setWriterVersion(v2 ? pq.WriterVersion.V2 : pq.WriterVersion.V1)
    .setCreatedBy("parquet-wasm (arrow-rs) via ortalign gen_sft.mjs");
  if (rowGroup) b = b.setMaxRowGroupSize(rowGroup);
  return b.build();
}

function writeArrow(name, table, p) {
  const wasmTable = pq.Table.fromIPCStream(arrow.tableToIPC(table, "stream"));
  fs.writeFileSync(path.join(out, name), pq.writeParquet(wasmTable, p));
  console.log("arrow-rs", name);
}

const utf8 = new arrow.Utf8();
const msgType = new arrow.Struct([new arrow.Field("role", utf8, true), new arrow.Field("content", utf8, true)]);
const msgList = new arrow.List(new arrow.Field("item", msgType, true));
const vec = (rows, key, type) => arrow.vectorFromArray(rows.map((r) => r[key]), type);

{
  const rows = range(30, pcRow);
  writeArrow("arrow_sft_pc.parquet", new arrow.Table({
    prompt: vec(rows, "prompt", utf8),
    completion: vec(rows, "completion", utf8),
  }), props({ compression: pq.Compression.ZSTD, dictionary: true, v2: true, rowGroup: 8 }));
}
{
  const rows = range(16, convPCRow);
  writeArrow("arrow_sft_conv_pc.parquet", new arrow.Table({
    prompt: vec(rows, "prompt", msgList),
    completion: vec(rows, "completion", msgList),
  }), props({ compression: pq.Compression.SNAPPY, dictionary: false, v2: true, rowGroup: 5 }));
}
{
  const rows = range(15, messagesRow);
  writeArrow("arrow_sft_messages.parquet", new arrow.Table({
    messages: vec(rows, "messages", msgList),
  }), props({ compression: pq.Compression.ZSTD, dictionary: true, v2: true, rowGroup: 4 }));
}
{
  const rows = range(12, tokPCRow);
  const ids = new arrow.List(new arrow.Field("item", new arrow.Int64(), true));
  const big = (r, k) => (r[k] == null ? null : r[k].map(BigInt));
  const bigRows = rows.map((r) => ({
    prompt_input_ids: big(r, "prompt_input_ids"),
    completion_input_ids: big(r, "completion_input_ids"),
  }));
  writeArrow("arrow_sft_tokenized_int64.parquet", new arrow.Table({
    prompt_input_ids: vec(bigRows, "prompt_input_ids", ids),
    completion_input_ids: vec(bigRows, "completion_input_ids", ids),
  }), props({ compression: pq.Compression.ZSTD, dictionary: false, v2: false, rowGroup: 5 }));
}
{
  const rows = range(6, convPromptRow);
  writeArrow("arrow_prompts_conv.parquet", new arrow.Table({
    prompt: vec(rows, "prompt", msgList),
  }), props({ compression: pq.Compression.SNAPPY, dictionary: true, v2: true, rowGroup: 4 }));
}

fs.rmSync(tmp, { recursive: true });
