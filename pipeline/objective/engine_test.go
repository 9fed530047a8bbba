package objective

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"ortalign/onnx"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/progress"
)

const engineModel = "../../testdata/models/llama_opset17.onnx"

// enginePairs returns 8 distinct pairs with reference log-probs: the Llama oracle's 4
// padded pairs, then the same 4 with chosen and rejected (and their references) swapped
// and the references shifted, so that their rewards differ.
func enginePairs(t *testing.T) ([]encode.EncodedPair, int64) {
	t.Helper()
	var o dpoOracle
	readOracle(t, "../../testdata/expected/dpo_grads_llama.json.gz", &o)
	pairs, refC, refR := oracleBatch(&o)
	n := len(pairs)
	all := WithReference(pairs, refC, refR)
	swapped := make([]encode.EncodedPair, n)
	c, r := make([]float64, n), make([]float64, n)
	for i, p := range pairs {
		swapped[i] = encode.EncodedPair{Index: n + i, Chosen: p.Rejected, Rejected: p.Chosen}
		c[i], r[i] = refR[i]+0.5*float64(i), refC[i]-0.25
	}
	return append(all, WithReference(swapped, c, r)...), o.PadID
}

// newEngine builds a DPO (sigmoid) engine on the tiny Llama.
func newEngine(t *testing.T, cfg engine.TrainConfig, beta float64) *engine.Engine[encode.EncodedPair] {
	t.Helper()
	m, err := onnx.Load(engineModel)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Threads == 0 {
		cfg.Threads = 1
	}
	e, err := engine.NewEngine(engineModel, m, cfg, DPO{Loss: LossConfig{Type: LossSigmoid, Beta: beta}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

func cloneBuffers(b [][]float32) [][]float32 {
	out := make([][]float32, len(b))
	for i, x := range b {
		out[i] = slices.Clone(x)
	}
	return out
}

// relL2f32 is ‖got − want‖ / ‖want‖.
func relL2f32(got, want []float32) float64 {
	var num, den float64
	for i := range want {
		d := float64(got[i]) - float64(want[i])
		num += d * d
		den += float64(want[i]) * float64(want[i])
	}
	return math.Sqrt(num / math.Max(den, 1e-30))
}

// relDiff is |a − b| / max(|b|, 1).
func relDiff(a, b float64) float64 { return math.Abs(a-b) / math.Max(math.Abs(b), 1) }

// split cuts items into micro-batches of the given sizes.
func split[T any](items []T, sizes ...int) [][]T {
	var out [][]T
	lo := 0
	for _, n := range sizes {
		out = append(out, items[lo:lo+n])
		lo += n
	}
	return out
}

// TestAccumulationEqualsOneBatch: one optimizer step over micro-batches of 4+4 or 3+3+2
// pairs gives the gradient, metrics and updated weights of one batch of 8 (micro-batches
// weighted by their number of pairs), with SGD and AdamW.
func TestAccumulationEqualsOneBatch(t *testing.T) {
	pairs, pad := enginePairs(t)
	metricNames := []string{"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
		"logps/chosen", "logps/rejected", "grad_norm"}
	for _, opt := range []struct {
		name string
		lr   float64
		// AdamW's first step moves each weight by about lr·sign(g): a gradient entry that
		// is a near-cancelling sum of micro-batch parts may flip, so its update is
		// compared in L2 over the tensor with a looser bound (measured: ≤ 2.1e-4).
		paramTol float64
	}{{engine.OptimSGD, 1, 1e-5}, {engine.OptimAdamW, 1e-3, 1e-3}} {
		cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: opt.name, WeightDecay: 0.01}, LR: opt.lr, BatchSize: 8, PadID: pad}
		one := newEngine(t, cfg, 0.1)
		start := cloneBuffers(one.Params())
		want, err := one.StepOn([][]encode.EncodedPair{pairs}, opt.lr)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			batch, accum int
			sizes        []int
		}{
			{4, 2, []int{4, 4}},
			{3, 3, []int{3, 3, 2}},
		} {
			t.Run(fmt.Sprintf("%s/%dx%d", opt.name, tc.batch, tc.accum), func(t *testing.T) {
				c := cfg
				c.BatchSize, c.GradAccum = tc.batch, tc.accum
				e := newEngine(t, c, 0.1)
				got, err := e.StepOn(split(pairs, tc.sizes...), opt.lr)
				if err != nil {
					t.Fatal(err)
				}
				for _, name := range metricNames {
					g, okG := got.Get(name)
					w, okW := want.Get(name)
					if !okG || !okW {
						t.Fatalf("metric %s missing: accumulated %v, one batch %v", name, got, want)
					}
					if relDiff(g, w) > 1e-5 {
						t.Errorf("%s: accumulated %.8g, one batch %.8g", name, g, w)
					}
				}
				for i, name := range e.Trainable() {
					if r := relL2f32(e.Grads()[i], one.Grads()[i]); r > 1e-5 {
						t.Errorf("%s: gradient relative L2 %.2e", name, r)
					}
					// Compare the updates (new − old), not the weights, so the bound is on
					// what the step did.
					du, dw := make([]float32, len(start[i])), make([]float32, len(start[i]))
					for k := range du {
						du[k] = e.Params()[i][k] - start[i][k]
						dw[k] = one.Params()[i][k] - start[i][k]
					}
					if r := relL2f32(du, dw); r > opt.paramTol {
						t.Errorf("%s: update relative L2 %.2e", name, r)
					}
				}
				if e.Step() != 1 {
					t.Errorf("step %d after one StepOn", e.Step())
				}
			})
		}
	}
}

