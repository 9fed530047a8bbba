package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"ortalign/data"
	"ortalign/pipeline/generate"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/progress"
	"ortalign/tokenize"
)

// generateOptions are the flags of `ortalign generate`.
type generateOptions struct {
	*globalOptions
	model, prompts, out, tokenizer string
	columns                        string
	strict, noCache                bool
	temperature, topP, minP        float64
	repetitionPenalty              float64
	topK, maxNewTokens, numReturn  int
	seed                           uint64
	eos                            []int
	stop                           []string
	batchSize                      int
	paddingSide                    string
}

func newGenerateCmd(g *globalOptions) *cobra.Command {
	o := &generateOptions{globalOptions: g}
	cmd := &cobra.Command{
		Use:   "generate --model M.onnx --prompts D.parquet --out G.parquet",
		Short: "Sample completions of a dataset's prompts (KV cache, top-k/top-p/min-p, stop strings)",
		Long: `generate samples --num-return-sequences completions of every prompt of a dataset: a
prompt-only file (prompt: a string or a message list, or prompt_input_ids), or the prompts
of a prompt-completion or preference file. Conversational prompts are rendered with the
tokenizer's chat template and its generation prompt; text prompts are tokenized without
special tokens, as TRL's online trainers do.

Sampling is transformers': the repetition penalty, then temperature, top-k, top-p and
min-p; --temperature 0 is greedy decoding. A row ends at an EOS id (--eos-token-id, else
the tokenizer's EOS; kept in completion_input_ids), at a --stop string (the completion
text is cut before it) or after --max-new-tokens; finish_reason says which (eos, stop,
length). Each (prompt, return sequence) samples from its own source seeded from --seed
and its position, so the output depends neither on --batch-size nor on --threads.

Models exported with a KV cache (past_key_values.* inputs) decode with it; for other
exports a cache is derived from the graph's attention and checked against decoding
without it before use; when that fails, each step re-runs the whole sequence (a notice
says so). Output rows, in prompt order then return index: prompt and completion (text,
with --tokenizer), prompt_input_ids, completion_input_ids, completion_logps (the sum of
the sampled tokens' log-probs under the raw logits) and finish_reason. The file appears
only when complete; Ctrl-C stops without writing it.`,
		Example: `  ortalign generate --model policy.onnx --prompts prompts.jsonl --tokenizer tokenizer.json \
      --out completions.parquet --temperature 0.7 --top-p 0.95 --num-return-sequences 4`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runGenerate(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.model, "model", "", "ONNX causal LM (input_ids, logits; a KV cache is used when exported)")
	f.StringVar(&o.prompts, "prompts", "", "dataset of prompts (.parquet or .jsonl)")
	f.StringVar(&o.out, "out", "", "output file, .parquet or .jsonl")
	f.StringVar(&o.tokenizer, "tokenizer", "", "HuggingFace tokenizer.json (needed for text prompts, stop strings and text output)")
	f.StringVar(&o.columns, "columns", "", "column mapping, e.g. prompt=question")
	f.BoolVar(&o.strict, "strict", false, "fail on a null or empty prompt instead of skipping the row")
	f.Float64Var(&o.temperature, "temperature", 1, "sampling temperature (0 = greedy)")
	f.IntVar(&o.topK, "top-k", 0, "keep the k most likely tokens (0 = off)")
	f.Float64Var(&o.topP, "top-p", 1, "nucleus sampling: keep the most likely tokens up to this probability (1 = off)")
	f.Float64Var(&o.minP, "min-p", 0, "drop tokens less likely than min-p times the most likely (0 = off)")
	f.Float64Var(&o.repetitionPenalty, "repetition-penalty", 1, "penalty on tokens already in the prompt or completion (1 = off)")
	f.IntVar(&o.maxNewTokens, "max-new-tokens", 64, "most tokens sampled per completion")
	f.IntVar(&o.numReturn, "num-return-sequences", 1, "completions per prompt")
	f.Uint64Var(&o.seed, "seed", 42, "sampling seed")
	f.IntSliceVar(&o.eos, "eos-token-id", nil, "token id that ends a completion (repeatable; default: the tokenizer's EOS)")
	f.StringArrayVar(&o.stop, "stop", nil, "string that ends a completion (repeatable; needs --tokenizer)")
	f.IntVar(&o.batchSize, "batch-size", 8, "prompts per batch")
	f.StringVar(&o.paddingSide, "padding-side", "left", "how prompts of different lengths are padded for the cached prefill: left or right")
	f.BoolVar(&o.noCache, "no-kv-cache", false, "re-run the whole sequence every step (no KV cache)")
	for _, name := range []string{"model", "prompts", "out"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

func (o *generateOptions) validate() error {
	if o.batchSize <= 0 {
		return fmt.Errorf("--batch-size must be positive, got %d", o.batchSize)
	}
	if o.numReturn <= 0 {
		return fmt.Errorf("--num-return-sequences must be positive, got %d", o.numReturn)
	}
	if !strings.HasSuffix(o.out, ".parquet") && !strings.HasSuffix(o.out, ".jsonl") {
		return fmt.Errorf("--out %s: use a .parquet or .jsonl file name", o.out)
	}
	if len(o.stop) > 0 && o.tokenizer == "" {
		return errors.New("--stop needs --tokenizer to decode completions")
	}
	if _, err := data.ParseColumns(o.columns); err != nil {
		return fmt.Errorf("--columns: %w", err)
	}
	for _, id := range o.eos {
		if id < 0 {
			return fmt.Errorf("--eos-token-id %d: want a token id >= 0", id)
		}
	}
	so := o.sampleOptions(nil)
	return so.Check()
}

// sampleOptions maps the flags to the library's options; tok (may be nil) supplies EOS
// and decoding.
func (o *generateOptions) sampleOptions(tok *tokenize.Tokenizer) generate.SampleOptions {
	so := generate.SampleOptions{
		Temperature: o.temperature, TopK: o.topK, TopP: o.topP, MinP: o.minP,
		RepetitionPenalty: o.repetitionPenalty, MaxNewTokens: o.maxNewTokens,
		NumReturnSequences: o.numReturn, Seed: o.seed, Stop: o.stop, PaddingSide: o.paddingSide,
	}
	for _, id := range o.eos {
		so.EOS = append(so.EOS, int64(id))
	}
	if tok != nil {
		if len(so.EOS) == 0 {
			if id, ok := tok.EOS(); ok {
				so.EOS = []int64{int64(id)}
			}
		}
		so.Decode = func(ids []int64) (string, error) { return tok.Decode(intIDs(ids), true) }
	} else if len(so.Stop) > 0 {
		so.Decode = func([]int64) (string, error) { return "", nil } // rejected by validate
	}
	return so
}

func intIDs(ids []int64) []int {
	out := make([]int, len(ids))
	for i, id := range ids {
		out[i] = int(id)
	}
	return out
}

// genPrompt is one usable input row.
type genPrompt struct {
	row      int64
	text     string // the prompt as text (rendered for conversational prompts); "" for ids
	messages []data.Message
	ids      []int64
}

func runGenerate(ctx context.Context, o *generateOptions, stdout, stderr io.Writer) error {
	if err := o.validate(); err != nil {
		return err
	}
	tok, err := loadTokenizer(o.tokenizer)
	if err != nil {
		return err
	}
	prompts, layout, err := readPrompts(o, tok, stderr)
	if err != nil {
		return err
	}
	if err := o.initORT(); err != nil {
		return err
	}
	cache := generate.CacheAuto
	if o.noCache {
		cache = generate.CacheOff
	}
	gen, err := generate.LoadGenerator(o.model, generate.GeneratorOptions{Threads: o.threads, Cache: cache,
		Notice: func(s string) { fmt.Fprintln(stderr, "ortalign: "+s) }})
	if err != nil {
		return err
	}
	defer gen.Close()
	if tok != nil && tok.VocabSize() > gen.VocabSize() {
		return fmt.Errorf("tokenizer %s has %d ids but the model's vocabulary is %d: not this model's tokenizer", o.tokenizer, tok.VocabSize(), gen.VocabSize())
	}
	so := o.sampleOptions(tok)
	results := make([][]generate.Completion, len(prompts))
	batches := lm.LengthBatches(len(prompts), o.batchSize, func(i int) int { return len(prompts[i].ids) })
	prog := progress.NewProgress(stderr, "generate", "prompts")
	prog.Start(len(prompts))
	start := time.Now()
	done := 0
	for _, b := range batches {
		in := make([]generate.Prompt, len(b))
		for k, i := range b {
			in[k] = generate.Prompt{IDs: prompts[i].ids, Index: int(prompts[i].row)}
		}
		out, err := gen.Generate(ctx, in, so)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("interrupted after %d of %d prompts; %s not written", done, len(prompts), o.out)
			}
			return err
		}
		for k, i := range b {
			results[i] = out[k*o.numReturn : (k+1)*o.numReturn]
		}
		done += len(b)
		prog.Add(len(b))
	}
	prog.Done()
	elapsed := time.Since(start)
	if err := writeCompletions(o.out, layout, tok != nil, prompts, results); err != nil {
		return err
	}
	tokens, reasons := 0, map[string]int{}
	for _, rs := range results {
		for _, c := range rs {
			tokens += len(c.IDs)
			reasons[c.FinishReason]++
		}
	}
	fmt.Fprintf(stdout, "generated %d completions of %d prompts: %d tokens in %s (%.1f tokens/s, KV cache: %s); finished: eos %d, stop %d, length %d; wrote %s\n",
		len(prompts)*o.numReturn, len(prompts), tokens, elapsed.Round(time.Millisecond), float64(tokens)/max(elapsed.Seconds(), 1e-9),
		gen.CacheMode(), reasons[generate.FinishEOS], reasons[generate.FinishStop], reasons[generate.FinishLength], o.out)
	return nil
}

// readPrompts reads and tokenizes the dataset's prompts. Unusable rows (null or empty
// prompts) are skipped with a warning (an error with --strict).
func readPrompts(o *generateOptions, tok *tokenize.Tokenizer, stderr io.Writer) ([]genPrompt, data.Layout, error) {
	cols, _ := data.ParseColumns(o.columns)
	ds, err := data.Open(o.prompts, data.Options{Columns: cols, Strict: o.strict, Use: data.UsePrompts})
	var missing *data.MissingColumnsError
	if errors.As(err, &missing) {
		return nil, 0, fmt.Errorf("%w; map other names with --columns, e.g. --columns %s=NAME", err, missing.Fields[0])
	}
	if err != nil {
		return nil, 0, err
	}
	defer ds.Close()
	layout := ds.Layout
	if !layout.IsTokenized() && tok == nil {
		return nil, 0, fmt.Errorf("%s holds %s prompts (text): pass --tokenizer", o.prompts, layout)
	}
	if layout.IsConversational() && !tok.HasChatTemplate() {
		return nil, 0, fmt.Errorf("%s holds conversational prompts but tokenizer %s has no chat template", o.prompts, o.tokenizer)
	}
	examples, skipped, err := ds.ReadAll()
	if err != nil {
		return nil, 0, err
	}
	for _, s := range skipped {
		fmt.Fprintf(stderr, "ortalign: warning: %s: skipped %s\n", o.prompts, s)
	}
	var out []genPrompt
	for _, ex := range examples {
		p := genPrompt{row: ex.Row}
		switch {
		case layout.IsTokenized():
			p.ids = ex.PromptIDs
			if tok != nil {
				if p.text, err = tok.Decode(intIDs(p.ids), false); err != nil {
					return nil, 0, err
				}
			}
		case layout.IsConversational():
			p.messages = ex.PromptMessages
			if p.text, err = tok.ApplyChatTemplate(tokenizeMessages(p.messages), true); err != nil {
				return nil, 0, fmt.Errorf("%s row %d: chat template: %w", o.prompts, ex.Row, err)
			}
		default:
			p.text = ex.Prompt
		}
		if p.ids == nil {
			ids, err := tok.Encode(p.text, false)
			if err != nil {
				return nil, 0, fmt.Errorf("%s row %d: %w", o.prompts, ex.Row, err)
			}
			for _, id := range ids {
				p.ids = append(p.ids, int64(id))
			}
		}
		if len(p.ids) == 0 {
			if o.strict {
				return nil, 0, fmt.Errorf("%s row %d: the prompt has no token", o.prompts, ex.Row)
			}
			fmt.Fprintf(stderr, "ortalign: warning: %s row %d: skipped: the prompt has no token\n", o.prompts, ex.Row)
			continue
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, 0, fmt.Errorf("%s: no usable prompt", o.prompts)
	}
	return out, layout, nil
}

// writeCompletions writes one row per completion, in prompt order then return index.
func writeCompletions(path string, layout data.Layout, hasText bool, prompts []genPrompt, results [][]generate.Completion) error {
	conv := layout.IsConversational()
	var cols []data.Column
	if hasText {
		kind := data.String
		if conv {
			kind = data.Messages
		}
		cols = append(cols, data.Column{Name: "prompt", Kind: kind}, data.Column{Name: "completion", Kind: kind})
	}
	cols = append(cols,
		data.Column{Name: "prompt_input_ids", Kind: data.Int64List}, data.Column{Name: "completion_input_ids", Kind: data.Int64List},
		data.Column{Name: "completion_logps", Kind: data.Float64}, data.Column{Name: "finish_reason", Kind: data.String})
	w, err := data.Create(path, cols)
	if err != nil {
		return err
	}
	for i, p := range prompts {
		for _, c := range results[i] {
			var vals []any
			if hasText {
				if conv {
					vals = append(vals, p.messages, []data.Message{{Role: "assistant", Content: c.Text}})
				} else {
					vals = append(vals, p.text, c.Text)
				}
			}
			sum := 0.0
			for _, lp := range c.Logps {
				sum += lp
			}
			vals = append(vals, p.ids, c.IDs, sum, c.FinishReason)
			if err := w.Write(vals...); err != nil {
				w.Abort()
				return fmt.Errorf("write %s: %w", path, err)
			}
		}
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func tokenizeMessages(ms []data.Message) []tokenize.Message {
	out := make([]tokenize.Message, len(ms))
	for i, m := range ms {
		out[i] = tokenize.Message{Role: m.Role, Content: m.Content}
	}
	return out
}
