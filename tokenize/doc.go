// Package tokenize owns the project's implementation of HuggingFace tokenizer.json files,
// held to exact id equality with HuggingFace's own (Rust) tokenizers library.
//
// It covers byte-level BPE (GPT-2, Llama-3, Qwen2/3, GPT-4o style), SentencePiece-style BPE
// with byte fallback (Llama-2, Mistral, Gemma), WordPiece (BERT) and Unigram (T5): the
// normalizers, pre-tokenizers, models, added tokens, post-processors and decoders that those
// files use. It also finds the special tokens (BOS, EOS, PAD) from tokenizer_config.json or
// special_tokens_map.json beside the file, and encodes (prompt, completion) pairs the way
// TRL v1.x does for preference training and scoring (see EncodePromptCompletion).
//
// Chat templates: Load also reads the model's chat template (chat_template.jinja, or the
// chat_template entry of tokenizer_config.json) and ApplyChatTemplate renders conversations
// with it as transformers' apply_chat_template does, through github.com/ardanlabs/jinja;
// chat_test.go holds the renderings to Python's Jinja2 on real models' templates
// (testdata/chat). EncodeConversation encodes conversational (prompt, completion) messages
// the way TRL v1.x's DPOTrainer does. Templates come with downloaded models and render in a
// sandbox (sandbox.go, sandbox_rewrite.go): the source is rewritten so that the engine calls
// guards that cap range() as jinja2's sandbox does, bound the output, the size of what the
// template builds, its work and its recursion, and stop on a cancelled context; the
// *Context variants take that context.
//
// The pipeline of one Encode call follows HuggingFace's:
//
//  1. added tokens are matched leftmost-longest on the raw text (those flagged
//     normalized=false), the remaining pieces are normalized, then the added tokens flagged
//     normalized=true are matched on the normalized pieces;
//  2. the pre-tokenizer splits every remaining piece into words;
//  3. the model (BPE, WordPiece, Unigram) turns each word into ids;
//  4. the post-processor adds special tokens when asked to.
//
// Nothing of github.com/sugarme/tokenizer is used: measured against HuggingFace it panics on
// the Llama-3, Qwen3 and GPT-4o files and gives wrong ids on many strings of the others.
// The fidelity test (fidelity_test.go) compares ids and decodes with HuggingFace's Rust library
// on real tokenizer.json files; testdata/gen_reference.mjs writes the expected outputs.
//
// A Tokenizer is safe for concurrent use. Bad files give one-line errors that name the file
// and the part, never a panic.
package tokenize
