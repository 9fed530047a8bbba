package objective

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/internal/srcdigest"
	"ortalign/onnx"
	"ortalign/onnx/autodiff"
	"ortalign/onnx/ort"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
)

// cachedEngine builds an engine on the model at path (loaded afresh, or m when given)
// with the training graph cached in dir.
func cachedEngine[T any](t *testing.T, path string, m *onnx.Model, dir string, cfg engine.TrainConfig, obj engine.Objective[T]) *engine.Engine[T] {
	t.Helper()
	if m == nil {
		m = loadModel(t, path)
	}
	cfg.GraphCache = dir
	e, err := engine.NewEngine(path, m, cfg, obj)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// readGraphMeta reads dir's cache sidecar.
func readGraphMeta(t *testing.T, dir string) engine.GraphCacheMeta {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, engine.GraphCacheMetaFile))
	if err != nil {
		t.Fatal(err)
	}
	var c engine.GraphCacheMeta
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// sameGraph fails unless the two engines' training graphs are equal in every field.
func sameGraph[T any](t *testing.T, got, want *engine.Engine[T]) {
	t.Helper()
	if !proto.Equal(got.TrainingGraph().Model.Proto(), want.TrainingGraph().Model.Proto()) {
		t.Error("the cached training model differs from the built one")
	}
	for _, f := range []struct {
		name      string
		got, want any
	}{
		{"Trainable", got.TrainingGraph().Trainable, want.TrainingGraph().Trainable},
		{"Ties", got.TrainingGraph().Ties, want.TrainingGraph().Ties},
		{"Outputs", got.TrainingGraph().Outputs, want.TrainingGraph().Outputs},
		{"Grads", got.TrainingGraph().Grads, want.TrainingGraph().Grads},
		{"Manifest", got.TrainingGraph().Manifest, want.TrainingGraph().Manifest},
		{"Checkpointed", got.TrainingGraph().Checkpointed, want.TrainingGraph().Checkpointed},
		{"Notices", got.TrainingGraph().Notices, want.TrainingGraph().Notices},
	} {
		if !reflect.DeepEqual(f.got, f.want) {
			t.Errorf("%s: cached %v, built %v", f.name, f.got, f.want)
		}
	}
}

// sameGradients fails unless the two engines give bit-identical metrics and gradients
// on batch.
func sameGradients[T any](t *testing.T, got, want *engine.Engine[T], batch []T) {
	t.Helper()
	mw, err := want.ComputeGradients(batch)
	if err != nil {
		t.Fatal(err)
	}
	mg, err := got.ComputeGradients(batch)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(mg, mw) {
		t.Errorf("metrics: cached graph %v, built graph %v", mg, mw)
	}
	if len(got.Grads()) != len(want.Grads()) {
		t.Fatalf("%d gradients, want %d", len(got.Grads()), len(want.Grads()))
	}
	for i, g := range want.Grads() {
		for j, v := range g {
			if math.Float32bits(got.Grads()[i][j]) != math.Float32bits(v) {
				t.Fatalf("grad of %s[%d]: cached graph %v, built graph %v", want.Trainable()[i], j, got.Grads()[i][j], v)
			}
		}
	}
}