// TestPlan: micro-batches and optimizer steps per epoch and in all, with accumulation.
func TestPlan(t *testing.T) {
	for _, tc := range []struct {
		items, batch, accum, epochs, maxSteps int
		micro, perEpoch, total, wantAccum     int
	}{
		{10, 3, 2, 1, 0, 4, 2, 2, 2},
		{10, 3, 2, 3, 0, 4, 2, 6, 2},
		{10, 3, 2, 3, 5, 4, 2, 5, 2}, // max steps overrides epochs
		{8, 4, 2, 1, 0, 2, 1, 1, 2},
		{8, 3, 3, 1, 0, 3, 1, 1, 3},
		{8, 3, 0, 0, 0, 3, 3, 3, 1}, // accumulation 0 and epochs 0 mean 1
		{1, 8, 4, 2, 0, 1, 1, 2, 4},
		{9, 2, 4, 1, 0, 5, 2, 2, 4}, // the last step has one micro-batch
	} {
		cfg := engine.TrainConfig{BatchSize: tc.batch, GradAccum: tc.accum, Epochs: tc.epochs, MaxSteps: tc.maxSteps}
		p, err := cfg.Plan(tc.items)
		if err != nil {
			t.Fatal(err)
		}
		want := engine.Plan{Items: tc.items, BatchSize: tc.batch, Accum: tc.wantAccum, MicroPerEpoch: tc.micro, StepsPerEpoch: tc.perEpoch, Total: tc.total}
		if p != want {
			t.Errorf("%d items, batch %d, accum %d, epochs %d, max steps %d: %+v, want %+v", tc.items, tc.batch, tc.accum, tc.epochs, tc.maxSteps, p, want)
		}
	}
	if _, err := (engine.TrainConfig{BatchSize: 2}).Plan(0); err == nil || !strings.Contains(err.Error(), "no training items") {
		t.Errorf("0 items: want an error about no training items, got %v", err)
	}
}

// hfLambda is the multiplier of Hugging Face's schedulers (transformers.optimization)
// for the 0-based optimizer step, written from their definitions:
//
//	get_constant_schedule:             1
//	get_constant_schedule_with_warmup: step/max(1, warm) while step < warm, then 1
//	get_linear_schedule_with_warmup:   warm-up, then max(0, (total−step)/max(1, total−warm))
//	get_cosine_schedule_with_warmup:   warm-up, then max(0, ½(1 + cos(π·2·0.5·progress))),
//	                                   progress = (step−warm)/max(1, total−warm)
func hfLambda(scheduler string, step, warm, total int) float64 {
	if scheduler == "constant" {
		return 1
	}
	if step < warm {
		return float64(step) / math.Max(1, float64(warm))
	}
	switch scheduler {
	case "linear":
		return math.Max(0, float64(total-step)/math.Max(1, float64(total-warm)))
	case "cosine":
		prog := float64(step-warm) / math.Max(1, float64(total-warm))
		const cycles = 0.5
		return math.Max(0, 0.5*(1+math.Cos(math.Pi*cycles*2*prog)))
	}
	return 1
}

