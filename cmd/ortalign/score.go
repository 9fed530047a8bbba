package main

import (
	"context"
	"fmt"
	"io"

	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"ortalign/data"
	"ortalign/pipeline"
)

// scoreOptions are the flags of `ortalign score`.
type scoreOptions struct {
	*globalOptions
	dataFlags
	model, ref, dataPath, tokenizer, out string
	beta                                 float64
	batchSize                            int
	shard                                string
	shardI, shards                       int // parsed --shard
}

func newScoreCmd(g *globalOptions) *cobra.Command {
	o := &scoreOptions{globalOptions: g}
	cmd := &cobra.Command{
		Use:   "score --model M.onnx --data D.parquet --out S.parquet",
		Short: "Score preference pairs: completion log-probs, implicit rewards and margins",
		Long: `score computes, for every preference pair, the summed log-probs of the chosen and
rejected completions under the policy model and, with --ref (or ref_chosen_logps /
ref_rejected_logps columns in the data), the implicit rewards beta·(policy − reference)
and their margin, as TRL defines them. One output row per input row, in input order;
rows that could not be scored have null scores: rows skipped because a value is null or
empty (an empty message or token id list, an empty completion, a completion with no
token) — each with a warning naming the file, row and column, and counted in the
summary; --strict makes them an error instead — and rows whose prompt alone fills
--max-length.`,
		Example: `  ortalign score --model policy.onnx --ref ref.onnx --data pairs.parquet \
      --tokenizer tokenizer.json --out scores.parquet
  ortalign score --model model.onnx --data tokenized.parquet --out scores.jsonl --shard 0/4`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runScore(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.model, "model", "", "policy model (ONNX causal LM with input_ids and logits)")
	f.StringVar(&o.ref, "ref", "", "reference model; default: ref_*_logps columns of the data, if any")
	f.StringVar(&o.dataPath, "data", "", "preference pairs (.parquet or .jsonl) in a TRL layout")
	f.StringVar(&o.tokenizer, "tokenizer", "", "HuggingFace tokenizer.json (needed for text datasets)")
	f.StringVar(&o.out, "out", "", "output file, .parquet or .jsonl")
	f.Float64Var(&o.beta, "beta", 0.1, "scale of the implicit rewards")
	f.IntVar(&o.batchSize, "batch-size", 8, "pairs per forward pass")
	addDataFlags(f, &o.dataFlags)
	f.StringVar(&o.shard, "shard", "", "score only shard i of N (i/N, over Parquet row groups)")
	for _, name := range []string{"model", "data", "out"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

func (o *scoreOptions) validate() error {
	if o.batchSize <= 0 {
		return fmt.Errorf("--batch-size must be positive, got %d", o.batchSize)
	}
	if err := o.dataFlags.validate(); err != nil {
		return err
	}
	if o.beta <= 0 {
		return fmt.Errorf("--beta must be positive, got %g", o.beta)
	}
	if !strings.HasSuffix(o.out, ".parquet") && !strings.HasSuffix(o.out, ".jsonl") {
		return fmt.Errorf("--out %s: use a .parquet or .jsonl file name", o.out)
	}
	var err error
	o.shardI, o.shards, err = parseShard(o.shard)
	return err
}

// parseShard reads "i/N".
func parseShard(s string) (i, n int, err error) {
	if s == "" {
		return 0, 1, nil
	}
	a, b, ok := strings.Cut(s, "/")
	if ok {
		i, err = strconv.Atoi(a)
		if err == nil {
			n, err = strconv.Atoi(b)
		}
	}
	if !ok || err != nil || n <= 0 || i < 0 || i >= n {
		return 0, 0, fmt.Errorf("--shard %q: want i/N with 0 <= i < N", s)
	}
	return i, n, nil
}

func runScore(ctx context.Context, o *scoreOptions, stdout, stderr io.Writer) error {
	// Everything that can fail without a model fails first: the flags, the tokenizer, the
	// dataset's schema and what encoding it needs; then ONNX Runtime and the models.
	if err := o.validate(); err != nil {
		return err
	}
	shard, shards := o.shardI, o.shards
	tok, err := loadTokenizer(o.tokenizer)
	if err != nil {
		return err
	}
	ds, err := openDataset(o.dataPath, o.dataFlags)
	if err != nil {
		return err
	}
	defer ds.Close()
	if err := checkEncodable(ds, tok); err != nil {
		return err
	}
	if err := o.initORT(); err != nil {
		return err
	}
	mo := pipeline.ModelOptions{Threads: o.threads, PadID: padID(tok)}
	policy, err := pipeline.LoadLogProbModel(o.model, mo)
	if err != nil {
		return err
	}
	defer policy.Close()
	var ref *pipeline.LogProbModel
	if o.ref != "" {
		if ref, err = pipeline.LoadLogProbModel(o.ref, mo); err != nil {
			return err
		}
		defer ref.Close()
		if ref.VocabSize() != policy.VocabSize() {
			return fmt.Errorf("--ref %s has vocabulary %d but --model %s has %d", o.ref, ref.VocabSize(), o.model, policy.VocabSize())
		}
	}
	if err := pipeline.CheckTokenizerFits(tok, policy.VocabSize()); err != nil {
		return fmt.Errorf("--tokenizer %s: %w", o.tokenizer, err)
	}
	hasRef := ref != nil || (ds.HasField(data.FieldRefChosenLogps) && ds.HasField(data.FieldRefRejectedLogps))
	w, err := newScoreWriter(o.out, ds.Layout, hasRef)
	if err != nil {
		return err
	}
	defer w.abort()
	// Stream the file: a window of row groups at a time is read, encoded, scored (batched
	// by length within the window) and written in file order, so memory stays bounded.
	// Skipped and dropped rows are written too, with null scores.
	progress := pipeline.NewProgress(stderr, "score", "pairs")
	progress.Start(int(ds.NumRows) / shards)
	var sum pipeline.ScoreSummary
	var skipped, dropped, truncated int
	groups := shardGroups(ds.NumRowGroups(), shard, shards)
	for len(groups) > 0 {
		var ex []data.Example
		var skip []data.SkippedRow
		for len(groups) > 0 && len(ex) < scoreWindow {
			e, s, err := ds.ReadRowGroup(groups[0])
			if err != nil {
				return strictHint(err)
			}
			ex, skip, groups = append(ex, e...), append(skip, s...), groups[1:]
		}
		lp, err := encodeExamples(ds, ex, skip, o.dataFlags, tok, o.tokenizer, policy.VocabSize(), stderr)
		if err != nil {
			return err
		}
		scores, part, err := pipeline.ScorePairs(ctx, policy, ref, lp.pairs, pipeline.ScoreConfig{Beta: o.beta, BatchSize: o.batchSize, Progress: progress})
		if err != nil {
			return err
		}
		if err := w.write(lp, scores); err != nil {
			return err
		}
		sum.Merge(part)
		skipped, dropped, truncated = skipped+len(lp.skipped), dropped+lp.stats.Dropped, truncated+lp.stats.Truncated
	}
	progress.Done()
	if err := w.close(); err != nil {
		return err
	}
	sum.HasRef = sum.HasRef && hasRef
	fmt.Fprintf(stdout, "scored %d pairs from %s (%s layout) -> %s\n", sum.Pairs, o.dataPath, ds.Layout, o.out)
	fmt.Fprintf(stdout, "  skipped %d rows (null or empty values; see the warnings), dropped %d (prompt fills --max-length), truncated %d\n", skipped, dropped, truncated)
	if sum.HasRef {
		fmt.Fprintf(stdout, "  reward accuracy: %.1f%%   mean margin: %.4f   (beta %g)\n", 100*sum.RewardAccuracy, sum.MeanMargin, o.beta)
	} else {
		fmt.Fprintf(stdout, "  chosen log-prob > rejected: %.1f%% (no reference: pass --ref for rewards)\n", 100*sum.RewardAccuracy)
	}
	fmt.Fprintf(stdout, "  %d tokens in %.2fs: %.0f tokens/s\n", sum.Tokens, sum.Elapsed.Seconds(), sum.TokensPerSecond())
	return nil
}

// scoreWindow is about how many rows score reads, encodes and scores at a time.
var scoreWindow = 8192

// shardGroups lists the row groups g of a file with g mod shards == shard.
func shardGroups(n, shard, shards int) []int {
	var groups []int
	for g := shard; g < n; g += shards {
		groups = append(groups, g)
	}
	return groups
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
func (sw *scoreWriter) write(lp *loadedPairs, scores []pipeline.PairScore) error {
	byRow := map[int64]int{} // file row -> index in scores
	for i, p := range lp.pairs {
		byRow[p.Row] = i
	}
	type outRow struct {
		row int64
		ex  *data.Example
	}
	rows := make([]outRow, 0, len(lp.examples)+len(lp.skipped))
	seen := map[int64]bool{}
	for i := range lp.examples {
		rows = append(rows, outRow{row: lp.examples[i].Row, ex: &lp.examples[i]})
		seen[lp.examples[i].Row] = true
	}
	for _, s := range lp.skipped {
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
