package score

import (
	"context"
	"fmt"
	"sort"

	"ortalign/data"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/progress"
)

// ScoreFileConfig configures ScoreFile.
type ScoreFileConfig struct {
	Out         string // output file, .parquet or .jsonl (written atomically)
	Data        encode.DataOptions
	Policy, Ref *lm.LogProbModel // Ref may be nil: then ref_*_logps columns, if the file has them
	// Reward, when set, scores rewards instead of log-probs (Policy, Ref and Beta are
	// unused): rewards_chosen, rewards_rejected and margin for preference pairs, reward
	// for one sequence a row (a dataset opened for data.UseSFT).
	Reward    *RewardModel
	Beta      float64
	BatchSize int
	// Shard and Shards pick the row groups g with g mod Shards == Shard (Shards 0 or 1:
	// all), so a batch system can fan a file out over workers.
	Shard, Shards int
	Progress      *progress.Progress // advanced per pair (or sequence); started and ended here
}

// ScoreFileSummary is a scored file's summary.
type ScoreFileSummary struct {
	ScoreSummary
	Layout                      data.Layout
	Skipped, Dropped, Truncated int
	// Sequences and MeanReward summarise reward scoring of one sequence a row.
	Sequences  int
	MeanReward float64
}

// ScoreWindow is about how many rows ScoreFile reads, encodes and scores at a time.
var ScoreWindow = 8192

// ScoreFile scores every row of ds and writes one output row per input row, in file
// order: the input's own columns, then the scores (null where a row was skipped or
// dropped). Without Reward it scores preference pairs' log-probs (ScorePairs); with it,
// rewards (ScorePairRewards, or ScoreSequenceRewards when ds was opened for
// data.UseSFT). The file is streamed a window of row groups at a time, so memory stays
// bounded; within a window, items are batched by length.
func ScoreFile(ctx context.Context, ds *data.Dataset, c ScoreFileConfig) (ScoreFileSummary, error) {
	switch {
	case c.Reward != nil && ds.Use == data.UseSFT:
		return scoreSequenceRewardsFile(ctx, ds, c)
	case c.Reward != nil:
		return scorePairRewardsFile(ctx, ds, c)
	case ds.Use != data.UsePreference:
		return ScoreFileSummary{Layout: ds.Layout}, fmt.Errorf("%s: log-prob scoring reads preference pairs; the dataset was opened for %s", ds.Path, ds.Use)
	}
	hasRef := c.Ref != nil || (ds.HasField(data.FieldRefChosenLogps) && ds.HasField(data.FieldRefRejectedLogps))
	cols := []data.Column{
		{Name: "chosen_logps", Kind: data.Float64}, {Name: "rejected_logps", Kind: data.Float64},
		{Name: "chosen_tokens", Kind: data.Int64}, {Name: "rejected_tokens", Kind: data.Int64},
	}
	if hasRef {
		for _, n := range []string{"ref_chosen_logps", "ref_rejected_logps", "rewards_chosen", "rewards_rejected", "margin"} {
			cols = append(cols, data.Column{Name: n, Kind: data.Float64})
		}
	}
	sum, err := streamScores(ctx, ds, c, cols, encode.EncodePairsOf(c.Data), pairRow,
		func(pairs []encode.EncodedPair) ([][]any, ScoreFileSummary, error) {
			scores, part, err := ScorePairs(ctx, c.Policy, c.Ref, pairs, ScoreConfig{Beta: c.Beta, BatchSize: c.BatchSize, Progress: c.Progress})
			if err != nil {
				return nil, ScoreFileSummary{}, err
			}
			vals := make([][]any, len(scores))
			for i, s := range scores {
				vals[i] = []any{s.ChosenLogps, s.RejectedLogps, int64(s.ChosenTokens), int64(s.RejectedTokens)}
				if hasRef && s.HasRef {
					vals[i] = append(vals[i], s.RefChosenLogps, s.RefRejectedLogps, s.RewardsChosen, s.RewardsRejected, s.Margin)
				}
			}
			return vals, ScoreFileSummary{ScoreSummary: part}, nil
		})
	sum.HasRef = sum.HasRef && hasRef
	return sum, err
}

