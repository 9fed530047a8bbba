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
	"ortalign/pipeline/encode"
	"ortalign/pipeline/generate"
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

// newGenerateCmd builds the command; runF replaces runGenerate in tests of flag parsing.
func newGenerateCmd(g *globalOptions, runF func(*generateOptions) error) *cobra.Command {
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
		RunE: runner(o, runF, runGenerate),
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
	f.IntVar(&o.batchSize, "batch-size", 8, "prompts decoded together (with a cache written in place, slots for this many prompts' completions, refilled as they finish)")
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
	so := o.sampleOptions()
	if len(so.Stop) > 0 {
		so.Decode = func([]int64) (string, error) { return "", nil } // the tokenizer's, checked above
	}
	return so.Check()
}

// sampleOptions maps the flags to the library's options; GenerateFile adds the
// tokenizer's EOS (without --eos-token-id) and decoding.
func (o *generateOptions) sampleOptions() generate.SampleOptions {
	so := generate.SampleOptions{
		Temperature: o.temperature, TopK: o.topK, TopP: o.topP, MinP: o.minP,
		RepetitionPenalty: o.repetitionPenalty, MaxNewTokens: o.maxNewTokens,
		NumReturnSequences: o.numReturn, Seed: o.seed, Stop: o.stop, PaddingSide: o.paddingSide,
	}
	for _, id := range o.eos {
		so.EOS = append(so.EOS, int64(id))
	}
	return so
}

// intIDs converts model token ids to the tokenizer's.
func intIDs(ids []int64) []int {
	out := make([]int, len(ids))
	for i, id := range ids {
		out[i] = int(id)
	}
	return out
}

// runGenerate is `ortalign generate`: generate.GenerateFile with the flags' options,
// then its summary line.
func runGenerate(ctx context.Context, o *generateOptions, stdout, stderr io.Writer) error {
	if err := o.validate(); err != nil {
		return err
	}
	tok, err := loadTokenizer(o.tokenizer)
	if err != nil {
		return err
	}
	cols, _ := data.ParseColumns(o.columns)
	cache := generate.CacheAuto
	if o.noCache {
		cache = generate.CacheOff
	}
	sum, err := generate.GenerateFile(ctx, generate.FileConfig{
		Prompts: o.prompts, Out: o.out,
		Data:  encode.DataOptions{Columns: cols, Strict: o.strict, Tokenizer: tok, Warn: stderr},
		Model: o.model,
		Generator: generate.GeneratorOptions{Threads: o.threads, Cache: cache,
			Notice: func(s string) { fmt.Fprintln(stderr, "ortalign: "+s) }},
		InitRuntime: o.initORT,
		Sample:      o.sampleOptions(), BatchSize: o.batchSize, Progress: stderr,
	})
	if err != nil {
		return flagHints(err)
	}
	fmt.Fprintf(stdout, "generated %d completions of %d prompts: %d tokens in %s (%.1f tokens/s, KV cache: %s); finished: eos %d, stop %d, length %d; wrote %s\n",
		sum.Completions, sum.Prompts, sum.Tokens, sum.Elapsed.Round(time.Millisecond), sum.TokensPerSecond(),
		sum.CacheMode, sum.Finished[generate.FinishEOS], sum.Finished[generate.FinishStop], sum.Finished[generate.FinishLength], o.out)
	return nil
}
