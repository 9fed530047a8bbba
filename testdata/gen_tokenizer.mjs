// Trains the small GPT-2 style byte-level BPE tokenizer with HuggingFace's Rust
// `tokenizers` library (npm package `tokenizers`, a NAPI binding of the Rust crate),
// and writes the reference encodings of a set of test strings.
//
//   node testdata/gen_tokenizer.mjs          (after testdata/gen_dataset.py; see README)
//
// Writes testdata/tokenizer/{tokenizer.json, tokenizer_config.json, expected_ids.jsonl}.
//
// How: the npm binding exposes `Tokenizer.train(files)` with the model's default
// BpeTrainer only (no options), so it learns ALL merges of the corpus. BPE training is
// greedy, one merge at a time, so the first K merges are exactly what a trainer
// limited by vocab_size would have produced. We keep the merges that create the first
// 254 new tokens, build the vocab as GPT-2 does (the 256 byte symbols in GPT-2's
// bytes_to_unicode order, then the merged tokens in merge order, then the special
// tokens), and let the Rust library load and re-serialise the file (its canonical
// format). Every expected id in expected_ids.jsonl comes from the Rust library.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { require, testdataDir } from './nodemods.mjs';

const { Tokenizer, BPE, byteLevelPreTokenizer } = require('tokenizers');

const VOCAB_SIZE = 512;
const SPECIALS = ['<|endoftext|>', '<|pad|>'];
const outDir = path.join(testdataDir, 'tokenizer');
fs.mkdirSync(outDir, { recursive: true });

// ---- training corpus: the train split of the dataset + a little generic English ----
const GENERIC = `
The quick brown fox jumps over the lazy dog. She said that it's the best day of the year.
We don't know where they're going, but I'll wait here until they've come back.
In the morning the train was late, and the station was full of people with their bags.
Numbers like 12, 345 and 2024 appear in text; so do dates such as 1999-12-31.
He wrote a short note: "Meet me at the park at 7 pm." Then he left the room.
This is a small corpus for a small tokenizer, used only in tests of a Go program.
def main():\n    print("hello, world")\n    return 0
The model reads the prompt and then writes the answer, one token after another.
`;
const trainRows = fs.readFileSync(path.join(testdataDir, 'data', 'train.jsonl'), 'utf8')
  .split('\n').filter(Boolean).map((l) => JSON.parse(l));
const corpusLines = [];
for (const r of trainRows) corpusLines.push(r.prompt + r.chosen, r.prompt + r.rejected);
corpusLines.push(GENERIC);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ortalign-tok-'));
const corpusPath = path.join(tmp, 'corpus.txt');
fs.writeFileSync(corpusPath, corpusLines.join('\n') + '\n');

const trainer = new Tokenizer(BPE.empty());
trainer.setPreTokenizer(byteLevelPreTokenizer(false, true));
trainer.train([corpusPath]);
const rawPath = path.join(tmp, 'trained.json');
trainer.save(rawPath, false);
const trained = JSON.parse(fs.readFileSync(rawPath, 'utf8'));
const allMerges = trained.model.merges.map((m) => (Array.isArray(m) ? m : m.split(' ')));

// ---- GPT-2 byte symbols ----
function bytesToUnicode() {
  const bs = [];
  for (let i = 0x21; i <= 0x7e; i++) bs.push(i);
  for (let i = 0xa1; i <= 0xac; i++) bs.push(i);
  for (let i = 0xae; i <= 0xff; i++) bs.push(i);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) { bs.push(b); cs.push(256 + n); n++; }
  }
  return bs.map((b, i) => [b, String.fromCodePoint(cs[i])]);
}

const vocab = {};
let next = 0;
for (const [, ch] of bytesToUnicode()) vocab[ch] = next++;
const nMergedTokens = VOCAB_SIZE - 256 - SPECIALS.length;
const merges = [];
for (const [a, b] of allMerges) {
  if (next >= 256 + nMergedTokens) break;
  if (!(a in vocab) || !(b in vocab)) throw new Error(`merge ${a} ${b} uses unknown symbol`);
  merges.push([a, b]);
  if (!((a + b) in vocab)) vocab[a + b] = next++;
}
if (next !== 256 + nMergedTokens) throw new Error(`corpus too small: only ${next - 256} merged tokens`);
const specialIds = {};
for (const s of SPECIALS) { specialIds[s] = next; vocab[s] = next++; }

