package encode

import (
	"context"
	"fmt"
	"io"

	"ortalign/data"
	"ortalign/tokenize"
)

// DataOptions say how a dataset file is read and encoded for a model.
type DataOptions struct {
	Columns    map[string]string // canonical field -> the file's column (data.ParseColumns)
	MaxLength  int               // 0 means no limit
	Truncation string            // tokenize.KeepStart or tokenize.KeepEnd
	Strict     bool              // unusable rows are errors instead of counted skips
	Tokenizer  *tokenize.Tokenizer
	Vocab      int64     // the model's vocabulary size (0: unchecked)
	Warn       io.Writer // skipped, dropped and mismatched rows are reported here (nil: nowhere)
}

func (o DataOptions) EncodeConfig(ds *data.Dataset) EncodeConfig {
	return EncodeConfig{MaxLength: o.MaxLength, Truncation: o.Truncation, Strict: o.Strict, Columns: ds.Columns}
}

// Loaded is a dataset read and encoded: the items, and what was left out.
type Loaded[T any] struct {
	Path     string
	Layout   data.Layout
	Examples []data.Example
	// Skipped are the rows left out, by the reader (null values; not in Examples) and by
	// the encoder (empty lists or completions, no completion token). One entry a row.
	Skipped []data.SkippedRow
	Items   []T
	Stats   EncodeStats
}

// OpenDataset opens a dataset for a use and checks, before any row is read, that the
// tokenizer can encode its layout (so a command fails before it loads a model).
func OpenDataset(path string, use data.Use, o DataOptions) (*data.Dataset, error) {
	ds, err := data.Open(path, data.Options{Columns: o.Columns, Use: use, Strict: o.Strict})
	if err != nil {
		return nil, err
	}
	if err := checkEncodable(ds, o.Tokenizer); err != nil {
		ds.Close()
		return nil, err
	}
	return ds, nil
}

// checkEncodable reports the dataset errors that are not about one row.
func checkEncodable(ds *data.Dataset, tok *tokenize.Tokenizer) error {
	if !ds.Layout.IsTokenized() && tok == nil {
		return &NeedsTokenizerError{Path: ds.Path, Layout: ds.Layout}
	}
	switch ds.Use {
	case data.UseSFT:
		return CheckSequencesEncodable(ds.Path, ds.Layout, tok)
	case data.UsePrompts:
		return CheckPromptsEncodable(ds.Path, ds.Layout, tok)
	}
	return CheckEncodable(ds.Path, ds.Layout, tok)
}

// NeedsTokenizerError is a text dataset opened without a tokenizer.
type NeedsTokenizerError struct {
	Path   string
	Layout data.Layout
}

func (e *NeedsTokenizerError) Error() string {
	return fmt.Sprintf("%s: the %s layout holds text; a tokenizer is needed", e.Path, e.Layout)
}

// ReadShard reads the row groups g of ds with g mod shards == shard (all when shards is 1).
func ReadShard(ds *data.Dataset, shard, shards int) ([]data.Example, []data.SkippedRow, error) {
	return ReadShardContext(context.Background(), ds, shard, shards)
}

// ReadShardContext is ReadShard stopping, with ctx's error, between row groups when ctx
// is done.
func ReadShardContext(ctx context.Context, ds *data.Dataset, shard, shards int) ([]data.Example, []data.SkippedRow, error) {
	if shards <= 1 {
		shard, shards = 0, 1
	}
	var ex []data.Example
	var skipped []data.SkippedRow
	for g := shard; g < ds.NumRowGroups(); g += shards {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		e, s, err := ds.ReadRowGroup(g)
		if err != nil {
			return nil, nil, err
		}
		ex, skipped = append(ex, e...), append(skipped, s...)
	}
	return ex, skipped, nil
}

// LoadPairs reads and encodes a preference dataset.
func LoadPairs(path string, o DataOptions) (*Loaded[EncodedPair], error) {
	return LoadPairsContext(context.Background(), path, o)
}

// LoadPairsContext is LoadPairs stopping, with ctx's error, when ctx is done: between
// row groups, between rows and inside a chat template's rendering.
func LoadPairsContext(ctx context.Context, path string, o DataOptions) (*Loaded[EncodedPair], error) {
	return loadContext(ctx, path, data.UsePreference, o, func(ds *data.Dataset, ex []data.Example) ([]EncodedPair, EncodeStats, error) {
		return EncodePairsContext(ctx, ds.Path, ds.Layout, ex, o.Tokenizer, o.EncodeConfig(ds), o.Vocab)
	})
}

