// Package data reads and writes datasets for preference training, supervised
// fine-tuning and generation: Parquet files (as written by pyarrow, TRL /
// HuggingFace datasets, DuckDB, arrow-rs or Spark) and JSON Lines files.
//
// # Layouts
//
// The layout of a dataset is detected from its schema (Parquet) or from the
// keys of its records (JSONL: each key's type comes from its first non-null
// value), using TRL's column names, among the layouts that the caller's use
// ([Options.Use]) accepts. Preference layouts:
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
// when present (preference use only).
//
// Supervised fine-tuning and prompt layouts:
//
//   - [PromptCompletion]: prompt and completion are strings.
//   - [ConversationalPromptCompletion]: prompt and completion are lists of
//     {role, content} messages.
//   - [TokenizedPromptCompletion]: prompt_input_ids and completion_input_ids
//     are lists of integers.
//   - [LanguageModeling]: text is a string (learnt whole).
//   - [ConversationalLanguageModeling]: messages is a list of messages (the
//     assistant turns are learnt).
//   - [PromptOnly], [ConversationalPromptOnly], [TokenizedPromptOnly]: prompt
//     is a string or a list of messages, or prompt_input_ids a list of ids.
//
// Other names are mapped with [Options.Columns], for every field.
//
// # Uses
//
// [Options.Use] says what the caller needs; detection then looks only at the
// fields that use reads, and reads only the columns the chosen layout needs:
//
//   - [UsePreference] (the zero value): the four preference layouts, exactly
//     as above; a file without chosen and rejected (or their ids) is a
//     [*MissingColumnsError].
//   - [UseSFT]: by the first column present, in this order:
//     completion_input_ids (with prompt_input_ids), chosen_input_ids (with
//     prompt_input_ids: the chosen side of a pre-tokenized preference file),
//     messages, completion (with a prompt of the same type), text, chosen (a
//     preference file's chosen side, in its preference layout). rejected is
//     then required only where the prompt is recovered from what chosen and
//     rejected share (ImplicitPrompt; Conversational without a message-list
//     prompt); elsewhere it is read when present and may be null.
//   - [UsePrompts]: prompt_input_ids; else prompt (the layout names the
//     file's shape: PromptOnly, PromptCompletion, Standard, Conversational, or
//     their conversational forms, and only prompt is read, except for a
//     string prompt beside chosen and rejected message lists, whose prompt
//     messages are what the two share); else chosen and rejected, whose
//     shared start is the prompt (ImplicitPrompt, Conversational).
//   - [UseUnpaired] (KTO): with a label column (a boolean; true: desirable),
//     prompt_input_ids and completion_input_ids, else prompt and completion
//     (strings or message lists): a prompt-completion layout whose label is
//     required ([Example.Label]); without one, a preference dataset as
//     [UsePreference] reads it, which [Unpair] turns into labelled rows.
//
// A file with none of the columns a use reads is a [*MissingColumnsError]
// whose message lists the column sets accepted and the file's columns. A
// column whose type fits no field is an error when the chosen layout reads
// it, and ignored otherwise.
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
// Rows whose required value (prompt, chosen, rejected, completion, text,
// messages or their ids, as the layout and use need) is null (or contains a
// null message or token id) are skipped and reported to the caller as
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