// scorePairRewardsFile is ScoreFile for preference pairs under a reward model.
func scorePairRewardsFile(ctx context.Context, ds *data.Dataset, c ScoreFileConfig) (ScoreFileSummary, error) {
	cols := []data.Column{{Name: "rewards_chosen", Kind: data.Float64}, {Name: "rewards_rejected", Kind: data.Float64}, {Name: "margin", Kind: data.Float64}}
	return streamScores(ctx, ds, c, cols, encode.EncodePairsOf(c.Data), pairRow,
		func(pairs []encode.EncodedPair) ([][]any, ScoreFileSummary, error) {
			scores, part, err := ScorePairRewards(ctx, c.Reward, pairs, RewardScoreConfig{BatchSize: c.BatchSize, Progress: c.Progress})
			if err != nil {
				return nil, ScoreFileSummary{}, err
			}
			vals := make([][]any, len(scores))
			for i, s := range scores {
				vals[i] = []any{s.Chosen, s.Rejected, s.Chosen - s.Rejected}
			}
			return vals, ScoreFileSummary{ScoreSummary: part}, nil
		})
}

// scoreSequenceRewardsFile is ScoreFile for one sequence a row under a reward model.
func scoreSequenceRewardsFile(ctx context.Context, ds *data.Dataset, c ScoreFileConfig) (ScoreFileSummary, error) {
	encodeRows := func(ds *data.Dataset, ex []data.Example) ([]encode.EncodedSequence, encode.EncodeStats, error) {
		return encode.EncodeSequences(ds.Path, ds.Layout, ex, c.Data.Tokenizer, c.Data.EncodeConfig(ds), c.Data.Vocab)
	}
	cols := []data.Column{{Name: "reward", Kind: data.Float64}}
	return streamScores(ctx, ds, c, cols, encodeRows, func(s encode.EncodedSequence) int64 { return s.Row },
		func(seqs []encode.EncodedSequence) ([][]any, ScoreFileSummary, error) {
			rewards, part, err := ScoreSequenceRewards(ctx, c.Reward, encode.SequencesOf(seqs), RewardScoreConfig{BatchSize: c.BatchSize, Progress: c.Progress})
			if err != nil {
				return nil, ScoreFileSummary{}, err
			}
			vals := make([][]any, len(rewards))
			for i, r := range rewards {
				vals[i] = []any{r}
			}
			return vals, ScoreFileSummary{ScoreSummary: ScoreSummary{Tokens: part.Tokens, Elapsed: part.Elapsed}, Sequences: len(rewards), MeanReward: part.MeanReward}, nil
		})
}

func pairRow(p encode.EncodedPair) int64 { return p.Row }

// streamScores is ScoreFile's loop, shared by every kind of score: it reads the
// shard's row groups a window at a time, encodes each window, scores its items (score
// returns each item's values for the score columns cols, and the window's summary) and
// writes the window's rows.
func streamScores[T any](ctx context.Context, ds *data.Dataset, c ScoreFileConfig, cols []data.Column,
	encodeRows func(*data.Dataset, []data.Example) ([]T, encode.EncodeStats, error), rowOf func(T) int64,
	score func([]T) ([][]any, ScoreFileSummary, error)) (ScoreFileSummary, error) {
	shards := max(1, c.Shards)
	sum := ScoreFileSummary{Layout: ds.Layout}
	w, err := newScoreWriter(c.Out, ds.Layout, cols)
	if err != nil {
		return sum, err
	}
	defer w.abort()
	var groups []int
	var rows int64
	for g := c.Shard; g < ds.NumRowGroups(); g += shards {
		groups = append(groups, g)
		rows += ds.RowGroupRows(g)
	}
	c.Progress.Start(int(rows))
	for len(groups) > 0 {
		if err := ctx.Err(); err != nil {
			return sum, err
		}
		var ex []data.Example
		var skip []data.SkippedRow
		for len(groups) > 0 && len(ex) < ScoreWindow {
			e, s, err := ds.ReadRowGroup(groups[0])
			if err != nil {
				return sum, err
			}
			ex, skip, groups = append(ex, e...), append(skip, s...), groups[1:]
		}
		lp, err := encode.Encode(ds, ex, skip, c.Data, encodeRows)
		if err != nil {
			return sum, err
		}
		vals, part, err := score(lp.Items)
		if err != nil {
			return sum, err
		}
		if err := writeWindow(w, lp, rowOf, vals); err != nil {
			return sum, err
		}
		sum.merge(part)
		sum.Skipped, sum.Dropped, sum.Truncated = sum.Skipped+len(lp.Skipped), sum.Dropped+lp.Stats.Dropped, sum.Truncated+lp.Stats.Truncated
	}
	c.Progress.Done()
	if err := w.Close(); err != nil {
		return sum, err
	}
	return sum, nil
}