// TestLearningRateMatchesHuggingFace: the engine's schedules against Hugging Face's
// formulas, at hand-computed points and over whole runs; warmup_ratio becomes
// ceil(ratio·total) steps (TrainingArguments.get_warmup_steps).
func TestLearningRateMatchesHuggingFace(t *testing.T) {
	const lr = 2e-3
	for _, tc := range []struct {
		scheduler  string
		warmSteps  int
		warmRatio  float64
		total      int
		step       int
		wantFactor float64 // lr / peak, by hand
	}{
		{"constant", 0, 0, 10, 0, 1},
		{"constant", 3, 0, 10, 0, 1}, // HF's constant schedule ignores warm-up
		{"", 0, 0, 10, 9, 1},
		{"constant_with_warmup", 4, 0, 10, 0, 0},
		{"constant_with_warmup", 4, 0, 10, 1, 0.25},
		{"constant_with_warmup", 4, 0, 10, 4, 1},
		{"constant_with_warmup", 4, 0, 10, 9, 1},
		{"linear", 0, 0, 10, 0, 1},
		{"linear", 0, 0, 10, 9, 0.1},
		{"linear", 2, 0, 10, 1, 0.5},
		{"linear", 2, 0, 10, 2, 1},
		{"linear", 2, 0, 10, 6, 0.5},
		{"linear", 2, 0, 10, 10, 0},
		{"linear", 0, 0.25, 8, 1, 0.5},       // ceil(0.25·8) = 2 warm-up steps
		{"linear", 0, 0.1, 25, 2, 2.0 / 3},   // ceil(2.5) = 3
		{"linear", 0, 0.1, 25, 3, 1},         //
		{"linear", 0, 0.1, 30, 2, 2.0 / 3},   // ceil(3) = 3
		{"linear", 0, 0.07, 100, 7, 7.0 / 8}, // 0.07·100 is 7.000000000000001 in float64: ceil gives 8, as in Python
		{"cosine", 0, 0, 10, 0, 1},           //
		{"cosine", 0, 0, 10, 5, 0.5},         // cos(π/2)
		{"cosine", 2, 0, 10, 1, 0.5},         //
		{"cosine", 2, 0, 10, 6, 0.5},         // progress 4/8
		{"cosine", 2, 0, 10, 4, 0.85355339},  // ½(1+cos(π/4))
		{"cosine", 0, 0.5, 3, 1, 0.5},        // ceil(1.5) = 2 warm-up steps
		{"cosine", 0, 0.5, 3, 2, 1},
	} {
		cfg := engine.TrainConfig{LR: lr, Scheduler: tc.scheduler, WarmupSteps: tc.warmSteps, WarmupRatio: tc.warmRatio}
		got := cfg.LearningRate(tc.step, tc.total)
		if math.Abs(got-lr*tc.wantFactor) > 1e-8*lr {
			t.Errorf("%q warm-up %d/%g, step %d of %d: lr %.10g, want %.10g", tc.scheduler, tc.warmSteps, tc.warmRatio, tc.step, tc.total, got, lr*tc.wantFactor)
		}
	}
	for _, sched := range []string{"constant", "constant_with_warmup", "linear", "cosine"} {
		for _, w := range []struct {
			steps int
			ratio float64
		}{{0, 0}, {1, 0}, {5, 0}, {40, 0}, {0, 0.1}, {0, 0.33}, {0, 1}} {
			for _, total := range []int{1, 7, 30} {
				cfg := engine.TrainConfig{LR: lr, Scheduler: sched, WarmupSteps: w.steps, WarmupRatio: w.ratio}
				warm := w.steps
				if warm == 0 {
					warm = int(math.Ceil(float64(total) * w.ratio))
				}
				if got := cfg.Warmup(total); got != warm {
					t.Errorf("warm-up %d/%g of %d steps: %d, want %d", w.steps, w.ratio, total, got, warm)
				}
				for step := 0; step < total; step++ {
					want := lr * hfLambda(sched, step, warm, total)
					if got := cfg.LearningRate(step, total); math.Abs(got-want) > 1e-12 {
						t.Errorf("%s warm-up %d/%g, step %d of %d: lr %.10g, HF %.10g", sched, w.steps, w.ratio, step, total, got, want)
					}
				}
			}
		}
	}
}