const spec = {
  version: '1.0',
  truncation: null,
  padding: null,
  added_tokens: SPECIALS.map((s) => ({
    id: specialIds[s], content: s, single_word: false, lstrip: false, rstrip: false,
    normalized: false, special: true,
  })),
  normalizer: null,
  pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
  post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
  decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
  model: {
    type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '',
    end_of_word_suffix: '', fuse_unk: false, byte_fallback: false, ignore_merges: false,
    vocab, merges,
  },
};

// Let the Rust library parse it and write its own canonical serialisation.
const tok = Tokenizer.fromString(JSON.stringify(spec));
const tokPath = path.join(outDir, 'tokenizer.json');
tok.save(tokPath, true);
const reloaded = Tokenizer.fromFile(tokPath);
const vs = reloaded.getVocabSize(true);
if (vs !== VOCAB_SIZE) throw new Error(`vocab size ${vs}`);
for (const s of SPECIALS) if (reloaded.tokenToId(s) !== specialIds[s]) throw new Error(`id of ${s}`);

const addedDecoder = {};
for (const s of SPECIALS) {
  addedDecoder[String(specialIds[s])] = {
    content: s, lstrip: false, normalized: false, rstrip: false, single_word: false, special: true,
  };
}
const config = {
  add_bos_token: false,
  add_prefix_space: false,
  added_tokens_decoder: addedDecoder,
  bos_token: '<|endoftext|>',
  clean_up_tokenization_spaces: false,
  eos_token: '<|endoftext|>',
  errors: 'replace',
  model_max_length: 128,
  pad_token: '<|pad|>',
  tokenizer_class: 'GPT2Tokenizer',
  unk_token: '<|endoftext|>',
};
fs.writeFileSync(path.join(outDir, 'tokenizer_config.json'), JSON.stringify(config, null, 2) + '\n');

// ---- reference encodings ----
const testRows = fs.readFileSync(path.join(testdataDir, 'data', 'test.jsonl'), 'utf8')
  .split('\n').filter(Boolean).map((l) => JSON.parse(l));
const uni = trainRows.find((r) => /[^\x00-\x7f]/.test(r.prompt));
const texts = [
  trainRows[0].prompt, trainRows[0].chosen, trainRows[0].rejected,
  trainRows[1].prompt + trainRows[1].chosen,
  trainRows[2].prompt + trainRows[2].rejected,
  uni.prompt, uni.prompt + uni.chosen,
  testRows[0].prompt, testRows[0].chosen + '<|endoftext|>',
  '',
  ' ',
  'hello world',
  ' hello  world   ',
  'a\n\nb\n \n  c\t\td',
  '   leading and trailing spaces   ',
  'line one\r\nline two\r\n',
  "I'm sure they're fine, don't worry; we'll see. It's OK, I've said THEY'RE here.",
  'Numbers: 0 7 42 3.14159 1,000,000 2024-01-31 x86_64',
  'Symbols: !@#$%^&*()_+-=[]{}|;:\'",.<>/?`~ \\ end',
  'café naïve jalapeño Zürich crème brûlée',
  '日本語のテキストと寿司',
  'Emoji: 🙂👍🏽 👩‍💻 and flags 🇫🇷',
  'Привет, мир! Γειά σου κόσμε. مرحبا بالعالم',
  'e\u0301 vs \u00e9 (combining accent vs precomposed)',
  '<|endoftext|>',
  '<|pad|>',
  'before<|endoftext|>after <|pad|><|pad|> end',
  'Review: the movie was great.\nSentiment: <|endoftext|>',
  '<|endoftext |> and <|unknown|> are not special',
  'tab\tseparated\tvalues\n',
  'x'.repeat(40) + ' ' + 'ab'.repeat(20),
];
const lines = [];
for (const text of texts) {
  const enc = await reloaded.encode(text, null, { addSpecialTokens: false });
  const enc2 = await reloaded.encode(text);
  const ids = enc.getIds();
  if (JSON.stringify(ids) !== JSON.stringify(enc2.getIds())) throw new Error('post-processor added ids');
  lines.push(JSON.stringify({
    text,
    ids,
    tokens: enc.getTokens(),
    decoded: await reloaded.decode(ids, false),
    decoded_skip_special: await reloaded.decode(ids, true),
  }));
}
fs.writeFileSync(path.join(outDir, 'expected_ids.jsonl'), lines.join('\n') + '\n');
fs.rmSync(tmp, { recursive: true, force: true });
console.log(JSON.stringify({
  vocab_size: vs, merges: merges.length, merges_learned_total: allMerges.length, special_ids: specialIds,
  expected_strings: texts.length,
}));
