// gen.mjs writes the Parquet and JSONL test files of package data with two
// writers independent of parquet-go:
//
//   - DuckDB (@duckdb/node-api): list elements named "element", snappy or
//     zstd, dictionary on or off, data page v1 or v2 (PARQUET_VERSION V2);
//   - arrow-rs through parquet-wasm (with apache-arrow for the tables): list
//     elements named "item", writer version 1 or 2 (data page v2).
//
// Usage (see README.md): node gen.mjs OUTDIR
//
// Every value is a formula of the row index i; data/read_test.go computes the
// same formulas and compares all rows. Keep the two in step.
import { DuckDBInstance } from "@duckdb/node-api";
import * as arrow from "apache-arrow";
import * as pq from "parquet-wasm/node";
import fs from "node:fs";
import path from "node:path";
import os from "node:os";

const out = path.resolve(process.argv[2] ?? ".");
fs.mkdirSync(out, { recursive: true });
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "ortalign-gen-"));

// ---- formulas (mirrored in read_test.go) ----

// longText returns a 20000-character text (some characters multi-byte in UTF-8).
const ALPHA = "abcdefghijklmnopqrstuvwxyzé—ü ";
function longText(i) {
  let s = "";
  for (let k = 0; k < 20000; k++) s += ALPHA[(k * 7 + i) % ALPHA.length];
  return s;
}
const LONG_ROW = 42;

// standard layout
function stdRow(i) {
  let prompt = `Question ${i}: what is ${i} + ${i}?`;
  if (i % 101 === 7) prompt = "";
  if (i % 97 === 5) prompt = null;
  let chosen = i === LONG_ROW ? longText(i) : `The answer is ${2 * i}.`;
  if (i % 89 === 3) chosen = null;
  let rejected = i % 103 === 9 ? "" : `The answer is ${2 * i + 1}.`;
  if (i % 83 === 11) rejected = null;
  return {
    prompt,
    chosen,
    rejected,
    margin: i % 7 === 0 ? null : i / 10,
    ref_chosen_logps: -i / 100,
    ref_rejected_logps: Math.fround(-i / 50),
  };
}

// implicit prompt (Anthropic HH-RLHF)
function hhRow(i) {
  if (i % 10 === 9) {
    // no "\n\nAssistant:" marker: longest common prefix, trailing space moved
    return { chosen: `plain text ${i} shared start good`, rejected: `plain text ${i} shared start bad` };
  }
  const p = `\n\nHuman: Question ${i}?\n\nAssistant: Answer ${i}.\n\nHuman: And more ${i}?\n\nAssistant:`;
  return {
    chosen: i === 13 ? null : `${p} Sure, good reply ${i}.`,
    rejected: `${p} Sure, bad reply ${i}.`,
  };
}

// conversational (UltraFeedback-binarized: string prompt, lists repeat it)
function ufRow(i) {
  const prompt = `Write poem ${i}`;
  const u = { role: "user", content: prompt };
  let chosen = [u, { role: "assistant", content: `good poem ${i}` }];
  let rejected = [u, { role: "assistant", content: `bad poem ${i}` }];
  if (i % 5 === 4) {
    // multi-turn: the shared history is the prompt
    const h = [u, { role: "assistant", content: `draft ${i}` }, { role: "user", content: `again ${i}` }];
    chosen = [...h, { role: "assistant", content: `good poem ${i}` }];
    rejected = [...h, { role: "assistant", content: `bad poem ${i}` }];
  }
  if (i === 17) rejected = null;
  return { prompt, chosen, rejected, score_chosen: 8 + (i % 3), score_rejected: 2.5 };
}

// conversational with unusable rows: empty (not null) message lists, which
// readers keep as rows and encoders skip; row 17's null rejected stays.
const UF_EMPTY_ROWS = 120;
function ufEmptyRow(i) {
  const r = ufRow(i);
  if (i === 99) r.chosen = [];
  if (i === 103) r.rejected = [];
  if (i === 110) r.chosen = r.rejected = [];
  return r;
}