// LoadSequences reads and encodes a dataset for supervised fine-tuning (prompt–completion,
// messages, text, or the chosen side of preference pairs).
func LoadSequences(path string, o DataOptions) (*Loaded[EncodedSequence], error) {
	return LoadSequencesContext(context.Background(), path, o)
}

// LoadSequencesContext is LoadSequences stopping, with ctx's error, when ctx is done (see
// LoadPairsContext).
func LoadSequencesContext(ctx context.Context, path string, o DataOptions) (*Loaded[EncodedSequence], error) {
	return loadContext(ctx, path, data.UseSFT, o, func(ds *data.Dataset, ex []data.Example) ([]EncodedSequence, EncodeStats, error) {
		return EncodeSequencesContext(ctx, ds.Path, ds.Layout, ex, o.Tokenizer, o.EncodeConfig(ds), o.Vocab)
	})
}

// LoadPrompts reads and encodes the prompts of any dataset that has them.
func LoadPrompts(path string, o DataOptions) (*Loaded[EncodedPrompt], error) {
	return LoadPromptsContext(context.Background(), path, o)
}

// LoadPromptsContext is LoadPrompts stopping, with ctx's error, when ctx is done (see
// LoadPairsContext).
func LoadPromptsContext(ctx context.Context, path string, o DataOptions) (*Loaded[EncodedPrompt], error) {
	return loadContext(ctx, path, data.UsePrompts, o, func(ds *data.Dataset, ex []data.Example) ([]EncodedPrompt, EncodeStats, error) {
		return EncodePromptsContext(ctx, ds.Path, ds.Layout, ex, o.Tokenizer, o.EncodeConfig(ds), o.Vocab)
	})
}

func load[T any](path string, use data.Use, o DataOptions, encode func(*data.Dataset, []data.Example) ([]T, EncodeStats, error)) (*Loaded[T], error) {
	return loadContext(context.Background(), path, use, o, encode)
}

// loadContext opens, reads (checking ctx between row groups) and encodes the dataset at
// path.
func loadContext[T any](ctx context.Context, path string, use data.Use, o DataOptions, encode func(*data.Dataset, []data.Example) ([]T, EncodeStats, error)) (*Loaded[T], error) {
	ds, err := OpenDataset(path, use, o)
	if err != nil {
		return nil, err
	}
	defer ds.Close()
	ex, skipped, err := ReadShardContext(ctx, ds, 0, 1)
	if err != nil {
		return nil, err
	}
	return Encode(ds, ex, skipped, o, encode)
}

// Encode encodes examples read from ds (a whole file or one window of it), reports the
// rows left out to o.Warn, and returns them with the items.
func Encode[T any](ds *data.Dataset, ex []data.Example, skipped []data.SkippedRow, o DataOptions, encode func(*data.Dataset, []data.Example) ([]T, EncodeStats, error)) (*Loaded[T], error) {
	if err := CheckTokenizerFits(o.Tokenizer, o.Vocab); err != nil {
		return nil, err
	}
	l := &Loaded[T]{Path: ds.Path, Layout: ds.Layout, Examples: ex}
	var err error
	if l.Items, l.Stats, err = encode(ds, ex); err != nil {
		return nil, err
	}
	l.Skipped = append(append(l.Skipped, skipped...), l.Stats.Skipped...)
	if o.Warn != nil {
		for _, s := range l.Skipped {
			fmt.Fprintf(o.Warn, "warning: %s: skipped %s\n", ds.Path, s)
		}
		if n := l.Stats.BoundaryMismatches; n > 0 {
			fmt.Fprintf(o.Warn, "warning: %s: %d rows: the prompt's tokens are not a prefix of prompt+completion's tokens (the boundary was kept at the prompt's length, as TRL does)\n", ds.Path, n)
		}
		for _, r := range l.Stats.DroppedRows {
			fmt.Fprintf(o.Warn, "warning: %s: row %d: nothing left to learn within the maximum length %d; dropped\n", ds.Path, r, o.MaxLength)
		}
	}
	return l, nil
}

// EncodePairsOf is the encoder LoadPairs uses, for callers that read a file in windows.
func EncodePairsOf(o DataOptions) func(*data.Dataset, []data.Example) ([]EncodedPair, EncodeStats, error) {
	return func(ds *data.Dataset, ex []data.Example) ([]EncodedPair, EncodeStats, error) {
		return EncodePairs(ds.Path, ds.Layout, ex, o.Tokenizer, o.EncodeConfig(ds), o.Vocab)
	}
}