// TestEvaluateIsForwardOnly: Evaluate leaves the gradient buffers alone, and its metrics
// equal those of ComputeGradients on the same pairs; over micro-batches (8 pairs in 3, 3,
// 2) they are the pair-weighted mean, i.e. the metrics of the whole batch.
func TestEvaluateIsForwardOnly(t *testing.T) {
	pairs, pad := enginePairs(t)
	e := newEngine(t, engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW}, LR: 1e-3, BatchSize: 4, PadID: pad}, 0.1)
	if _, err := e.ComputeGradients(pairs[:4]); err != nil {
		t.Fatal(err)
	}
	const sentinel = float32(-12345.5)
	for _, g := range e.Grads() {
		for k := range g {
			g[k] = sentinel
		}
	}
	params := cloneBuffers(e.Params())
	eval, err := e.Evaluate(context.Background(), pairs[4:])
	if err != nil {
		t.Fatal(err)
	}
	for i, g := range e.Grads() {
		for k, v := range g {
			if v != sentinel {
				t.Fatalf("Evaluate wrote gradient %s[%d] = %v", e.Trainable()[i], k, v)
			}
		}
	}
	for i, p := range e.Params() {
		if !slices.Equal(p, params[i]) {
			t.Fatalf("Evaluate changed parameter %s", e.Trainable()[i])
		}
	}
	if e.Step() != 0 {
		t.Fatalf("Evaluate took an optimizer step (%d)", e.Step())
	}
	want, err := e.ComputeGradients(pairs[4:])
	if err != nil {
		t.Fatal(err)
	}
	checkSame := func(label string, got, want engine.Metrics) {
		t.Helper()
		for _, name := range []string{"loss", "logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected", "rewards/accuracies"} {
			g, okG := got.Get(name)
			w, okW := want.Get(name)
			if !okG || !okW || relDiff(g, w) > 1e-6 {
				t.Errorf("%s %s: evaluate %.9g (%v), compute gradients %.9g (%v)", label, name, g, okG, w, okW)
			}
		}
		if _, ok := got.Get("grad_norm"); ok {
			t.Errorf("%s: evaluation reports grad_norm", label)
		}
	}
	checkSame("4 pairs", eval, want)

	// 8 pairs: Evaluate runs micro-batches of the training batch size (3, 3, 2).
	e3 := newEngine(t, engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1, BatchSize: 3, PadID: pad}, 0.1)
	eval8, err := e3.Evaluate(context.Background(), pairs)
	if err != nil {
		t.Fatal(err)
	}
	want8, err := e3.ComputeGradients(pairs)
	if err != nil {
		t.Fatal(err)
	}
	checkSame("8 pairs in micro-batches of 3", eval8, want8)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.Evaluate(ctx, pairs); err == nil || !strings.Contains(err.Error(), "canceled") {
		t.Errorf("cancelled evaluation: want context.Canceled, got %v", err)
	}
}

// checkpointFile is a checkpoint's parts, for making damaged copies.
type checkpointFile struct {
	magic  string
	header map[string]any // the JSON header, decoded generically
	data   []byte         // the float32 arrays
}

func readCheckpointFile(t *testing.T, path string) checkpointFile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const magic = "ORTALIGN-CHECKPOINT-3\n"
	if !bytes.HasPrefix(b, []byte(magic)) {
		t.Fatalf("checkpoint starts %q, want %q", b[:min(len(b), len(magic))], magic)
	}
	n := binary.LittleEndian.Uint64(b[len(magic):])
	hdr := b[len(magic)+8 : len(magic)+8+int(n)]
	var h map[string]any
	if err := json.Unmarshal(hdr, &h); err != nil {
		t.Fatal(err)
	}
	// The header's CRC-32C follows it; data is the arrays with their checksums.
	return checkpointFile{magic: magic, header: h, data: b[len(magic)+8+int(n)+4:]}
}

// bytes assembles the file, with the header's length field as written.
func (c checkpointFile) bytes(t *testing.T) []byte {
	t.Helper()
	hdr, err := json.Marshal(c.header)
	if err != nil {
		t.Fatal(err)
	}
	return c.raw(hdr, uint64(len(hdr)))
}

func (c checkpointFile) raw(hdr []byte, n uint64) []byte {
	var buf bytes.Buffer
	buf.WriteString(c.magic)
	binary.Write(&buf, binary.LittleEndian, n)
	buf.Write(hdr)
	binary.Write(&buf, binary.LittleEndian, crc32.Checksum(hdr, crc32.MakeTable(crc32.Castagnoli)))
	buf.Write(c.data)
	return buf.Bytes()
}

// edit returns a copy of the checkpoint with f applied to a deep copy of its header.
func (c checkpointFile) edit(f func(h map[string]any)) checkpointFile {
	b, _ := json.Marshal(c.header)
	var h map[string]any
	_ = json.Unmarshal(b, &h)
	f(h)
	c.header = h
	return c
}