// TestGraphCacheReused: a second engine with the same cache directory, model and
// options reuses the training graph the first one built — the same graph, field for
// field, and bit-identical loss, metrics and gradients — for a plain DPO engine, one
// with ties, frozen weights and gradient checkpointing, and a LoRA one. The cache holds
// no copy of the weights the graph keeps (frozen ones, the base under LoRA).
func TestGraphCacheReused(t *testing.T) {
	pairs, pad := enginePairs(t)
	dpo := DPO{Loss: LossConfig{Type: LossSigmoid, Beta: 0.1}}
	base := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1e-2, BatchSize: 4, Threads: 1, PadID: pad}
	for _, tc := range []struct {
		name, model string
		cfg         func(*engine.TrainConfig)
		stubs       bool // frozen weights stay in the graph: the cache must hold stubs
	}{
		{"llama", engineModel, func(*engine.TrainConfig) {}, false},
		{"gpt2-tied-frozen-checkpointed", "../../testdata/models/gpt2_opset17.onnx", func(c *engine.TrainConfig) {
			c.TieTransposedCopies, c.GradientCheckpointing = true, true
			c.Freeze = regexp.MustCompile(`wpe|MatMul_284|h\.0\.`)
		}, true},
		{"llama-lora", engineModel, func(c *engine.TrainConfig) { c.Adapter = engine.LoRA{R: 4, Alpha: 8, Seed: 1} }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := base
			tc.cfg(&cfg)
			built := cachedEngine(t, tc.model, nil, dir, cfg, dpo)
			if p := built.ReusedGraph(); p != "" {
				t.Fatalf("first engine reused %s", p)
			}
			if tc.name == "gpt2-tied-frozen-checkpointed" && (len(built.Ties()) == 0 || len(built.TrainingGraph().Checkpointed) == 0) {
				t.Fatalf("ties %v, checkpointed %v: the case tests neither", built.Ties(), built.TrainingGraph().Checkpointed)
			}
			meta := readGraphMeta(t, dir)
			if tc.stubs != (len(meta.Shared) > 0) {
				t.Fatalf("cache has %d weights as stubs, want them: %v", len(meta.Shared), tc.stubs)
			}
			// Every weight of the model the graph keeps (of 1 KiB or more) is a stub.
			b, err := os.ReadFile(filepath.Join(dir, engine.GraphCacheModelFile))
			if err != nil {
				t.Fatal(err)
			}
			file, err := onnx.LoadBytes(b)
			if err != nil {
				t.Fatal(err)
			}
			model := loadModel(t, tc.model)
			for _, w := range file.Graph().GetInitializer() {
				if len(w.GetRawData()) >= onnx.DefaultSizeThreshold && onnx.Initializer(model.Graph(), w.GetName()) != nil {
					t.Errorf("the cache holds a copy of the model's %s (%d bytes)", w.GetName(), len(w.GetRawData()))
				}
			}
			cached := cachedEngine(t, tc.model, nil, dir, cfg, dpo)
			if want := filepath.Join(dir, engine.GraphCacheModelFile); cached.ReusedGraph() != want {
				t.Fatalf("second engine: ReusedGraph %q, want %q", cached.ReusedGraph(), want)
			}
			sameGraph(t, cached, built)
			sameGradients(t, cached, built, pairs[:4])
		})
	}
}

// TestGraphCacheSFT: the cache works for another objective (SFT's sequences), and a DPO
// engine does not take an SFT graph.
func TestGraphCacheSFT(t *testing.T) {
	pairs, pad := enginePairs(t)
	dir := t.TempDir()
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1e-2, BatchSize: 4, Threads: 1, PadID: pad}
	built := cachedEngine(t, engineModel, nil, dir, cfg, SFT{})
	cached := cachedEngine(t, engineModel, nil, dir, cfg, SFT{})
	if cached.ReusedGraph() == "" {
		t.Fatal("second SFT engine rebuilt the graph")
	}
	sameGraph(t, cached, built)
	sameGradients(t, cached, built, encode.PairRows(pairs[:3]))
	dpo := cachedEngine(t, engineModel, nil, dir, cfg, DPO{Loss: LossConfig{Type: LossSigmoid, Beta: 0.1}})
	if dpo.ReusedGraph() != "" {
		t.Fatal("a DPO engine reused the SFT graph")
	}
}

