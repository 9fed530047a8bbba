package generate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"ortalign/data"
	"ortalign/onnx/ort"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/progress"
	"ortalign/tokenize"
)

// FileConfig configures GenerateFile.
type FileConfig struct {
	// Prompts is the dataset (.parquet or .jsonl): a prompt-only file (prompt: a string
	// or a message list, or prompt_input_ids), or the prompts of a prompt-completion or
	// preference file.
	Prompts string
	// Out is the output file, .parquet or .jsonl. It appears only when complete.
	Out string
	// Data says how Prompts is read: Columns, Strict (a null or empty prompt is an error
	// instead of a skipped row), Tokenizer and Warn (skipped rows are reported there).
	// The tokenizer is needed for text and conversational prompts, for Sample.Stop and
	// for the text columns of the output. MaxLength, Truncation and Vocab are not used:
	// prompts are completed whole, and their ids are checked against the model's
	// vocabulary when it is loaded.
	Data encode.DataOptions
	// Model is the ONNX causal LM, loaded with Generator (LoadGenerator).
	Model     string
	Generator GeneratorOptions
	// InitRuntime loads ONNX Runtime; it is called once the prompts are read, before the
	// model is loaded, so that a data error shows first (nil: ort.Init(""), the library
	// found where ort.FindLibrary looks).
	InitRuntime func() error
	// Sample are the sampling options. Without EOS ids, the tokenizer's EOS ends a row;
	// without Decode, completions are decoded by the tokenizer (special tokens skipped).
	Sample SampleOptions
	// BatchSize is the number of prompts per batch; prompts are batched by length.
	BatchSize int
	// Progress receives progress lines ("generate: 8/16 prompts ..."; nil: none).
	Progress io.Writer
}

// FileSummary is what GenerateFile did.
type FileSummary struct {
	Layout               data.Layout // the prompts' layout
	Prompts, Completions int
	Skipped              int            // rows left out (null or empty prompts), as warned
	Tokens               int            // sampled tokens, over all completions
	Finished             map[string]int // completions by finish reason (FinishEOS, ...)
	Elapsed              time.Duration  // decoding time (loading and writing excluded)
	CacheMode            string         // Generator.CacheMode of the model
}

// TokensPerSecond is the decoding rate.
func (s FileSummary) TokensPerSecond() float64 {
	return float64(s.Tokens) / max(s.Elapsed.Seconds(), 1e-9)
}

// GenerateFile samples c.Sample.NumReturnSequences completions of every usable prompt of
// c.Prompts and writes one row per completion to c.Out, in prompt order then return
// index: prompt and completion (text, or messages for conversational prompts; with a
// tokenizer only), prompt_input_ids, completion_input_ids, completion_logps (the sum of
// the sampled tokens' log-probs under the raw logits) and finish_reason. Text prompts are
// tokenized without special tokens and conversational ones rendered with the chat
// template's generation prompt, as encode.EncodePrompts does for TRL's online trainers.
// The prompts are read and encoded before ONNX Runtime and the model are loaded, so a
// data error shows first. When ctx is cancelled, GenerateFile stops between decoding steps and writes
// nothing.
func GenerateFile(ctx context.Context, c FileConfig) (FileSummary, error) {
	sum := FileSummary{Finished: map[string]int{}}
	tok := c.Data.Tokenizer
	so := c.Sample
	if len(so.EOS) == 0 && tok != nil {
		if id, ok := tok.EOS(); ok {
			so.EOS = []int64{int64(id)}
		}
	}
	if so.Decode == nil && tok != nil {
		so.Decode = decoder(tok, true)
	}
	if c.BatchSize <= 0 {
		return sum, fmt.Errorf("batch size must be positive, got %d", c.BatchSize)
	}
	if err := so.normalize(); err != nil {
		return sum, err
	}
	ds, err := encode.OpenDataset(c.Prompts, data.UsePrompts, c.Data)
	if err != nil {
		return sum, err
	}
	sum.Layout = ds.Layout
	ex, skipped, err := ds.ReadAll()
	ds.Close()
	if err != nil {
		return sum, err
	}
	// Whole prompts; Generate checks their ids against the model's vocabulary.
	do := c.Data
	do.MaxLength, do.Truncation, do.Vocab = 0, "", 0
	prompts, err := encode.Encode(ds, ex, skipped, do, func(ds *data.Dataset, ex []data.Example) ([]encode.EncodedPrompt, encode.EncodeStats, error) {
		return encode.EncodePrompts(ds.Path, ds.Layout, ex, tok, do.EncodeConfig(ds), 0)
	})
	if err != nil {
		return sum, err
	}
	sum.Skipped = len(prompts.Skipped)
	if len(prompts.Items) == 0 {
		return sum, fmt.Errorf("%s: no usable prompt", c.Prompts)
	}
	initRuntime := c.InitRuntime
	if initRuntime == nil {
		initRuntime = func() error { return ort.Init("") }
	}
	if err := initRuntime(); err != nil {
		return sum, err
	}
	gen, err := LoadGenerator(c.Model, c.Generator)
	if err != nil {
		return sum, err
	}
	defer gen.Close()
	if err := encode.CheckTokenizerFits(tok, int64(gen.VocabSize())); err != nil {
		return sum, fmt.Errorf("tokenizer %s and model %s: %w", tok.Path(), c.Model, err)
	}
	sum.CacheMode = gen.CacheMode()
	items := prompts.Items
	var prog *progress.Progress
	if c.Progress != nil {
		prog = progress.NewProgress(c.Progress, "generate", "prompts")
	}
	results, elapsed, err := generateBatches(ctx, gen, items, so, c.BatchSize, prog)
	if err != nil {
		if ctx.Err() != nil {
			return sum, fmt.Errorf("interrupted after %d of %d prompts; %s not written: %w", elapsed.done, len(items), c.Out, err)
		}
		return sum, err
	}
	sum.Elapsed = elapsed.time
	if err := writeCompletions(c.Out, prompts, tok, results); err != nil {
		return sum, err
	}
	sum.Prompts, sum.Completions = len(items), len(items)*so.NumReturnSequences
	for _, rs := range results {
		for _, r := range rs {
			sum.Tokens += len(r.IDs)
			sum.Finished[r.FinishReason]++
		}
	}
	return sum, nil
}