// trainCheckpoint runs 2 steps with a checkpoint (and a metrics file) in a new directory.
func trainCheckpoint(t *testing.T, cfg engine.TrainConfig, beta float64, items []encode.EncodedPair) (dir string, e *engine.Engine[encode.EncodedPair]) {
	t.Helper()
	dir = t.TempDir()
	e = newEngine(t, cfg, beta)
	if err := e.Train(context.Background(), items, engine.RunConfig[encode.EncodedPair]{
		Checkpoint: filepath.Join(dir, "checkpoint.bin"), MetricsPath: filepath.Join(dir, "metrics.jsonl"),
	}); err != nil {
		t.Fatal(err)
	}
	if e.Step() != cfg.MaxSteps {
		t.Fatalf("trained %d steps, want %d", e.Step(), cfg.MaxSteps)
	}
	return dir, e
}

// trainNoPanic calls Train, turning a panic into an error.
func trainNoPanic(e *engine.Engine[encode.EncodedPair], items []encode.EncodedPair, rc engine.RunConfig[encode.EncodedPair]) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("PANIC: %v", r)
		}
	}()
	return e.Train(context.Background(), items, rc)
}

// TestDamagedCheckpointIsAnError: every kind of damage to a checkpoint is an error
// naming it; nothing is restored (parameters, step) and the metrics file is not cut.
func TestDamagedCheckpointIsAnError(t *testing.T) {
	pairs, pad := enginePairs(t)
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW}, LR: 1e-3, BatchSize: 4, MaxSteps: 2, Seed: 3, Shuffle: true, PadID: pad}
	dir, trained := trainCheckpoint(t, cfg, 0.1, pairs)
	ckpt := readCheckpointFile(t, filepath.Join(dir, "checkpoint.bin"))
	// The variants re-encode the header (keys in another order): the "valid" subtest
	// checks that the re-encoded file loads, so each variant fails for its damage only.
	valid := ckpt.bytes(t)
	original, err := os.ReadFile(filepath.Join(dir, "checkpoint.bin"))
	if err != nil {
		t.Fatal(err)
	}
	names := ckpt.header["names"].([]any)
	sizes := ckpt.header["sizes"].([]any)
	name0 := names[0].(string)
	size0 := int(sizes[0].(float64))
	hdr, _ := json.Marshal(ckpt.header)

	setHeader := func(key string, v any) []byte {
		return ckpt.edit(func(h map[string]any) { h[key] = v }).bytes(t)
	}
	replaceName := slices.Clone(names)
	replaceName[0] = "not.a.weight"
	bumped := slices.Clone(sizes)
	bumped[0] = float64(size0 + 1)
	badJSON := slices.Clone(hdr)
	badJSON[0] = '['
	// One engine tries every damaged file: a failed load must leave it as it was.
	e := newEngine(t, cfg, 0.1)
	before := cloneBuffers(e.Params())
	for _, tc := range []struct {
		name string
		file []byte
		want string
	}{
		{"version 1", append([]byte("ORTALIGN-CHECKPOINT-1\n"), valid[len(ckpt.magic):]...), `format "1", this ortalign reads versions 2 and 3`},
		{"version 4", append([]byte("ORTALIGN-CHECKPOINT-4\n"), valid[len(ckpt.magic):]...), `format "4", this ortalign reads versions 2 and 3`},
		{"not a checkpoint", []byte("PK\x03\x04 this is a zip file, not a checkpoint at all"), "not an ortalign checkpoint"},
		{"empty", nil, "not an ortalign checkpoint"},
		{"magic only", valid[:len(ckpt.magic)], "bad header length"},
		{"sizes shorter than names", setHeader("sizes", sizes[:len(sizes)-1]), fmt.Sprintf("header lists %d tensor names but %d sizes", len(names), len(sizes)-1)},
		{"no sizes", setHeader("sizes", nil), fmt.Sprintf("header lists %d tensor names but 0 sizes", len(names))},
		{"another tensor name", setHeader("names", replaceName), "written for another model or trainable set"},
		{"a tensor fewer", ckpt.edit(func(h map[string]any) { h["names"], h["sizes"] = names[1:], sizes[1:] }).bytes(t),
			fmt.Sprintf("another model or trainable set (%d tensors, this run trains %d)", len(names)-1, len(names))},
		{"a size changed", setHeader("sizes", bumped), fmt.Sprintf("tensor %q has %d values, the model %d", name0, size0+1, size0)},
		{"other optimizer", ckpt.edit(func(h map[string]any) { h["optimizer"], h["moments"] = "sgd", false }).bytes(t), "written for optimizer sgd, this run uses adamw"},
		{"moments missing", setHeader("moments", false), "moments recorded false"},
		{"truncated data", valid[:len(valid)-100], fmt.Sprintf("holds %d bytes of tensor data and checksums, its header describes %d (truncated or damaged)", len(ckpt.data)-100, len(ckpt.data))},
		{"no data", valid[:len(valid)-len(ckpt.data)], fmt.Sprintf("holds 0 bytes of tensor data and checksums, its header describes %d", len(ckpt.data))},
		{"extra trailing bytes", append(slices.Clone(valid), 1, 2, 3, 4, 5, 6, 7, 8), fmt.Sprintf("holds %d bytes of tensor data and checksums, its header describes %d (truncated or damaged)", len(ckpt.data)+8, len(ckpt.data))},
		{"huge header length", ckpt.raw(hdr, 1<<40), "bad header length"},
		{"header length beyond the file", ckpt.raw(hdr, uint64(len(valid))+1), "bad header length"},
		{"file ends in the header", valid[:len(ckpt.magic)+8+len(hdr)/2], "bad header length"},
		{"header cut short", valid[:len(ckpt.magic)+8+len(hdr)-5], "truncated header"},
		{"header length too long", ckpt.raw(hdr, uint64(len(hdr))+7), "header: "},
		{"header length too short", ckpt.raw(hdr, uint64(len(hdr))-1), "header: CRC-32C"},
		{"invalid JSON header", ckpt.raw(badJSON, uint64(len(badJSON))), "header: invalid character"},
		{"header of the wrong type", setHeader("step", "two"), "header: json: cannot unmarshal string"},
		{"negative step", setHeader("step", -2), "negative step -2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			work := t.TempDir()
			path := filepath.Join(work, "checkpoint.bin")
			if err := os.WriteFile(path, tc.file, 0o644); err != nil {
				t.Fatal(err)
			}
			metrics := filepath.Join(work, "metrics.jsonl")
			metricsBefore := []byte("{\"loss\":1,\"step\":1}\n{\"loss\":1,\"step\":2}\n{\"loss\":1,\"step\":3}\n")
			if err := os.WriteFile(metrics, metricsBefore, 0o644); err != nil {
				t.Fatal(err)
			}
			err := trainNoPanic(e, pairs, engine.RunConfig[encode.EncodedPair]{Checkpoint: path, MetricsPath: metrics})
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.HasPrefix(err.Error(), "PANIC") {
				t.Fatalf("want an error containing %q, got %v", tc.want, err)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error does not name the file: %v", err)
			}
			for i, p := range e.Params() {
				if !slices.Equal(p, before[i]) {
					t.Fatalf("a failed load changed parameter %s", e.Trainable()[i])
				}
			}
			if e.Step() != 0 {
				t.Errorf("a failed load set the step to %d", e.Step())
			}
			if got, _ := os.ReadFile(metrics); !bytes.Equal(got, metricsBefore) {
				t.Errorf("a failed load changed metrics.jsonl to %q", got)
			}
			if got, _ := os.ReadFile(path); !bytes.Equal(got, tc.file) {
				t.Errorf("a failed load rewrote the checkpoint")
			}
		})
	}

	// The undamaged bytes load, as written and re-encoded: the engine gets the trained
	// weights and step.
	for name, file := range map[string][]byte{"valid": original, "valid re-encoded": valid} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "checkpoint.bin")
			if err := os.WriteFile(path, file, 0o644); err != nil {
				t.Fatal(err)
			}
			e := newEngine(t, cfg, 0.1)
			if err := trainNoPanic(e, pairs, engine.RunConfig[encode.EncodedPair]{Checkpoint: path}); err != nil {
				t.Fatal(err)
			}
			if e.Step() != 2 {
				t.Fatalf("resumed at step %d, want 2", e.Step())
			}
			for i, p := range e.Params() {
				if !slices.Equal(p, trained.Params()[i]) {
					t.Fatalf("resumed %s differs from the trained one", e.Trainable()[i])
				}
			}
		})
	}
}