// merge adds a window's scores to s.
func (s *ScoreFileSummary) merge(o ScoreFileSummary) {
	s.ScoreSummary.Merge(o.ScoreSummary)
	if o.Pairs == 0 { // Merge counts only pairs' tokens
		s.Tokens += o.Tokens
	}
	if n := s.Sequences + o.Sequences; n > 0 {
		s.MeanReward = (s.MeanReward*float64(s.Sequences) + o.MeanReward*float64(o.Sequences)) / float64(n)
		s.Sequences = n
	}
}

// scoreWriter writes score's output: one row per input row, in file order, with the
// input's own columns, then the score columns (null where a row was skipped or dropped,
// and where a row's values stop short).
type scoreWriter struct {
	path   string
	layout data.Layout
	ncols  int
	w      *data.Writer
}

// inputColumns are the columns of a layout that score's output copies from its input.
func inputColumns(layout data.Layout) []data.Column {
	str := func(names ...string) []data.Column {
		cols := make([]data.Column, len(names))
		for i, n := range names {
			cols[i] = data.Column{Name: n, Kind: data.String}
		}
		return cols
	}
	kind := func(k data.Kind, names ...string) []data.Column {
		cols := str(names...)
		for i := range cols {
			cols[i].Kind = k
		}
		return cols
	}
	switch layout {
	case data.Tokenized:
		return kind(data.Int64List, "prompt_input_ids", "chosen_input_ids", "rejected_input_ids")
	case data.Conversational:
		return kind(data.Messages, "prompt", "chosen", "rejected")
	case data.PromptCompletion:
		return str("prompt", "completion")
	case data.ConversationalPromptCompletion:
		return kind(data.Messages, "prompt", "completion")
	case data.TokenizedPromptCompletion:
		return kind(data.Int64List, "prompt_input_ids", "completion_input_ids")
	case data.LanguageModeling:
		return str("text")
	case data.ConversationalLanguageModeling:
		return kind(data.Messages, "messages")
	}
	return str("prompt", "chosen", "rejected")
}

// inputValues are an example's values for inputColumns(layout).
func inputValues(layout data.Layout, ex *data.Example) []any {
	switch layout {
	case data.Tokenized:
		return []any{ex.PromptIDs, ex.ChosenIDs, ex.RejectedIDs}
	case data.Conversational:
		return []any{ex.PromptMessages, ex.ChosenMessages, ex.RejectedMessages}
	case data.PromptCompletion:
		return []any{ex.Prompt, ex.Completion}
	case data.ConversationalPromptCompletion:
		return []any{ex.PromptMessages, ex.CompletionMessages}
	case data.TokenizedPromptCompletion:
		return []any{ex.PromptIDs, ex.CompletionIDs}
	case data.LanguageModeling:
		return []any{ex.Text}
	case data.ConversationalLanguageModeling:
		return []any{ex.Messages}
	}
	return []any{ex.Prompt, ex.Chosen, ex.Rejected}
}

func newScoreWriter(path string, layout data.Layout, scores []data.Column) (*scoreWriter, error) {
	cols := append(inputColumns(layout), scores...)
	w, err := data.Create(path, cols)
	if err != nil {
		return nil, err
	}
	return &scoreWriter{path: path, layout: layout, ncols: len(cols), w: w}, nil
}

// writeWindow appends the rows of one window in row order: its examples (with their
// items' score values vals, in item order, where they were encoded and scored; null
// scores where the encoder skipped or dropped them) and the rows the reader skipped
// (null values, written as nulls).
func writeWindow[T any](sw *scoreWriter, lp *encode.Loaded[T], rowOf func(T) int64, vals [][]any) error {
	byRow := map[int64]int{} // file row -> item index
	for i, it := range lp.Items {
		byRow[rowOf(it)] = i
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
	nin := len(inputColumns(sw.layout))
	for _, r := range rows {
		var row []any
		if r.ex == nil {
			row = make([]any, nin)
		} else {
			row = inputValues(sw.layout, r.ex)
			if i, ok := byRow[r.row]; ok {
				row = append(row, vals[i]...)
			}
		}
		for len(row) < sw.ncols {
			row = append(row, nil)
		}
		if err := sw.w.Write(row...); err != nil {
			return fmt.Errorf("write %s: %w", sw.path, err)
		}
	}
	return nil
}

// close finishes the file (atomically: it appears only now).
func (sw *scoreWriter) Close() error {
	if err := sw.w.Close(); err != nil {
		return fmt.Errorf("write %s: %w", sw.path, err)
	}
	return nil
}

// abort removes the unfinished file; a no-op after close.
func (sw *scoreWriter) abort() { sw.w.Abort() }
