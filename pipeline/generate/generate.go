package generate

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/onnx/ort"
	"ortalign/pipeline/lm"
)

// Names of the values the generation head adds to a causal LM graph.
const (
	// GenIndexInput is int64 [batch]: the position whose logits each row needs.
	GenIndexInput = "ortalign_gen_index"
	// NextLogitsOutput is float32 [batch, vocab]: the logits at GenIndexInput.
	NextLogitsOutput = "ortalign_next_logits"
	// NextLogZOutput is float64 [batch]: log Σ exp of each row of NextLogitsOutput, so
	// that a token's log-prob is its logit less it (computed where the exponentials are
	// vectorized).
	NextLogZOutput = "ortalign_next_logz"
)

// CacheMode selects how a Generator decodes.
type CacheMode int

const (
	// CacheAuto uses the export's KV cache (past_key_values.* inputs), else one derived
	// from the graph (onnx.FindAttention), else re-runs the whole sequence every step.
	CacheAuto CacheMode = iota
	// CacheOff always re-runs the whole sequence (the reference the cache is checked
	// against).
	CacheOff
)

// GeneratorOptions configures a Generator.
type GeneratorOptions struct {
	// Threads is ONNX Runtime's intra-op thread count; 0 means all cores.
	Threads int
	Cache   CacheMode
	// Notice receives one-line notices (the cache fallback); nil writes them to stderr.
	Notice func(string)
	// ParamInputs names float initializers of the model that become graph inputs of the
	// same names and shapes, fed on every run: the model's own values until SetParams
	// gives others. A generator fed a trainer's live buffers samples from the current
	// weights without a new session per round (Engine.NewGenerator).
	ParamInputs []string
	// Ties are transposed copies read from their source, as a training graph with
	// GraphConfig.TieTransposedCopies reads them (Engine.Ties): each copy becomes
	// Transpose(source), so feeding the source feeds the copy too.
	Ties []lm.Tie
	// concatOnly derives a cache that concatenates pasts (tests of that path), not one
	// written in place.
	concatOnly bool
	// Spin lets ONNX Runtime's idle threads spin between the parallel parts of a run (a
	// little faster on an idle machine); by default they sleep, leaving the cores to the
	// sampling goroutines and to other processes.
	Spin bool
}

// sessionOptions are the ONNX Runtime options of o's generation sessions.
func (o GeneratorOptions) sessionOptions() ort.Options {
	return ort.Options{Threads: o.Threads, NoSpinning: !o.Spin}
}

// Generator samples completions from an ONNX causal LM.
type Generator struct {
	Path    string
	sess    *ort.Session
	vocab   int
	hasMask bool
	hasPos  bool
	cached  bool        // decode one token at a time feeding presents back
	pasts   []cachePast // KV-cache inputs (fed empty when !cached)
	mode    string
	// inPlace: the cache is GroupQueryAttention's (slots.go): rows right-padded, each past
	// and its present one buffer at the batch's final length, written in place.
	inPlace bool
	// lengths: the graph reads lengthsInput and totalInput (attention rewritten into
	// GroupQueryAttention) rather than an attention mask.
	lengths bool
	// kv holds the in-place cache's buffers between calls (slots.go).
	kv [][]float32
	// scratch are advance's per-worker score buffers.
	scratch [][]float64
	stats   Stats
	// params are the parameter inputs' feeds (GeneratorOptions.ParamInputs), by name;
	// paramNames are all of ParamInputs, those the next-token logits do not need included.
	params     map[string]*ort.Tensor
	paramNames map[string]bool
}

// cachePast is one KV-cache input and the output that returns it extended.
type cachePast struct {
	name, present      string
	dims               []int64 // static dimensions; those at batchAxis and seqAxis are ignored
	batchAxis, seqAxis int
}

func (c cachePast) empty(batch int) *ort.Tensor {
	shape := slices.Clone(c.dims)
	shape[c.batchAxis], shape[c.seqAxis] = int64(batch), 0
	return ort.MustFloatTensor(shape, nil)
}

// Prompt is one prompt to complete; Index (its position in the dataset) seeds its rows'
// samplers.
type Prompt struct {
	IDs   []int64
	Index int
}