// conversational with a message-list prompt
function convRow(i) {
  return {
    prompt: [{ role: "system", content: `be brief ${i}` }, { role: "user", content: `hi ${i}` }],
    chosen: [{ role: "assistant", content: i === 3 ? null : `hello ${i}` }],
    rejected: [{ role: "assistant", content: `go away ${i}` }],
  };
}

// pre-tokenized
function tokRow(i) {
  return {
    prompt_input_ids: [1, i, i + 1],
    chosen_input_ids: i % 11 === 4 ? [] : [10 + i, 11 + i],
    rejected_input_ids: i === 6 ? null : [20 + i],
    ref_chosen_logps: -i / 4,
    ref_rejected_logps: -i / 8,
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

const stdCols = {
  prompt: "VARCHAR",
  chosen: "VARCHAR",
  rejected: "VARCHAR",
  margin: "DOUBLE",
  ref_chosen_logps: "DOUBLE",
  ref_rejected_logps: "FLOAT",
};
const msg = "STRUCT(role VARCHAR, content VARCHAR)[]";

await duck("duckdb_standard_snappy.parquet", range(5000, stdRow), stdCols,
  "COMPRESSION snappy, ROW_GROUP_SIZE 2048");
await duck("duckdb_standard_zstd_v2enc.parquet", range(5000, stdRow), stdCols,
  "COMPRESSION zstd, ROW_GROUP_SIZE 2048, PARQUET_VERSION V2, DICTIONARY_SIZE_LIMIT 0");
await duck("duckdb_hh.parquet", range(50, hhRow), { chosen: "VARCHAR", rejected: "VARCHAR" }, "COMPRESSION zstd");
await duck("duckdb_ultrafeedback.parquet", range(40, ufRow),
  { prompt: "VARCHAR", chosen: msg, rejected: msg, score_chosen: "DOUBLE", score_rejected: "DOUBLE" },
  "COMPRESSION snappy");
await duck("duckdb_ultrafeedback_empty.parquet", range(UF_EMPTY_ROWS, ufEmptyRow),
  { prompt: "VARCHAR", chosen: msg, rejected: msg, score_chosen: "DOUBLE", score_rejected: "DOUBLE" },
  "COMPRESSION snappy, ROW_GROUP_SIZE 2048");
await duck("duckdb_tokenized_int32.parquet", range(30, tokRow),
  { prompt_input_ids: "INTEGER[]", chosen_input_ids: "INTEGER[]", rejected_input_ids: "INTEGER[]",
    ref_chosen_logps: "DOUBLE", ref_rejected_logps: "DOUBLE" },
  "COMPRESSION zstd, PARQUET_VERSION V2");
await duck("duckdb_standard.jsonl", range(200, stdRow), stdCols, "");
await duck("duckdb_ultrafeedback.jsonl", range(40, ufRow),
  { prompt: "VARCHAR", chosen: msg, rejected: msg, score_chosen: "DOUBLE", score_rejected: "DOUBLE" }, "");

// ---- arrow-rs (parquet-wasm) ----

function props({ compression, dictionary, v2, rowGroup }) {
  let b = new pq.WriterPropertiesBuilder()
    .setCompression(compression)
    .setDictionaryEnabled(dictionary)
    .setWriterVersion(v2 ? pq.WriterVersion.V2 : pq.WriterVersion.V1)
    .setCreatedBy("parquet-wasm (arrow-rs) via ortalign gen.mjs");
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

function stdTable(n) {
  const rows = range(n, stdRow);
  return new arrow.Table({
    prompt: vec(rows, "prompt", utf8),
    chosen: vec(rows, "chosen", utf8),
    rejected: vec(rows, "rejected", utf8),
    margin: vec(rows, "margin", new arrow.Float64()),
    ref_chosen_logps: vec(rows, "ref_chosen_logps", new arrow.Float64()),
    ref_rejected_logps: vec(rows, "ref_rejected_logps", new arrow.Float32()),
  });
}

writeArrow("arrow_standard_zstd_v2_nodict.parquet", stdTable(300),
  props({ compression: pq.Compression.ZSTD, dictionary: false, v2: true, rowGroup: 64 }));
writeArrow("arrow_standard_snappy_dict.parquet", stdTable(300),
  props({ compression: pq.Compression.SNAPPY, dictionary: true, v2: false, rowGroup: 100 }));
writeArrow("arrow_standard_uncompressed.parquet", stdTable(120),
  props({ compression: pq.Compression.UNCOMPRESSED, dictionary: false, v2: false, rowGroup: 50 }));

{
  const rows = range(50, hhRow);
  writeArrow("arrow_hh.parquet", new arrow.Table({ chosen: vec(rows, "chosen", utf8), rejected: vec(rows, "rejected", utf8) }),
    props({ compression: pq.Compression.SNAPPY, dictionary: true, v2: false, rowGroup: 20 }));
}
{
  const rows = range(40, ufRow);
  writeArrow("arrow_ultrafeedback.parquet", new arrow.Table({
    prompt: vec(rows, "prompt", utf8),
    chosen: vec(rows, "chosen", msgList),
    rejected: vec(rows, "rejected", msgList),
    score_chosen: vec(rows, "score_chosen", new arrow.Float64()),
  }), props({ compression: pq.Compression.ZSTD, dictionary: true, v2: true, rowGroup: 16 }));
}
{
  const rows = range(UF_EMPTY_ROWS, ufEmptyRow);
  writeArrow("arrow_ultrafeedback_empty.parquet", new arrow.Table({
    prompt: vec(rows, "prompt", utf8),
    chosen: vec(rows, "chosen", msgList),
    rejected: vec(rows, "rejected", msgList),
  }), props({ compression: pq.Compression.ZSTD, dictionary: true, v2: true, rowGroup: 50 }));
}
{
  const rows = range(12, convRow);
  writeArrow("arrow_conversational.parquet", new arrow.Table({
    prompt: vec(rows, "prompt", msgList),
    chosen: vec(rows, "chosen", msgList),
    rejected: vec(rows, "rejected", msgList),
  }), props({ compression: pq.Compression.SNAPPY, dictionary: false, v2: false, rowGroup: 5 }));
}
{
  const rows = range(30, tokRow);
  const ids = new arrow.List(new arrow.Field("item", new arrow.Int64(), true));
  const big = (r, k) => (r[k] == null ? null : r[k].map(BigInt));
  const bigRows = rows.map((r) => ({
    prompt_input_ids: big(r, "prompt_input_ids"),
    chosen_input_ids: big(r, "chosen_input_ids"),
    rejected_input_ids: big(r, "rejected_input_ids"),
  }));
  writeArrow("arrow_tokenized_int64.parquet", new arrow.Table({
    prompt_input_ids: vec(bigRows, "prompt_input_ids", ids),
    chosen_input_ids: vec(bigRows, "chosen_input_ids", ids),
    rejected_input_ids: vec(bigRows, "rejected_input_ids", ids),
    ref_chosen_logps: vec(rows, "ref_chosen_logps", new arrow.Float64()),
    ref_rejected_logps: vec(rows, "ref_rejected_logps", new arrow.Float64()),
  }), props({ compression: pq.Compression.ZSTD, dictionary: false, v2: false, rowGroup: 8 }));
}

// Wrong type for a bad-input test: rejected is an integer.
await con.run(`COPY (SELECT 'p' || i AS prompt, 'c' || i AS chosen, i AS rejected FROM range(10) t(i))
               TO '${path.join(out, "bad_rejected_int.parquet")}' (FORMAT parquet)`);
// Missing rejected column.
await con.run(`COPY (SELECT 'p' || i AS prompt, 'c' || i AS chosen, 'x' AS answer FROM range(10) t(i))
               TO '${path.join(out, "bad_no_rejected.parquet")}' (FORMAT parquet)`);
// Mapped names: question / good / bad, and a DECIMAL(9,2) score for margin.
await con.run(`COPY (SELECT 'q' || i AS question, 'g' || i AS good, 'b' || i AS bad,
                            (i * 0.25)::DECIMAL(9,2) AS score FROM range(10) t(i))
               TO '${path.join(out, "duckdb_mapped.parquet")}' (FORMAT parquet)`);

fs.rmSync(tmp, { recursive: true });