// TestGraphCacheRebuildsOnChange: another option that shapes the graph, or another
// weight value, rebuilds the graph and rewrites the cache, which the next engine with
// the same model and options reuses.
func TestGraphCacheRebuildsOnChange(t *testing.T) {
	_, pad := enginePairs(t)
	dir := t.TempDir()
	base := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1e-2, BatchSize: 4, Threads: 1, PadID: pad}
	dpo := func(beta float64) DPO { return DPO{Loss: LossConfig{Type: LossSigmoid, Beta: beta}} }
	if e := cachedEngine(t, engineModel, nil, dir, base, dpo(0.1)); e.ReusedGraph() != "" {
		t.Fatal("first engine reused a graph")
	}
	if e := cachedEngine(t, engineModel, nil, dir, base, dpo(0.1)); e.ReusedGraph() == "" {
		t.Fatal("same model and options: rebuilt")
	}
	// A weight the graph does not hold (it trains, so it is an input): only the key sees it.
	changed := loadModel(t, engineModel)
	w := onnx.Initializer(changed.Graph(), base0(t, changed))
	v, err := onnx.TensorFloats(w)
	if err != nil {
		t.Fatal(err)
	}
	v[0] += 1
	if err := onnx.SetTensorFloats(w, v); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		m    *onnx.Model
		cfg  func(*engine.TrainConfig)
		beta float64
	}{
		{"gradient checkpointing", nil, func(c *engine.TrainConfig) { c.GradientCheckpointing = true }, 0.1},
		{"freeze", nil, func(c *engine.TrainConfig) { c.Freeze = regexp.MustCompile(`layers\.0\.`) }, 0.1},
		{"freeze, another pattern", nil, func(c *engine.TrainConfig) { c.Freeze = regexp.MustCompile(`layers\.1\.`) }, 0.1},
		{"beta", nil, func(*engine.TrainConfig) {}, 0.2},
		{"weight value", changed, func(*engine.TrainConfig) {}, 0.2},
		{"LoRA", changed, func(c *engine.TrainConfig) { c.Adapter = engine.LoRA{R: 4, Alpha: 8, Seed: 1} }, 0.2},
		{"LoRA seed", changed, func(c *engine.TrainConfig) { c.Adapter = engine.LoRA{R: 4, Alpha: 8, Seed: 2} }, 0.2},
		{"LoRA rank", changed, func(c *engine.TrainConfig) { c.Adapter = engine.LoRA{R: 2, Alpha: 8, Seed: 2} }, 0.2},
	} {
		cfg := base
		tc.cfg(&cfg)
		if e := cachedEngine(t, engineModel, tc.m, dir, cfg, dpo(tc.beta)); e.ReusedGraph() != "" {
			t.Fatalf("%s changed: reused %s", tc.name, e.ReusedGraph())
		}
	}
	cfg := base
	cfg.Adapter = engine.LoRA{R: 2, Alpha: 8, Seed: 2}
	if e := cachedEngine(t, engineModel, changed, dir, cfg, dpo(0.2)); e.ReusedGraph() == "" {
		t.Fatal("the last options again: rebuilt")
	}
}

// TestGraphCacheBuilder: the sidecar records the build that made the graph — the ONNX
// Runtime version, autodiff.RulesDigest and the digest of this package's sources as
// they are on disk — and a cache made by a build that differs in any of them is rebuilt,
// with no error, and rewritten, so the next engine of that build reuses it.
func TestGraphCacheBuilder(t *testing.T) {
	_, pad := enginePairs(t)
	dir := t.TempDir()
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1e-2, BatchSize: 4, Threads: 1, PadID: pad}
	obj := SFT{}
	if e := cachedEngine(t, engineModel, nil, dir, cfg, obj); e.ReusedGraph() != "" {
		t.Fatalf("first engine reused %s", e.ReusedGraph())
	}
	version, err := ort.Version()
	if err != nil {
		t.Fatal(err)
	}
	var digests []string
	for _, dir := range []string{"../engine", "../lm"} {
		d, err := srcdigest.Of(os.DirFS(dir))
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, d)
	}
	sources := srcdigest.Combine(digests...)
	this := engine.GraphBuilder{ORT: version, Autodiff: autodiff.RulesDigest(), Pipeline: sources}
	if got := readGraphMeta(t, dir).Builder; got != this {
		t.Fatalf("the sidecar records builder %+v, want %+v", got, this)
	}
	saved := engine.CurrentGraphBuilder
	t.Cleanup(func() { engine.CurrentGraphBuilder = saved })
	for _, tc := range []struct {
		name string
		edit func(*engine.GraphBuilder)
	}{
		{"another ONNX Runtime", func(b *engine.GraphBuilder) { b.ORT = "1.25.0" }},
		{"other gradient rules", func(b *engine.GraphBuilder) { b.Autodiff = strings.Repeat("0", 64) }},
		{"another pipeline", func(b *engine.GraphBuilder) { b.Pipeline = strings.Repeat("1", 64) }},
		{"this build again", func(*engine.GraphBuilder) {}},
	} {
		other := this
		tc.edit(&other)
		engine.CurrentGraphBuilder = func() (engine.GraphBuilder, error) { return other, nil }
		if e := cachedEngine(t, engineModel, nil, dir, cfg, obj); e.ReusedGraph() != "" {
			t.Fatalf("%s: reused %s", tc.name, e.ReusedGraph())
		}
		if got := readGraphMeta(t, dir).Builder; got != other {
			t.Fatalf("%s: the rewritten sidecar records builder %+v, want %+v", tc.name, got, other)
		}
		if e := cachedEngine(t, engineModel, nil, dir, cfg, obj); e.ReusedGraph() == "" {
			t.Fatalf("%s again: rebuilt", tc.name)
		}
	}
}