// batchesDone is how far generateBatches got and how long it took.
type batchesDone struct {
	done int
	time time.Duration
}

// generateBatches completes the prompts, size at a time, in order of length; results[i]
// are prompt i's completions. With a cache written in place (slots) it is one Generate
// call over size × NumReturnSequences slots, a finished row's slot taking the next
// prompt's, so no batch waits for its longest completion; otherwise consecutive batches
// of size prompts. The tokens are the same either way (each row samples from its own
// seeded source).
func generateBatches(ctx context.Context, gen *Generator, items []encode.EncodedPrompt, so SampleOptions, size int, prog *progress.Progress) ([][]Completion, batchesDone, error) {
	var d batchesDone
	results := make([][]Completion, len(items))
	prog.Start(len(items))
	start := time.Now()
	n := max(so.NumReturnSequences, 1)
	prompts := size
	if gen.inPlace {
		prompts, so.BatchSize = len(items), size*n
	}
	batches := lm.LengthBatches(len(items), prompts, func(i int) int { return len(items[i].IDs) })
	// A prompt is done when its n rows are.
	left := make(map[int]int, len(items))
	for _, it := range items {
		left[int(it.Row)] = n
	}
	so.Done = func(prompt int) {
		if left[prompt]--; left[prompt] == 0 {
			d.done++
			prog.Add(1)
		}
	}
	for _, b := range batches {
		in := make([]Prompt, len(b))
		for k, i := range b {
			in[k] = Prompt{IDs: items[i].IDs, Index: int(items[i].Row)}
		}
		out, err := gen.Generate(ctx, in, so)
		if err != nil {
			return nil, d, err
		}
		for k, i := range b {
			results[i] = out[k*n : (k+1)*n]
		}
	}
	prog.Done()
	d.time = time.Since(start)
	return results, d, nil
}

// writeCompletions writes one row per completion, in prompt order then return index;
// with a tokenizer, the prompt and completion text (messages for conversational prompts)
// come first.
func writeCompletions(path string, prompts *encode.Loaded[encode.EncodedPrompt], tok *tokenize.Tokenizer, results [][]Completion) error {
	conv := prompts.Layout.IsConversational()
	var cols []data.Column
	if tok != nil {
		kind := data.String
		if conv {
			kind = data.Messages
		}
		cols = append(cols, data.Column{Name: "prompt", Kind: kind}, data.Column{Name: "completion", Kind: kind})
	}
	cols = append(cols,
		data.Column{Name: "prompt_input_ids", Kind: data.Int64List}, data.Column{Name: "completion_input_ids", Kind: data.Int64List},
		data.Column{Name: "completion_logps", Kind: data.Float64}, data.Column{Name: "finish_reason", Kind: data.String})
	rows := make(map[int64]*data.Example, len(prompts.Examples))
	for i := range prompts.Examples {
		rows[prompts.Examples[i].Row] = &prompts.Examples[i]
	}
	w, err := data.Create(path, cols)
	if err != nil {
		return err
	}
	for i, p := range prompts.Items {
		var prompt any
		if tok != nil {
			if prompt, err = promptValue(prompts.Layout, rows[p.Row], p.IDs, tok); err != nil {
				w.Abort()
				return fmt.Errorf("%s: row %d: %w", prompts.Path, p.Row, err)
			}
		}
		for _, c := range results[i] {
			var vals []any
			if tok != nil {
				var completion any = c.Text
				if conv {
					completion = []data.Message{{Role: "assistant", Content: c.Text}}
				}
				vals = append(vals, prompt, completion)
			}
			sum := 0.0
			for _, lp := range c.Logps {
				sum += lp
			}
			vals = append(vals, p.IDs, c.IDs, sum, c.FinishReason)
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

// promptValue is a prompt as the output's prompt column holds it: the messages of a
// conversational prompt, the text of a text prompt, the decoded ids (special tokens kept)
// of a pre-tokenized one.
func promptValue(layout data.Layout, ex *data.Example, ids []int64, tok *tokenize.Tokenizer) (any, error) {
	switch {
	case ex == nil:
		return nil, errors.New("the encoded prompt has no source row")
	case layout.IsTokenized():
		return decoder(tok, false)(ids)
	case layout.IsConversational():
		return ex.PromptMessages, nil
	}
	return ex.Prompt, nil
}

// decoder decodes ids with tok.
func decoder(tok *tokenize.Tokenizer, skipSpecialTokens bool) func([]int64) (string, error) {
	return func(ids []int64) (string, error) {
		out := make([]int, len(ids))
		for i, id := range ids {
			out[i] = int(id)
		}
		return tok.Decode(out, skipSpecialTokens)
	}
}