// TestResumeWithChangedSettingsIsAnError: a checkpoint resumes only with the settings
// that wrote it; the error names the setting. The same settings resume, and a
// constant-schedule run may be extended.
func TestResumeWithChangedSettingsIsAnError(t *testing.T) {
	pairs, pad := enginePairs(t)
	base := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW}, LR: 1e-3, BatchSize: 2, MaxSteps: 2, Seed: 1, Shuffle: true, PadID: pad}
	dir, trained := trainCheckpoint(t, base, 0.1, pairs)
	ckpt, err := os.ReadFile(filepath.Join(dir, "checkpoint.bin"))
	if err != nil {
		t.Fatal(err)
	}
	metrics, err := os.ReadFile(filepath.Join(dir, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	// Two step lines, then the run's last line (train_runtime, no step).
	if n := bytes.Count(metrics, []byte("\n")); n != 3 || bytes.Count(metrics, []byte(`"step":`)) != 2 {
		t.Fatalf("metrics.jsonl has %d lines after 2 steps:\n%s", n, metrics)
	}
	// resume copies the first run's files to a new directory and resumes there.
	resume := func(t *testing.T, cfg engine.TrainConfig, beta float64, items []encode.EncodedPair, prog *progress.Progress) (*engine.Engine[encode.EncodedPair], string, error) {
		t.Helper()
		work := t.TempDir()
		for name, b := range map[string][]byte{"checkpoint.bin": ckpt, "metrics.jsonl": metrics} {
			if err := os.WriteFile(filepath.Join(work, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		e := newEngine(t, cfg, beta)
		err := trainNoPanic(e, items, engine.RunConfig[encode.EncodedPair]{Checkpoint: filepath.Join(work, "checkpoint.bin"),
			MetricsPath: filepath.Join(work, "metrics.jsonl"), Progress: prog})
		return e, work, err
	}
	with := func(f func(c *engine.TrainConfig)) engine.TrainConfig {
		c := base
		f(&c)
		return c
	}
	for _, tc := range []struct {
		name    string
		cfg     engine.TrainConfig
		beta    float64
		items   []encode.EncodedPair
		setting string // "" when the resume must succeed
		was, is string
	}{
		{"batch size", with(func(c *engine.TrainConfig) { c.BatchSize = 4 }), 0.1, pairs, "batch_size", "2", "4"},
		{"seed", with(func(c *engine.TrainConfig) { c.Seed = 2 }), 0.1, pairs, "seed", "1", "2"},
		{"accumulation", with(func(c *engine.TrainConfig) { c.GradAccum = 2 }), 0.1, pairs, "gradient_accumulation_steps", "1", "2"},
		{"beta", base, 0.2, pairs, "dpo.loss", "", ""},
		{"learning rate", with(func(c *engine.TrainConfig) { c.LR = 2e-3 }), 0.1, pairs, "learning_rate", "0.001", "0.002"},
		{"weight decay", with(func(c *engine.TrainConfig) { c.Optim.WeightDecay = 0.1 }), 0.1, pairs, "weight_decay", "0", "0.1"},
		{"shuffle", with(func(c *engine.TrainConfig) { c.Shuffle = false }), 0.1, pairs, "shuffle", "true", "false"},
		{"scheduler", with(func(c *engine.TrainConfig) { c.Scheduler = engine.SchedulerConstantWithWarmup; c.WarmupSteps = 1 }), 0.1, pairs, "lr_scheduler", "", ""},
		{"one pair removed", base, 0.1, pairs[:len(pairs)-1], "dataset_fingerprint", "8 items", "7 items"},
		{"same settings", base, 0.1, pairs, "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, work, err := resume(t, tc.cfg, tc.beta, tc.items, nil)
			if tc.setting == "" {
				if err != nil {
					t.Fatal(err)
				}
				if e.Step() != 2 {
					t.Fatalf("resumed at step %d, want 2", e.Step())
				}
				for i, p := range e.Params() {
					if !slices.Equal(p, trained.Params()[i]) {
						t.Fatalf("resumed %s differs from the checkpointed one", e.Trainable()[i])
					}
				}
				return
			}
			if err == nil {
				t.Fatalf("resumed with a different %s", tc.setting)
			}
			want := "setting " + tc.setting + " was " + tc.was
			if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "is "+tc.is) {
				t.Fatalf("want an error naming %q (was %q, is %q), got %v", tc.setting, tc.was, tc.is, err)
			}
			if e.Step() != 0 {
				t.Errorf("a refused resume set the step to %d", e.Step())
			}
			if got, _ := os.ReadFile(filepath.Join(work, "metrics.jsonl")); !bytes.Equal(got, metrics) {
				t.Errorf("a refused resume changed metrics.jsonl")
			}
		})
	}
	t.Run("optimizer", func(t *testing.T) {
		_, _, err := resume(t, with(func(c *engine.TrainConfig) { c.Optim.Name = engine.OptimSGD }), 0.1, pairs, nil)
		if err == nil || !strings.Contains(err.Error(), "optimizer adamw, this run uses sgd") {
			t.Fatalf("want an error naming the optimizer, got %v", err)
		}
	})

	// A constant schedule does not depend on the run's length: max steps may grow.
	t.Run("extend constant schedule", func(t *testing.T) {
		var prog bytes.Buffer
		p := &progress.Progress{Label: "dpo", Unit: "steps", Out: &prog}
		e, work, err := resume(t, with(func(c *engine.TrainConfig) { c.MaxSteps = 4 }), 0.1, pairs, p)
		if err != nil {
			t.Fatal(err)
		}
		if e.Step() != 4 {
			t.Fatalf("extended run stopped at step %d, want 4", e.Step())
		}
		// The first run's step lines as they were, its last line (train_runtime, no
		// step) dropped, steps 3 and 4, and the extended run's last line.
		got, _ := os.ReadFile(filepath.Join(work, "metrics.jsonl"))
		lines := strings.Split(strings.TrimSpace(string(got)), "\n")
		firstSteps := metrics[:bytes.LastIndex(metrics[:len(metrics)-1], []byte("\n"))+1]
		if len(lines) != 5 || !strings.HasPrefix(string(got), string(firstSteps)) {
			t.Fatalf("metrics.jsonl after extending to 4 steps:\n%s", got)
		}
		for k, line := range lines {
			var m map[string]float64
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatalf("line %d: %s (%v)", k+1, line, err)
			}
			_, runtime := m["train_runtime"]
			if step, ok := m["step"]; k < 4 && step != float64(k+1) || k == 4 && (ok || !runtime) {
				t.Fatalf("line %d: %s", k+1, line)
			}
		}
		out := prog.String()
		if !strings.Contains(out, "resuming from ") || !strings.Contains(out, "at step 2\n") {
			t.Errorf("progress does not say it resumed at step 2:\n%s", out)
		}
		if !strings.Contains(out, "dpo: 3/4 steps (75%)") || !strings.HasSuffix(out, "dpo: 4/4 steps (100%), "+rateOf(out)+" steps/s, ETA 0s\n") {
			t.Errorf("progress of the resumed run:\n%s", out)
		}
	})
	// A linear schedule's rates depend on the total: extending it is refused.
	t.Run("extend linear schedule", func(t *testing.T) {
		lin := with(func(c *engine.TrainConfig) { c.Scheduler = engine.SchedulerLinear })
		dir, _ := trainCheckpoint(t, lin, 0.1, pairs)
		e := newEngine(t, with(func(c *engine.TrainConfig) { c.Scheduler = engine.SchedulerLinear; c.MaxSteps = 4 }), 0.1)
		err := trainNoPanic(e, pairs, engine.RunConfig[encode.EncodedPair]{Checkpoint: filepath.Join(dir, "checkpoint.bin")})
		if err == nil || !strings.Contains(err.Error(), "setting total_steps was 2") || !strings.Contains(err.Error(), "is 4") {
			t.Fatalf("want an error naming total_steps, got %v", err)
		}
	})
}

// rateOf returns the rate text ("1.5") of the last progress line of out.
func rateOf(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	last := lines[len(lines)-1]
	if i := strings.LastIndex(last, " steps/s"); i >= 0 {
		if j := strings.LastIndex(last[:i], " "); j >= 0 {
			return last[j+1 : i]
		}
	}
	return "?"
}

// TestResumePastMaxStepsIsAnError: a checkpoint at step 2 resumed with max steps 1.
func TestResumePastMaxStepsIsAnError(t *testing.T) {
	pairs, pad := enginePairs(t)
	base := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW}, LR: 1e-3, BatchSize: 2, MaxSteps: 2, Seed: 1, Shuffle: true, PadID: pad}
	dir, _ := trainCheckpoint(t, base, 0.1, pairs)
	c := base
	c.MaxSteps = 1
	e := newEngine(t, c, 0.1)
	var buf bytes.Buffer
	err := e.Train(context.Background(), pairs, engine.RunConfig[encode.EncodedPair]{Checkpoint: filepath.Join(dir, "checkpoint.bin"), Progress: &progress.Progress{Label: "dpo", Unit: "steps", Out: &buf}})
	t.Logf("err %v, step %d, progress %q", err, e.Step(), buf.String())
	if err == nil {
		t.Fatal("a checkpoint beyond the run's max steps resumed silently")
	}
}