// TestGraphCacheBuilderUnknown: when the build cannot be told (ONNX Runtime gives no
// version), the graph is built and not cached, and a notice says so.
func TestGraphCacheBuilderUnknown(t *testing.T) {
	_, pad := enginePairs(t)
	dir := t.TempDir()
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1e-2, BatchSize: 4, Threads: 1, PadID: pad}
	saved := engine.CurrentGraphBuilder
	t.Cleanup(func() { engine.CurrentGraphBuilder = saved })
	engine.CurrentGraphBuilder = func() (engine.GraphBuilder, error) { return engine.GraphBuilder{}, errors.New("no version") }
	e := cachedEngine(t, engineModel, nil, dir, cfg, SFT{})
	if e.ReusedGraph() != "" {
		t.Fatalf("reused %s", e.ReusedGraph())
	}
	if !slices.ContainsFunc(e.TrainingGraph().Notices, func(n string) bool { return strings.Contains(n, "no version") }) {
		t.Fatalf("notices %q do not say why the graph was not cached", e.TrainingGraph().Notices)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("wrote %v without a key", entries)
	}
}

// base0 is the name of m's first float initializer.
func base0(t *testing.T, m *onnx.Model) string {
	t.Helper()
	for _, w := range m.Graph().GetInitializer() {
		if onnx.DataType(w.GetDataType()) == onnx.Float {
			return w.GetName()
		}
	}
	t.Fatal("no float initializer")
	return ""
}

// TestGraphCacheDamaged: a truncated, corrupt, missing or mismatched cache file is
// ignored — the graph is rebuilt, with no error — and rewritten, so the next engine
// reuses it again.
func TestGraphCacheDamaged(t *testing.T) {
	_, pad := enginePairs(t)
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1e-2, BatchSize: 4, Threads: 1, PadID: pad}
	dpo := DPO{Loss: LossConfig{Type: LossSigmoid, Beta: 0.1}}
	good := t.TempDir()
	cachedEngine(t, engineModel, nil, good, cfg, dpo)
	other := t.TempDir()
	cachedEngine(t, engineModel, nil, other, cfg, DPO{Loss: LossConfig{Type: LossSigmoid, Beta: 0.3}})
	read := func(dir, name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	model, meta := read(good, engine.GraphCacheModelFile), read(good, engine.GraphCacheMetaFile)
	flip := func(b []byte, at int) []byte {
		b = append([]byte(nil), b...)
		b[at] ^= 0x40
		return b
	}
	for _, tc := range []struct {
		name        string
		model, meta []byte // nil: no file
	}{
		{"model truncated", model[:len(model)/2], meta},
		{"model empty", []byte{}, meta},
		{"model byte flipped", flip(model, len(model)*2/3), meta},
		{"model missing", nil, meta},
		{"sidecar truncated", model, meta[:len(meta)/2]},
		{"sidecar missing", model, nil},
		{"sidecar not JSON", model, []byte("\x00\x01 not json")},
		{"model of other options", read(other, engine.GraphCacheModelFile), meta},
		{"sidecar of other options", model, read(other, engine.GraphCacheMetaFile)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, b := range map[string][]byte{engine.GraphCacheModelFile: tc.model, engine.GraphCacheMetaFile: tc.meta} {
				if b == nil {
					continue
				}
				if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if e := cachedEngine(t, engineModel, nil, dir, cfg, dpo); e.ReusedGraph() != "" {
				t.Fatalf("reused the damaged cache %s", e.ReusedGraph())
			}
			if e := cachedEngine(t, engineModel, nil, dir, cfg, dpo); e.ReusedGraph() == "" {
				t.Fatal("the rebuilt graph was not cached again")
			}
		})
	}
}

// TestGraphCacheOff: without GraphCache nothing is written (not in the working
// directory either) and nothing reused.
func TestGraphCacheOff(t *testing.T) {
	_, pad := enginePairs(t)
	m := loadModel(t, engineModel)
	dir := t.TempDir()
	t.Chdir(dir)
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1e-2, BatchSize: 4, Threads: 1, PadID: pad}
	for range 2 {
		e, err := engine.NewEngine(engineModel, m, cfg, SFT{})
		if err != nil {
			t.Fatal(err)
		}
		e.Close()
		if e.ReusedGraph() != "" {
			t.Fatal("reused a graph without a cache")
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("wrote %v without a cache", entries)
	}
}
