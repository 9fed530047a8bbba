// Package generate samples completions from a causal LM with a KV cache (the export's
// own, or a cached decoding graph derived from a plain export), with Hugging Face's
// warpers, seeded per row, and finish reasons.
package generate
