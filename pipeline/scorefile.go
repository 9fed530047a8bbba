package pipeline

import (
	"context"
	"fmt"
	"sort"

	"ortalign/data"
)

// ScoreFileConfig configures ScoreFile.
type ScoreFileConfig struct {
	Out         string // output file, .parquet or .jsonl (written atomically)
	Data        DataOptions
	Policy, Ref *LogProbModel // Ref may be nil: then ref_*_logps columns, if the file has them
	Beta        float64
	BatchSize   int
	// Shard and Shards pick the row groups g with g mod Shards == Shard (Shards 0 or 1:
	// all), so a batch system can fan a file out over workers.
	Shard, Shards int
	Progress      *Progress // advanced per pair; started and ended here
}

// ScoreFileSummary is a scored file's summary.
type ScoreFileSummary struct {
	ScoreSummary
	Layout                      data.Layout
	Skipped, Dropped, Truncated int
}

// ScoreWindow is about how many rows ScoreFile reads, encodes and scores at a time.
var ScoreWindow = 8192

// ScoreFile scores every pair of ds and writes one output row per input row, in file
// order: the input's own columns, then the scores (null where a row was skipped or
// dropped). The file is streamed a window of row groups at a time, so memory stays
// bounded; within a window, pairs are batched by length.
func ScoreFile(ctx context.Context, ds *data.Dataset, c ScoreFileConfig) (ScoreFileSummary, error) {
	shards := max(1, c.Shards)
	sum := ScoreFileSummary{Layout: ds.Layout}
	hasRef := c.Ref != nil || (ds.HasField(data.FieldRefChosenLogps) && ds.HasField(data.FieldRefRejectedLogps))
	w, err := newScoreWriter(c.Out, ds.Layout, hasRef)
	if err != nil {
		return sum, err
	}
	defer w.abort()
	c.Progress.Start(int(ds.NumRows) / shards)
	var groups []int
	for g := c.Shard; g < ds.NumRowGroups(); g += shards {
		groups = append(groups, g)
	}
	encode := EncodePairsOf(c.Data)
	for len(groups) > 0 {
		var ex []data.Example
		var skip []data.SkippedRow
		for len(groups) > 0 && len(ex) < ScoreWindow {
			e, s, err := ds.ReadRowGroup(groups[0])
			if err != nil {
				return sum, err
			}
			ex, skip, groups = append(ex, e...), append(skip, s...), groups[1:]
		}
		lp, err := Encode(ds, ex, skip, c.Data, encode)
		if err != nil {
			return sum, err
		}
		scores, part, err := ScorePairs(ctx, c.Policy, c.Ref, lp.Items, ScoreConfig{Beta: c.Beta, BatchSize: c.BatchSize, Progress: c.Progress})
		if err != nil {
			return sum, err
		}
		if err := w.write(lp, scores); err != nil {
			return sum, err
		}
		sum.Merge(part)
		sum.Skipped, sum.Dropped, sum.Truncated = sum.Skipped+len(lp.Skipped), sum.Dropped+lp.Stats.Dropped, sum.Truncated+lp.Stats.Truncated
	}
	c.Progress.Done()
	if err := w.close(); err != nil {
		return sum, err
	}
	sum.HasRef = sum.HasRef && hasRef
	return sum, nil
}

// scoreWriter writes score's output: one row per input row, in file order, with the
// input's own columns, then the scores (null where a row was skipped or dropped, and
// reference columns null where a pair had no reference).
type scoreWriter struct {
	path   string
	layout data.Layout
	hasRef bool
	ncols  int
	w      *data.Writer
}

func newScoreWriter(path string, layout data.Layout, hasRef bool) (*scoreWriter, error) {
	var cols []data.Column
	switch layout {
	case data.Tokenized:
		cols = []data.Column{{Name: "prompt_input_ids", Kind: data.Int64List}, {Name: "chosen_input_ids", Kind: data.Int64List}, {Name: "rejected_input_ids", Kind: data.Int64List}}
	case data.Conversational:
		cols = []data.Column{{Name: "prompt", Kind: data.Messages}, {Name: "chosen", Kind: data.Messages}, {Name: "rejected", Kind: data.Messages}}
	default:
		cols = []data.Column{{Name: "prompt", Kind: data.String}, {Name: "chosen", Kind: data.String}, {Name: "rejected", Kind: data.String}}
	}
	cols = append(cols,
		data.Column{Name: "chosen_logps", Kind: data.Float64}, data.Column{Name: "rejected_logps", Kind: data.Float64},
		data.Column{Name: "chosen_tokens", Kind: data.Int64}, data.Column{Name: "rejected_tokens", Kind: data.Int64})
	if hasRef {
		for _, n := range []string{"ref_chosen_logps", "ref_rejected_logps", "rewards_chosen", "rewards_rejected", "margin"} {
			cols = append(cols, data.Column{Name: n, Kind: data.Float64})
		}
	}
	w, err := data.Create(path, cols)
	if err != nil {
		return nil, err
	}
	return &scoreWriter{path: path, layout: layout, hasRef: hasRef, ncols: len(cols), w: w}, nil
}

// write appends the rows of one window in row order: its examples (with scores where they
// were encoded and scored, null scores where the encoder skipped or dropped them) and the
// rows the reader skipped (null values, written as nulls).
func (sw *scoreWriter) write(lp *Loaded[EncodedPair], scores []PairScore) error {
	byRow := map[int64]int{} // file row -> index in scores
	for i, p := range lp.Items {
		byRow[p.Row] = i
	}
	type outRow struct {
		row int64
		ex  *data.Example
	}
	rows := make([]outRow, 0, len(lp.Examples)+len(lp.Skipped))
	seen := map[int64]bool{}
	for i := range lp.Examples {
		rows = append(rows, outRow{row: lp.Examples[i].Row, ex: &lp.Examples[i]})
		seen[lp.Examples[i].Row] = true
	}
	for _, s := range lp.Skipped {
		if !seen[s.Row] {
			seen[s.Row] = true
			rows = append(rows, outRow{row: s.Row})
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].row < rows[j].row })
	for _, r := range rows {
		var vals []any
		switch {
		case r.ex == nil:
			vals = append(vals, nil, nil, nil)
		case sw.layout == data.Tokenized:
			vals = append(vals, r.ex.PromptIDs, r.ex.ChosenIDs, r.ex.RejectedIDs)
		case sw.layout == data.Conversational:
			vals = append(vals, r.ex.PromptMessages, r.ex.ChosenMessages, r.ex.RejectedMessages)
		default:
			vals = append(vals, r.ex.Prompt, r.ex.Chosen, r.ex.Rejected)
		}
		if i, ok := byRow[r.row]; ok && r.ex != nil {
			s := scores[i]
			vals = append(vals, s.ChosenLogps, s.RejectedLogps, int64(s.ChosenTokens), int64(s.RejectedTokens))
			if sw.hasRef && s.HasRef {
				vals = append(vals, s.RefChosenLogps, s.RefRejectedLogps, s.RewardsChosen, s.RewardsRejected, s.Margin)
			}
		}
		for len(vals) < sw.ncols {
			vals = append(vals, nil)
		}
		if err := sw.w.Write(vals...); err != nil {
			return fmt.Errorf("write %s: %w", sw.path, err)
		}
	}
	return nil
}

// close finishes the file (atomically: it appears only now).
func (sw *scoreWriter) close() error {
	if err := sw.w.Close(); err != nil {
		return fmt.Errorf("write %s: %w", sw.path, err)
	}
	return nil
}

// abort removes the unfinished file; a no-op after close.
func (sw *scoreWriter) abort() { sw.w.Abort() }
