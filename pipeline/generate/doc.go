// Package generate samples completions from a causal LM with a KV cache (the export's
// own; GroupQueryAttention's, written in place; or one derived from a plain export, its
// attention rewritten into GroupQueryAttention, else concatenating pasts), rows decoded in
// slots that the next rows take over, with Hugging Face's warpers, seeded per row, and
// finish reasons.
package generate
