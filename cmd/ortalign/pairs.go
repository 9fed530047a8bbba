package main

import (
	"errors"
	"fmt"

	"github.com/spf13/pflag"

	"ortalign/data"
	"ortalign/pipeline/encode"
	"ortalign/tokenize"
)

// dataFlags are the dataset and encoding flags shared by score and the trainers.
type dataFlags struct {
	columns    string
	maxLength  int
	truncation string
	strict     bool
}

func addDataFlags(f *pflag.FlagSet, d *dataFlags) {
	f.StringVar(&d.columns, "columns", "", "column mapping, e.g. prompt=question,chosen=good,rejected=bad")
	f.IntVar(&d.maxLength, "max-length", 1024, "maximum tokens of prompt+completion (0 = no limit)")
	f.StringVar(&d.truncation, "truncation", tokenize.KeepStart, "how to cut sequences longer than --max-length: keep_start (cut the end) or keep_end")
	f.BoolVar(&d.strict, "strict", false, "fail on rows that cannot be used (null or empty values, completions with no token) instead of skipping them")
}

func (d *dataFlags) validate() error {
	if d.maxLength < 0 {
		return fmt.Errorf("--max-length must be >= 0, got %d", d.maxLength)
	}
	if d.truncation != tokenize.KeepStart && d.truncation != tokenize.KeepEnd {
		return fmt.Errorf("--truncation must be keep_start or keep_end, got %q", d.truncation)
	}
	if _, err := data.ParseColumns(d.columns); err != nil {
		return fmt.Errorf("--columns: %w", err)
	}
	return nil
}

// options checks the flags and loads the tokenizer (tokPath may be empty: pre-tokenized
// data needs none). The vocabulary and warning writer are set once the model is loaded.
func (d *dataFlags) options(tokPath string) (encode.DataOptions, error) {
	if err := d.validate(); err != nil {
		return encode.DataOptions{}, err
	}
	cols, _ := data.ParseColumns(d.columns)
	tok, err := loadTokenizer(tokPath)
	if err != nil {
		return encode.DataOptions{}, fmt.Errorf("--tokenizer: %w", err)
	}
	return encode.DataOptions{Columns: cols, MaxLength: d.maxLength, Truncation: d.truncation, Strict: d.strict, Tokenizer: tok}, nil
}

// flagHints adds to a library error the flag that addresses it: the library's errors
// name no flag.
func flagHints(err error) error {
	var row *data.RowError
	var missing *data.MissingColumnsError
	var noTok *encode.NeedsTokenizerError
	switch {
	case errors.As(err, &row):
		return fmt.Errorf("%w (--strict; without it such rows are skipped with a warning)", err)
	case errors.As(err, &missing):
		return fmt.Errorf("%w; map other names with --columns, e.g. --columns %s=NAME", err, missing.Fields[0])
	case errors.As(err, &noTok):
		return fmt.Errorf("%w: pass --tokenizer tokenizer.json", err)
	}
	return err
}

// loadTokenizer loads path, or returns nil when path is empty.
func loadTokenizer(path string) (*tokenize.Tokenizer, error) {
	if path == "" {
		return nil, nil
	}
	return tokenize.Load(path)
}

// padID is the id that fills right padding: the tokenizer's PAD, else its EOS, else 0
// (padded positions are masked out, so any id the model accepts will do).
func padID(tok *tokenize.Tokenizer) int64 {
	if tok == nil {
		return 0
	}
	if id, ok := tok.PAD(); ok {
		return int64(id)
	}
	if id, ok := tok.EOS(); ok {
		return int64(id)
	}
	return 0
}