// Completion is one sampled continuation of a prompt.
type Completion struct {
	PromptIndex, ReturnIndex int
	// IDs are the sampled tokens (the EOS that ended the row included).
	IDs []int64
	// Logps[t] is log softmax(logits)[IDs[t]] of the raw, unprocessed logits (no penalty,
	// temperature or filtering), as TRL's online trainers use.
	Logps []float64
	// FinishReason is FinishEOS, FinishStop or FinishLength.
	FinishReason string
	// Text is the decoded completion when SampleOptions.Decode is set (cut before the
	// stop string for FinishStop).
	Text string
}

// LoadGenerator loads the causal LM at path for generation.
func LoadGenerator(path string, o GeneratorOptions) (*Generator, error) {
	m, err := onnx.Load(path)
	if err != nil {
		return nil, err
	}
	return NewGenerator(path, m, o)
}

// NewGenerator prepares an already loaded model; path only labels errors and notices.
func NewGenerator(path string, m *onnx.Model, o GeneratorOptions) (*Generator, error) {
	notice := o.Notice
	if notice == nil {
		notice = func(s string) { fmt.Fprintln(os.Stderr, "ortalign: "+s) }
	}
	reason := func(err error) string { return strings.TrimPrefix(err.Error(), path+": ") }
	if len(o.Ties) > 0 {
		m = m.Clone()
		if err := lm.TieCopies(m, o.Ties); err != nil {
			return nil, fmt.Errorf("%s: tie weights: %w", path, err)
		}
	}
	g := m.Graph()
	for _, name := range o.ParamInputs {
		t := onnx.Initializer(g, name)
		if t == nil || onnx.DataType(t.GetDataType()) != onnx.Float {
			return nil, fmt.Errorf("%s: parameter input %q is not a float initializer of the model", path, name)
		}
	}
	if err := lm.CheckInputs(g); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if onnx.Output(g, lm.LogitsOutput) == nil {
		return nil, fmt.Errorf("%s: model has no output %q", path, lm.LogitsOutput)
	}
	pasts, err := lm.PastInputs(g)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if o.Cache == CacheAuto {
		if len(pasts) > 0 {
			gen, err := newExportCached(path, m, pasts, o)
			if err == nil {
				return gen, nil
			}
			notice(fmt.Sprintf("%s: KV cache not usable (%s); generating without a cache (each step re-runs the whole sequence)", path, reason(err)))
		} else {
			gen, err := newDerivedCached(path, m, o)
			if err == nil {
				return gen, nil
			}
			notice(fmt.Sprintf("%s: no KV cache derived (%s); generating without a cache (each step re-runs the whole sequence)", path, reason(err)))
		}
	}
	var cps []cachePast
	for _, p := range pasts {
		cps = append(cps, cachePast{name: p.Name, dims: p.Dims, batchAxis: 0, seqAxis: 2})
	}
	return newGenerator(path, m, cacheKind{pasts: cps, mode: "none"}, o)
}

// cacheKind is how a generator decodes: its cache inputs, whether it feeds presents back
// (cached), whether they are written in place (inPlace), the graph reads lengthsInput
// and totalInput (lengths), and CacheMode's word.
type cacheKind struct {
	pasts                    []cachePast
	cached, inPlace, lengths bool
	mode                     string
}

