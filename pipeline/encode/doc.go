// Package encode turns dataset rows into model items: preference pairs, SFT sequences
// and prompts, through the tokenizer and its chat template, with truncation, vocabulary
// checks and the counts of skipped and dropped rows.
package encode
