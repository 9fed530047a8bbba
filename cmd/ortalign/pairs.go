package main

import (
	"errors"
	"fmt"
	"io"

	"ortalign/data"
	"ortalign/pipeline"
	"ortalign/tokenize"
)

// dataFlags are the dataset and encoding flags shared by score and the trainers.
type dataFlags struct {
	columns    string
	maxLength  int
	truncation string
	strict     bool
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

// loadedPairs is a dataset read and encoded for a model.
type loadedPairs struct {
	layout   data.Layout
	examples []data.Example
	// skipped are the rows left out: by the reader (null values; not in examples) and by
	// the encoder (empty lists or completions, no completion token; in examples, not in
	// pairs). One entry a row.
	skipped []data.SkippedRow
	pairs   []pipeline.EncodedPair
	stats   pipeline.EncodeStats
}

// openDataset opens a dataset with the --columns and --strict flags. The library's errors
// name no flag; this adds the flag names.
func openDataset(path string, d dataFlags) (*data.Dataset, error) {
	cols, err := data.ParseColumns(d.columns)
	if err != nil {
		return nil, fmt.Errorf("--columns: %w", err)
	}
	ds, err := data.Open(path, data.Options{Columns: cols, Strict: d.strict})
	var missing *data.MissingColumnsError
	if errors.As(err, &missing) {
		return nil, fmt.Errorf("%w; map other names with --columns, e.g. --columns %s=NAME", err, missing.Fields[0])
	}
	return ds, err
}

// checkEncodable returns the dataset errors that are not about one row (a text layout
// without --tokenizer, no chat template, no EOS token), so a command can report them
// before it loads a model.
func checkEncodable(ds *data.Dataset, tok *tokenize.Tokenizer) error {
	if ds.Layout != data.Tokenized && tok == nil {
		return fmt.Errorf("%s: the %s layout holds text; pass --tokenizer tokenizer.json", ds.Path, ds.Layout)
	}
	return pipeline.CheckEncodable(ds.Path, ds.Layout, tok)
}

// strictHint adds the --strict flag to the error of a row that --strict refused.
func strictHint(err error) error {
	var re *data.RowError
	if errors.As(err, &re) {
		return fmt.Errorf("%w (--strict; without it such rows are skipped with a warning)", err)
	}
	return err
}

// loadPairs opens a dataset, reads the given row groups (all when shards == 1), and
// encodes the pairs for a model of vocabulary vocab (see encodeExamples).
func loadPairs(path string, d dataFlags, tok *tokenize.Tokenizer, tokPath string, vocab int64, shard, shards int, stderr io.Writer) (*loadedPairs, error) {
	ds, err := openDataset(path, d)
	if err != nil {
		return nil, err
	}
	defer ds.Close()
	if err := checkEncodable(ds, tok); err != nil {
		return nil, err
	}
	ex, skipped, err := readShard(ds, shard, shards)
	if err != nil {
		return nil, strictHint(err)
	}
	return encodeExamples(ds, ex, skipped, d, tok, tokPath, vocab, stderr)
}

// encodeExamples encodes a dataset's examples for a model of vocabulary vocab. It warns on
// stderr about each skipped row (the reader's, then the encoder's), boundary mismatches
// and dropped rows; lp.skipped holds both kinds of skipped rows.
func encodeExamples(ds *data.Dataset, ex []data.Example, skipped []data.SkippedRow, d dataFlags, tok *tokenize.Tokenizer, tokPath string, vocab int64, stderr io.Writer) (*loadedPairs, error) {
	path := ds.Path
	lp := &loadedPairs{layout: ds.Layout, examples: ex}
	if err := pipeline.CheckTokenizerFits(tok, vocab); err != nil {
		return nil, fmt.Errorf("--tokenizer %s: %w", tokPath, err)
	}
	if err := checkEncodable(ds, tok); err != nil {
		return nil, err
	}
	cfg := pipeline.EncodeConfig{MaxLength: d.maxLength, Truncation: d.truncation, Strict: d.strict, Columns: ds.Columns}
	var err error
	lp.pairs, lp.stats, err = pipeline.EncodePairs(path, ds.Layout, ex, tok, cfg, vocab)
	if err != nil {
		return nil, strictHint(err)
	}
	lp.skipped = append(append(lp.skipped, skipped...), lp.stats.Skipped...)
	for _, s := range lp.skipped {
		fmt.Fprintf(stderr, "warning: %s: skipped %s\n", path, s)
	}
	if n := lp.stats.BoundaryMismatches; n > 0 {
		fmt.Fprintf(stderr, "warning: %s: %d pairs: the prompt's tokens are not a prefix of prompt+completion's tokens (the boundary was kept at the prompt's length, as TRL does)\n", path, n)
	}
	for _, r := range lp.stats.DroppedRows {
		fmt.Fprintf(stderr, "warning: %s: row %d: prompt alone fills --max-length %d; dropped\n", path, r, d.maxLength)
	}
	return lp, nil
}

// readShard reads the examples of one shard (all of them when shards == 1).
func readShard(d *data.Dataset, shard, shards int) ([]data.Example, []data.SkippedRow, error) {
	if shards == 1 {
		return d.ReadAll()
	}
	var ex []data.Example
	var skipped []data.SkippedRow
	for g := shard; g < d.NumRowGroups(); g += shards {
		e, s, err := d.ReadRowGroup(g)
		if err != nil {
			return nil, nil, err
		}
		ex, skipped = append(ex, e...), append(skipped, s...)
	}
	return ex, skipped, nil
}

// loadTokenizer loads path, or returns nil when path is empty.
func loadTokenizer(path string) (*tokenize.Tokenizer, error) {
	if path == "" {
		return nil, nil
	}
	return tokenize.Load(path)
}

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

func addDataFlags(f interface {
	StringVar(*string, string, string, string)
	IntVar(*int, string, int, string)
	BoolVar(*bool, string, bool, string)
}, d *dataFlags) {
	f.StringVar(&d.columns, "columns", "", "column mapping, e.g. prompt=question,chosen=good,rejected=bad")
	f.IntVar(&d.maxLength, "max-length", 1024, "maximum tokens of prompt+completion (0 = no limit)")
	f.StringVar(&d.truncation, "truncation", "keep_end", "how to truncate long sequences: keep_start or keep_end")
	f.BoolVar(&d.strict, "strict", false, "fail on rows that cannot be used (null or empty values, completions with no token) instead of skipping them")
}