// newGenerator appends the generation head to a clone of m and opens the session.
func newGenerator(path string, m *onnx.Model, kind cacheKind, o GeneratorOptions) (*Generator, error) {
	pasts, cached := kind.pasts, kind.cached
	m = m.Clone()
	g := m.Graph()
	if err := appendNextLogitsHead(m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	outputs := []string{NextLogitsOutput, NextLogZOutput}
	keep := g.GetOutput()[:0:0]
	for _, out := range g.GetOutput() {
		if out.GetName() == NextLogitsOutput || out.GetName() == NextLogZOutput {
			keep = append(keep, out)
		}
	}
	if cached {
		for _, p := range pasts {
			out := onnx.Output(g, p.present)
			if out == nil {
				return nil, fmt.Errorf("%s: no output %q for input %q", path, p.present, p.name)
			}
			keep = append(keep, out)
			outputs = append(outputs, p.present)
		}
	}
	var inputs []string
	for _, in := range g.GetInput() {
		inputs = append(inputs, in.GetName())
	}
	g.Output = keep
	onnx.Prune(g, inputs)
	gen := &Generator{Path: path, cached: cached, pasts: pasts, mode: kind.mode, inPlace: kind.inPlace, lengths: kind.lengths,
		hasMask: onnx.Input(g, lm.AttentionMask) != nil, hasPos: onnx.Input(g, lm.PositionIDs) != nil}
	params, err := paramInputs(g, o.ParamInputs)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	gen.params, gen.paramNames = params, map[string]bool{}
	for _, name := range o.ParamInputs {
		gen.paramNames[name] = true
	}
	gen.sess, err = openSession(m, outputs, o.sessionOptions())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out, err := gen.runFull([][]int64{{0, 0}})
	if err != nil {
		gen.Close()
		return nil, fmt.Errorf("%s: probe run: %w", path, err)
	}
	gen.vocab = len(out[NextLogitsOutput].F32)
	return gen, nil
}

// paramInputs turns the named initializers of g into graph inputs of the same shapes
// and returns their feeds, viewing the initializers' values (no copy where the data
// allows). Names the pruned graph no longer reads are left out.
func paramInputs(g *onnxpb.GraphProto, names []string) (map[string]*ort.Tensor, error) {
	feeds := make(map[string]*ort.Tensor, len(names))
	for _, name := range names {
		t := onnx.RemoveInitializer(g, name)
		if t == nil {
			continue // not needed for the next-token logits
		}
		data, ok := onnx.FloatsView(t)
		if !ok {
			var err error
			if data, err = onnx.TensorFloats(t); err != nil {
				return nil, fmt.Errorf("parameter input %q: %w", name, err)
			}
		}
		shape := slices.Clone(t.GetDims())
		if onnx.Input(g, name) == nil {
			dims := make([]onnx.Dim, len(shape))
			for i, d := range shape {
				dims[i] = onnx.DimValue(d)
			}
			if err := onnx.AddInput(g, name, onnx.Float, dims); err != nil {
				return nil, err
			}
		}
		w, err := ort.NewFloatTensor(shape, data)
		if err != nil {
			return nil, fmt.Errorf("parameter input %q: %w", name, err)
		}
		feeds[name] = w
	}
	return feeds, nil
}

// SetParams feeds values, of the given shapes, to the named parameter inputs
// (GeneratorOptions.ParamInputs) on every later run, without copying them: values changed
// in place (by an optimizer step) are what the next Generate samples from. They must not
// change during a Generate. Inputs not named keep their values; those the next-token
// logits do not need (pruned from the graph) are ignored. A name not among ParamInputs,
// or a shape other than the initializer's, is an error, and then nothing is set.
func (gen *Generator) SetParams(names []string, shapes [][]int64, values [][]float32) error {
	if len(shapes) != len(names) || len(values) != len(names) {
		return fmt.Errorf("%s: set params: %d names, %d shapes, %d values", gen.Path, len(names), len(shapes), len(values))
	}
	set := map[string]*ort.Tensor{}
	for i, name := range names {
		if !gen.paramNames[name] {
			return fmt.Errorf("%s: set params: %q is not a parameter input of the generator", gen.Path, name)
		}
		cur, ok := gen.params[name]
		if !ok {
			continue
		}
		if !slices.Equal(shapes[i], cur.Shape) {
			return fmt.Errorf("%s: set params: %q has shape %v, the model's is %v", gen.Path, name, shapes[i], cur.Shape)
		}
		t, err := ort.NewFloatTensor(shapes[i], values[i])
		if err != nil {
			return fmt.Errorf("%s: set params: %q: %w", gen.Path, name, err)
		}
		set[name] = t
	}
	maps.Copy(gen.params, set)
	return nil
}

// run runs the session with feeds and the parameter inputs; into are output buffers
// (Session.Run).
func (gen *Generator) run(feeds, into map[string]*ort.Tensor) (map[string]*ort.Tensor, error) {
	for name, t := range gen.params {
		feeds[name] = t
	}
	start := time.Now()
	defer func() {
		gen.stats.Runs, gen.stats.RunSeconds = gen.stats.Runs+1, gen.stats.RunSeconds+time.Since(start).Seconds()
	}()
	return gen.sess.Run(feeds, into)
}

// Close releases the ONNX Runtime session.
func (gen *Generator) Close() {
	if gen.sess != nil {
		gen.sess.Destroy()
		gen.sess = nil
	}
}

// VocabSize is the width of the model's logits.
func (gen *Generator) VocabSize() int { return gen.vocab }

// CacheMode says how the generator decodes: "export" (the model's own KV cache),
// "derived" (a cache added by graph surgery) or "none" (each step re-runs the sequence).
func (gen *Generator) CacheMode() string { return gen.mode }

// appendNextLogitsHead adds GenIndexInput and NextLogitsOutput: the float32 logits at one
// position per row. When the final projection is recognised only the gathered hidden
// states are projected, so [batch, seq, vocab] logits are never formed.
func appendNextLogitsHead(m *onnx.Model) error {
	g := m.Graph()
	if err := onnx.AddInput(g, GenIndexInput, onnx.Int64, []onnx.Dim{onnx.DimParam("batch")}); err != nil {
		return err
	}
	b := onnx.NewBuilder(g, m.Opset(""), "ortalign_gen")
	logitsType, _, _ := onnx.TensorType(onnx.Output(g, lm.LogitsOutput))
	gather := func(x string) string { // x [batch, seq, width] -> [batch, width] at GenIndexInput
		idx := b.Unsqueeze(GenIndexInput, []int64{1, 2})
		shape := b.Concat(0, b.Shape(GenIndexInput), b.ConstInt64s([]int64{1}), b.Slice(b.Shape(x), []int64{2}, []int64{3}, []int64{0}, nil))
		return b.Squeeze(b.GatherElements(x, b.Expand(idx, shape), 1), []int64{1})
	}
	var logits string
	if head, ok := lm.FindLMHead(g); ok {
		logits = b.MatMul(gather(head.Hidden), head.Weight)
		if head.Bias != "" {
			logits = b.Add(logits, head.Bias)
		}
	} else {
		logits = gather(lm.LogitsOutput)
	}
	if logitsType != onnx.Float {
		logits = b.Cast(logits, onnx.Float)
	}
	lm.AddIdentity(g, logits, NextLogitsOutput)
	if err := onnx.AddOutput(g, NextLogitsOutput, onnx.Float, []onnx.Dim{onnx.DimParam("batch"), onnx.DimParam("vocab")}); err != nil {
		return err
	}
	lm.AddIdentity(g, b.ReduceLogSumExp(b.Cast(NextLogitsOutput, onnx.Double), []int64{1}, false), NextLogZOutput)
	return onnx.AddOutput(g, NextLogZOutput, onnx.Double, []onnx.Dim{onnx.DimParam("batch")})
}

// newExportCached uses the KV cache of an optimum-style export: present.* outputs
// matching the past_key_values.* inputs.
func newExportCached(path string, m *onnx.Model, pasts []lm.PastInput, o GeneratorOptions) (*Generator, error) {
	g := m.Graph()
	if !isFloatModel(g) {
		return nil, errors.New("the cache is fed from Go as float32; the model's logits are not float32")
	}
	if onnx.Input(g, lm.AttentionMask) == nil {
		return nil, errors.New("no attention_mask input")
	}
	var cps []cachePast
	for _, p := range pasts {
		present := presentName(p.Name)
		if onnx.Output(g, present) == nil {
			return nil, fmt.Errorf("no output %q for input %q", present, p.Name)
		}
		cps = append(cps, cachePast{name: p.Name, present: present, dims: p.Dims, batchAxis: 0, seqAxis: 2})
	}
	if !hasGQA(g) {
		return newGenerator(path, m, cacheKind{pasts: cps, cached: true, mode: "export"}, o)
	}
	return newGQAExport(path, m, cps, o)
}

func presentName(past string) string {
	if strings.HasPrefix(past, "past_key_values") {
		return "present" + strings.TrimPrefix(past, "past_key_values")
	}
	return "present" + strings.TrimPrefix(past, "past")
}

func isFloatModel(g *onnxpb.GraphProto) bool {
	dt, _, _ := onnx.TensorType(onnx.Output(g, lm.LogitsOutput))
	return dt == onnx.Float
}

// genRow is one (prompt, return index) row being generated.
type genRow struct {
	prompt, out []int64
	logps       []float64
	seen        map[int64]struct{}
	rng         *rand.Rand
	done        bool
	reason      string
	text        string
	pi, ri      int
}

// Stats describes a generator's last Generate call.
type Stats struct {
	// Tokens are the tokens sampled, Runs the ONNX Runtime runs (prefills and steps).
	Tokens, Runs int
	// Seconds is the call's wall time, RunSeconds the part of it spent in the runs.
	Seconds, RunSeconds float64
}

// Stats describes the last Generate call.
func (gen *Generator) Stats() Stats { return gen.stats }

// Generate completes every prompt o.NumReturnSequences times, in batches of at most
// o.BatchSize rows (all of them when 0). The completions come back in prompt order, then
// return index. It stops between decoding steps when ctx is cancelled, returning ctx's
// error.
func (gen *Generator) Generate(ctx context.Context, prompts []Prompt, o SampleOptions) ([]Completion, error) {
	start := time.Now()
	gen.stats = Stats{}
	defer func() { gen.stats.Seconds = time.Since(start).Seconds() }()
	if err := o.normalize(); err != nil {
		return nil, err
	}
	for _, p := range prompts {
		if len(p.IDs) == 0 {
			return nil, fmt.Errorf("prompt %d is empty: generation needs at least one prompt token", p.Index)
		}
		for t, id := range p.IDs {
			if id < 0 || id >= int64(gen.vocab) {
				return nil, fmt.Errorf("prompt %d position %d: token id %d outside the model's vocabulary [0, %d)", p.Index, t, id, gen.vocab)
			}
		}
	}
	var rows []*genRow
	for _, p := range prompts {
		for r := 0; r < o.NumReturnSequences; r++ {
			row := &genRow{prompt: p.IDs, seen: map[int64]struct{}{}, rng: rowSource(o.Seed, p.Index, r), pi: p.Index, ri: r}
			for _, id := range p.IDs {
				row.seen[id] = struct{}{}
			}
			if o.MaxNewTokens == 0 {
				row.done, row.reason = true, FinishLength
			}
			rows = append(rows, row)
		}
	}
	var err error
	if len(rows) > 0 && o.MaxNewTokens > 0 {
		err = gen.decode(ctx, rows, &o)
	} else {
		o.rowsDone(rows) // done before any decoding
	}
	if err != nil {
		return nil, err
	}
	out := make([]Completion, len(rows))
	for i, r := range rows {
		if o.Decode != nil && r.reason != FinishStop {
			if r.text, err = o.Decode(r.out); err != nil {
				return nil, err
			}
		}
		out[i] = Completion{PromptIndex: r.pi, ReturnIndex: r.ri, IDs: r.out, Logps: r.logps, FinishReason: r.reason, Text: r.text}
		gen.stats.Tokens += len(r.out)
		if out[i].IDs == nil {
			out[i].IDs, out[i].Logps = []int64{}, []float64{}
		}
	}
	return out, nil
}

// decode completes rows: with the in-place cache in slots of o.BatchSize rows (a finished
// row's slot taking the next row), else in consecutive batches of o.BatchSize rows.
func (gen *Generator) decode(ctx context.Context, rows []*genRow, o *SampleOptions) error {
	if gen.inPlace {
		return gen.decodeSlots(ctx, rows, o)
	}
	size := len(rows)
	if o.BatchSize > 0 {
		size = o.BatchSize
	}
	for batch := range slices.Chunk(rows, size) {
		var err error
		if gen.cached {
			err = gen.decodeCached(ctx, batch, o)
		} else {
			err = gen.decodeFull(ctx, batch, o)
		}
		if err != nil {
			return err
		}
		o.rowsDone(batch)
	}
	return nil
}

// advance samples the next token of every unfinished row from the run's next-token
// logits (row i of rows is row i of them) and records finishes. Rows are sampled in
// parallel, each from its own source, so the tokens do not depend on the order.
func (gen *Generator) advance(rows []*genRow, out map[string]*ort.Tensor, o *SampleOptions) error {
	logits, logz := out[NextLogitsOutput].F32, out[NextLogZOutput].F64
	v := gen.vocab
	toks, logps := make([]int64, len(rows)), make([]float64, len(rows))
	var todo []int
	for i, r := range rows {
		if !r.done {
			todo = append(todo, i)
		}
	}
	workers := min(len(todo), runtime.GOMAXPROCS(0))
	for len(gen.scratch) < workers {
		gen.scratch = append(gen.scratch, make([]float64, v))
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := gen.scratch[w]
			for k := w; k < len(todo); k += workers {
				i := todo[k]
				raw := logits[i*v : (i+1)*v]
				toks[i] = nextToken(buf, raw, logz[i], rows[i].seen, o, rows[i].rng)
				logps[i] = float64(raw[toks[i]]) - logz[i]
			}
		}()
	}
	wg.Wait()
	for _, i := range todo {
		r, tok := rows[i], toks[i]
		r.out = append(r.out, tok)
		r.logps = append(r.logps, logps[i])
		r.seen[tok] = struct{}{}
		switch {
		case slices.Contains(o.EOS, tok):
			r.done, r.reason = true, FinishEOS
		case len(o.Stop) > 0:
			text, err := o.Decode(r.out)
			if err != nil {
				return err
			}
			cut := -1
			for _, s := range o.Stop {
				if k := strings.Index(text, s); k >= 0 && (cut < 0 || k < cut) {
					cut = k
				}
			}
			if cut >= 0 {
				r.done, r.reason, r.text = true, FinishStop, text[:cut]
			}
		}
		if !r.done && len(r.out) >= o.MaxNewTokens {
			r.done, r.reason = true, FinishLength
		}
	}
	return nil
}

