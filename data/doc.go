// Package data reads and writes preference datasets: Parquet files (as written
// by pyarrow, TRL / HuggingFace datasets, DuckDB, arrow-rs or Spark) and JSON
// Lines files.
//
// # Layouts
//
// The layout of a dataset is detected from its schema (Parquet) or from the
// keys of its first record (JSONL), using TRL's column names:
//
//   - [Standard]: prompt, chosen and rejected are strings.
//   - [ImplicitPrompt]: only chosen and rejected, strings that both start
//     with the prompt (Anthropic HH-RLHF). See [SplitImplicitPrompt] for the
//     rule that recovers the prompt.
//   - [Conversational]: chosen and rejected are lists of {role, content}
//     structs; prompt is a list of messages, a plain string, or absent
//     (UltraFeedback-binarized). See [SplitConversation].
//   - [Tokenized]: prompt_input_ids, chosen_input_ids and rejected_input_ids
//     are lists of integers (int32 or int64); no tokenizer is needed.
//
// The optional columns margin, ref_chosen_logps and ref_rejected_logps
// (float64, float32, integers or INT32/INT64 decimals) are read into
// [Example.Margin], [Example.RefChosenLogps] and [Example.RefRejectedLogps]
// when present. Other names are mapped with [Options.Columns].
//
// # Robustness
//
// parquet-go's typed readers silently read zero values for missing columns,
// type mismatches and list elements named "item" (arrow-rs, pyarrow) instead
// of "element", and can panic on damaged files. This package therefore
// checks the file's framing and footer itself, validates the schema against
// the detected layout before any data is read, decodes columns generically
// from their repetition and definition levels (so every list naming works),
// checks page headers against the column chunk bounds before decoding, and
// turns any decoder panic into an error naming the file and row group.
// Every error is one line naming the file and, where it applies, the column,
// row group or row.
//
// Rows whose prompt, chosen or rejected value is null (or contains a null
// message or token id) are skipped and reported to the caller as
// [SkippedRow]s, or are a [*RowError] with [Options.Strict]. Empty strings
// and empty lists are read as they are; encoders that cannot use them report
// them with the same [SkippedRow] type (see the Reason constants). Error
// messages name no command-line flag: commands add their own.
//
// # Writing
//
// [Create] writes scoring output, one row per call, to a .parquet or .jsonl
// file chosen by extension. Output is atomic: rows go to a temporary file in
// the destination directory that is renamed into place by [Writer.Close] and
// removed on any error or by [Writer.Abort], so no partial output remains.
// A Parquet output holding prompt, chosen and rejected is itself a valid
// input to [Open].
package data