func allDone(rows []*genRow) bool {
	for _, r := range rows {
		if !r.done {
			return false
		}
	}
	return true
}

// decodeFull generates without a cache: every step runs each unfinished row's whole
// sequence, right-padded, and reads the logits at its last token.
func (gen *Generator) decodeFull(ctx context.Context, rows []*genRow, o *SampleOptions) error {
	for !allDone(rows) {
		if err := ctx.Err(); err != nil {
			return err
		}
		var active []*genRow
		var seqs [][]int64
		for _, r := range rows {
			if !r.done {
				active = append(active, r)
				seqs = append(seqs, append(slices.Clip(r.prompt), r.out...))
			}
		}
		out, err := gen.runFull(seqs)
		if err != nil {
			return gen.runError(len(seqs), seqs, err)
		}
		if err := gen.advance(active, out, o); err != nil {
			return err
		}
	}
	return nil
}

func (gen *Generator) runError(batch int, seqs [][]int64, err error) error {
	width := 0
	for _, s := range seqs {
		width = max(width, len(s))
	}
	return fmt.Errorf("%s: batch of %d sequences of up to %d tokens (longer than the model's positions?): %w", gen.Path, batch, width, err)
}

// runFull runs whole sequences, right-padded, with an empty past, and fetches the logits
// at each row's last token.
func (gen *Generator) runFull(seqs [][]int64) (map[string]*ort.Tensor, error) {
	feeds, index, width := paddedFeeds(seqs, gen.hasMask, gen.hasPos)
	feeds[GenIndexInput] = ort.MustInt64Tensor([]int64{int64(len(seqs))}, index)
	if gen.lengths {
		feedLengths(feeds, index, int64(width))
	}
	for _, p := range gen.pasts {
		feeds[p.name] = p.empty(len(seqs))
	}
	return gen.run(feeds, nil)
}

// paddedFeeds lays seqs out right-padded as input_ids and, when asked, attention_mask
// and position_ids (0, 1, ...), and returns each row's last position and the width.
func paddedFeeds(seqs [][]int64, mask, positions bool) (feeds map[string]*ort.Tensor, last []int64, width int) {
	for _, s := range seqs {
		width = max(width, len(s))
	}
	n := len(seqs)
	ids, att, pos := make([]int64, n*width), make([]int64, n*width), make([]int64, n*width)
	last = make([]int64, n)
	for i, s := range seqs {
		for t := 0; t < width; t++ {
			pos[i*width+t] = int64(t)
			if t < len(s) {
				ids[i*width+t], att[i*width+t] = s[t], 1
			}
		}
		last[i] = int64(len(s) - 1)
	}
	shape := []int64{int64(n), int64(width)}
	feeds = map[string]*ort.Tensor{lm.InputIDs: ort.MustInt64Tensor(shape, ids)}
	if mask {
		feeds[lm.AttentionMask] = ort.MustInt64Tensor(shape, att)
	}
	if positions {
		feeds[lm.PositionIDs] = ort.MustInt64Tensor(shape, pos)
	}
	return feeds, last, width
}
