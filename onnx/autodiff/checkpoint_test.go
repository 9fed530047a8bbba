package autodiff

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"ortalign/onnx"
	"ortalign/onnx/lora"
	"ortalign/onnx/onnxpb"
	"ortalign/onnx/ort"
)

var checkpointModels = []string{"gpt2_opset14", "gpt2_opset17", "gpt2_tied_opset17", "llama_opset14", "llama_opset17"}

// dpoModel loads a tiny test model with the DPO loss of appendDPOLoss and
// the oracle batch as feeds (parameters included).
func dpoModel(t *testing.T, file string) (m *onnx.Model, loss, logps string, trainable []string, feeds map[string]*ort.Tensor) {
	t.Helper()
	o := readOracle(t, strings.SplitN(file, "_", 2)[0])
	m, err := onnx.Load(filepath.Join("..", "..", "testdata", "models", file+".onnx"))
	if err != nil {
		t.Fatal(err)
	}
	loss, logps = appendDPOLoss(t, m, float32(o.Beta))
	want := o.OnnxGrads["models/"+file+".onnx"]
	for _, init := range m.Graph().GetInitializer() {
		if want[init.GetName()] != nil {
			trainable = append(trainable, init.GetName())
		}
	}
	feeds = map[string]*ort.Tensor{
		"input_ids":       ints2D(o.InputIDs),
		"attention_mask":  ints2D(o.AttentionMask),
		"completion_mask": floats2D(o.CompletionMask),
		"ref_logps":       {Shape: []int64{int64(len(o.RefLogps))}, F32: f32s(o.RefLogps)},
	}
	if onnx.Input(m.Graph(), "position_ids") != nil {
		feeds["position_ids"] = ints2D(o.PositionIDs)
	}
	for _, p := range trainable {
		feeds[p] = paramTensor(t, onnx.Initializer(m.Graph(), p))
	}
	return m, loss, logps, trainable, feeds
}

// TestCheckpointingGivesTheSameGradients: with gradient checkpointing every
// decoder layer is recomputed and the loss, the kept log-probs and every
// parameter's gradient equal those without it, on both tiny models at
// opsets 14 and 17.
func TestCheckpointingGivesTheSameGradients(t *testing.T) {
	for _, file := range checkpointModels {
		t.Run(file, func(t *testing.T) {
			m, loss, logps, trainable, feeds := dpoModel(t, file)
			outs := append([]string{loss, logps}, trainable...)
			var optimized bool
			run := func(ck bool) (*Result, map[string]*ort.Tensor) {
				res, err := Build(m, Config{Loss: loss, Trainable: trainable, KeepOutputs: []string{logps}, GradientCheckpointing: ck})
				if err != nil {
					t.Fatal(err)
				}
				names := []string{loss, logps}
				for _, p := range trainable {
					names = append(names, res.Grads[p])
				}
				got := runModelWith(t, res.Model, names, feeds, ort.Options{Threads: 1, DisableOptimizations: !optimized})
				byName := map[string]*ort.Tensor{loss: got[loss], logps: got[logps]}
				for _, p := range trainable {
					byName[p] = got[res.Grads[p]]
				}
				return res, byName
			}
			optimized = false
			plain, want := run(false)
			res, got := run(true)
			if len(plain.Checkpointed) != 0 {
				t.Errorf("checkpointed %v without checkpointing", plain.Checkpointed)
			}
			prefix := "/h."
			if strings.HasPrefix(file, "llama") {
				prefix = "/layers."
			}
			if wantLayers := []string{prefix + "0", prefix + "1"}; !slices.Equal(res.Checkpointed, wantLayers) || len(res.Notices) != 0 {
				t.Fatalf("checkpointed %q (notices %q), want %q", res.Checkpointed, res.Notices, wantLayers)
			}
			worst, differ := 0.0, 0
			for _, name := range outs {
				a, b := got[name].F32, want[name].F32
				if !slices.Equal(got[name].Shape, want[name].Shape) {
					t.Fatalf("%s: shape %v, without checkpointing %v", name, got[name].Shape, want[name].Shape)
				}
				var num, den float64
				for i := range a {
					if a[i] != b[i] {
						differ++
					}
					d := float64(a[i]) - float64(b[i])
					num += d * d
					den += float64(b[i]) * float64(b[i])
				}
				rel := math.Sqrt(num / max(den, 1e-300))
				worst = max(worst, rel)
				if !(rel <= 1e-6) {
					t.Errorf("%s: relative L2 difference %.3g with checkpointing", name, rel)
				}
			}
			if differ > 0 {
				t.Errorf("without graph optimizations, %d values differ (largest relative L2 difference %.3g): the recomputation is not exact", differ, worst)
			}
			// ONNX Runtime's graph optimizations fuse forward patterns whose
			// intermediates the backward no longer reads (GELU, LayerNorm),
			// so optimized results may differ in the last bits.
			optimized = true
			_, want = run(false)
			_, got = run(true)
			worst, differ = 0, 0
			for _, name := range outs {
				a, b := got[name].F32, want[name].F32
				var num, den float64
				for i := range a {
					if a[i] != b[i] {
						differ++
					}
					d := float64(a[i]) - float64(b[i])
					num += d * d
					den += float64(b[i]) * float64(b[i])
				}
				rel := math.Sqrt(num / max(den, 1e-300))
				worst = max(worst, rel)
				if !(rel <= 1e-5) {
					t.Errorf("optimized: %s: relative L2 difference %.3g with checkpointing", name, rel)
				}
			}
			t.Logf("%d layers recomputed; without graph optimizations all %d tensors are equal bit for bit; optimized, %d values differ, largest relative L2 difference %.3g", len(res.Checkpointed), len(outs), differ, worst)
		})
	}
}

// TestCheckpointingFreesLayerIntermediates: in the training graph with
// checkpointing, no backward node reads an intermediate value of a
// recomputed decoder layer, only the values that cross a layer's boundary
// (its inputs and the outputs later layers read) and values made from
// parameters and constants alone; and every recomputed node depends on a
// gradient, so that no execution order can run it before the backward of
// the layers above. Without checkpointing the backward does read them.
func TestCheckpointingFreesLayerIntermediates(t *testing.T) {
	for _, file := range checkpointModels {
		t.Run(file, func(t *testing.T) {
			m, loss, logps, trainable, _ := dpoModel(t, file)
			for _, ck := range []bool{false, true} {
				res, err := Build(m, Config{Loss: loss, Trainable: trainable, KeepOutputs: []string{logps}, GradientCheckpointing: ck})
				if err != nil {
					t.Fatal(err)
				}
				inner := layerIntermediates(m.Graph(), trainable)
				if len(inner) == 0 {
					t.Fatal("no layer intermediates found")
				}
				forward := map[string]bool{}
				for _, n := range m.Graph().GetNode() {
					forward[n.GetName()] = true
				}
				g := res.Model.Graph()
				var reads []string
				for _, n := range g.GetNode() {
					if forward[n.GetName()] {
						continue
					}
					for _, v := range onnx.NodeInputs(n) {
						if inner[v] != "" {
							reads = append(reads, fmt.Sprintf("%s reads %q of %s", n.GetName(), v, inner[v]))
						}
					}
				}
				if !ck {
					if len(reads) == 0 {
						t.Error("without checkpointing no backward node reads a layer intermediate: the check finds nothing")
					}
					continue
				}
				if len(reads) > 0 {
					t.Errorf("%d reads of layer intermediates by backward nodes, e.g. %s", len(reads), strings.Join(reads[:min(3, len(reads))], "; "))
				}
				// Every recomputed node must depend on a gradient value.
				grad := map[string]bool{}
				recomputed := 0
				for _, n := range g.GetNode() {
					fromGrad := strings.HasPrefix(n.GetName(), "grad/") && n.GetOpType() != "Constant"
					for _, v := range onnx.NodeInputs(n) {
						fromGrad = fromGrad || grad[v]
					}
					if strings.HasPrefix(n.GetName(), "recompute/") {
						recomputed++
						if !strings.HasPrefix(n.GetName(), "recompute/h.") && !strings.HasPrefix(n.GetName(), "recompute/layers.") {
							t.Errorf("recomputed node %s is not in a layer", n.GetName())
						}
						if !fromGrad {
							t.Errorf("recomputed node %s does not depend on a gradient", n.GetName())
						}
					}
					if fromGrad {
						for _, o := range n.GetOutput() {
							grad[o] = true
						}
					}
				}
				if recomputed == 0 {
					t.Error("no recomputed node")
				}
				t.Logf("%d intermediates in %d layers; %d nodes recomputed", len(inner), len(res.Checkpointed), recomputed)
			}
		})
	}
}

// layerIntermediates returns, for the forward graph g, the values that the
// checkpointing should free: outputs of nodes of a decoder layer that depend
// on the graph's data inputs and that no node outside the layer reads,
// mapped to their layer. It works from node names on its own, apart from
// findSegments.
func layerIntermediates(g *onnxpb.GraphProto, trainable []string) map[string]string {
	data := map[string]bool{}
	for _, in := range g.GetInput() {
		if !slices.Contains(trainable, in.GetName()) {
			data[in.GetName()] = true
		}
	}
	layer := func(n *onnxpb.NodeProto) string {
		for _, p := range []string{"/h.", "/layers."} {
			if i := strings.Index(n.GetName(), p); i >= 0 {
				rest := n.GetName()[i+len(p):]
				return p + rest[:strings.Index(rest, "/")]
			}
		}
		return ""
	}
	of := map[string]string{}
	for _, n := range g.GetNode() {
		if !slices.ContainsFunc(n.GetInput(), func(v string) bool { return data[v] }) {
			continue
		}
		for _, o := range n.GetOutput() {
			data[o] = true
			if l := layer(n); l != "" {
				of[o] = l
			}
		}
	}
	for _, n := range g.GetNode() {
		for _, v := range n.GetInput() {
			if l := of[v]; l != "" && layer(n) != l {
				delete(of, v) // a boundary
			}
		}
	}
	for _, o := range g.GetOutput() {
		delete(of, o.GetName())
	}
	return of
}

// TestCheckpointingWithoutLayersKeepsActivations: a graph whose node names
// name no decoder layer gets the training graph it gets without
// checkpointing, and a notice.
func TestCheckpointingWithoutLayersKeepsActivations(t *testing.T) {
	m, loss, logps, trainable, feeds := dpoModel(t, "gpt2_opset17")
	for i, n := range m.Graph().GetNode() {
		n.Name = ptr(fmt.Sprintf("node%d", i))
	}
	var models [][]byte
	var grads []map[string]*ort.Tensor
	for _, ck := range []bool{false, true} {
		res, err := Build(m, Config{Loss: loss, Trainable: trainable, KeepOutputs: []string{logps}, GradientCheckpointing: ck})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Checkpointed) != 0 {
			t.Errorf("checkpointed %q", res.Checkpointed)
		}
		if ck != (len(res.Notices) == 1 && strings.Contains(res.Notices[0], "no decoder layers found")) {
			t.Errorf("checkpointing %v: notices %q", ck, res.Notices)
		}
		b, err := res.Model.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		models = append(models, b)
		var outs []string
		for _, p := range trainable {
			outs = append(outs, res.Grads[p])
		}
		grads = append(grads, runModel(t, res.Model, outs, feeds))
	}
	if !slices.Equal(models[0], models[1]) {
		t.Error("the training graph with checkpointing and no layers differs from the one without")
	}
	for name, g := range grads[0] {
		if !slices.Equal(g.F32, grads[1][name].F32) {
			t.Errorf("%s differs", name)
		}
	}
}

func TestSegmentKey(t *testing.T) {
	for _, tc := range []struct {
		name string
		meta map[string]string
		want string
	}{
		{name: "/model/layers.3/self_attn/q_proj/MatMul", want: "/model/layers.3"},
		{name: "/transformer/h.11/mlp/c_fc/MatMul", want: "/transformer/h.11"},
		{name: "/h.0/attn/Softmax", want: "/h.0"},
		{name: "/gpt_neox/layers.0/attention/Add", want: "/gpt_neox/layers.0"},
		{name: "/model/decoder/layers.2/fc1/MatMul", want: "/model/decoder/layers.2"},
		{name: "/model/layers.1/mlp/experts.3/Mul", want: "/model/layers.1"},
		{name: "/model/norm/Mul", want: ""},
		{name: "/lm_head/MatMul", want: ""},
		{name: "/heads.2/Add", want: ""},
		{name: "node_MatMul_12", meta: map[string]string{"pkg.torch.onnx.name_scopes": "['', 'model', 'model.layers.5', 'model.layers.5.mlp']"}, want: "model.layers.5"},
		{name: "node_Add_3", meta: map[string]string{"namespace": ": LlamaForCausalLM/model: LlamaModel"}, want: ""},
	} {
		n := &onnxpb.NodeProto{Name: ptr(tc.name)}
		for k, v := range tc.meta {
			n.MetadataProps = append(n.MetadataProps, &onnxpb.StringStringEntryProto{Key: ptr(k), Value: ptr(v)})
		}
		if got := segmentKey(n); got != tc.want {
			t.Errorf("segmentKey(%q, %v) = %q, want %q", tc.name, tc.meta, got, tc.want)
		}
	}
}

// runModelWith is runModel with session options.
func runModelWith(t *testing.T, m *onnx.Model, outs []string, feeds map[string]*ort.Tensor, o ort.Options) map[string]*ort.Tensor {
	t.Helper()
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	s, err := ort.NewSession(b, outs, o)
	if err != nil {
		t.Fatalf("session: %v", err)
	}
	defer s.Destroy()
	res, err := s.Run(feeds, nil)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return res
}

// BenchmarkCheckpointing measures one DPO training-graph run (forward, loss and all
// gradients; the optimizer is not included) with and without gradient checkpointing on
// the model at $ORTALIGN_CHECKPOINT_BENCH (a GPT-2-style model as testdata/gen_bench.py
// makes, with n_positions >= the sequence), 8 pairs of $ORTALIGN_CHECKPOINT_SEQ tokens
// (default 256), $ORTALIGN_CHECKPOINT_THREADS threads (default 2). It reports ms/step, CPU ms/step, the process's peak resident memory
// (VmHWM) and the peak over the runs above the resident memory before them (the
// session's working memory). Run one sub-benchmark per process, so that one's freed
// memory does not hide the other's peak:
//
//	go test ./onnx/autodiff -run '^$' -bench 'Checkpointing/checkpointing=true' -benchtime 3x
func BenchmarkCheckpointing(b *testing.B) {
	path := os.Getenv("ORTALIGN_CHECKPOINT_BENCH")
	if path == "" {
		b.Skip("set ORTALIGN_CHECKPOINT_BENCH to a GPT-2-style ONNX model")
	}
	seq := 256
	if s := os.Getenv("ORTALIGN_CHECKPOINT_SEQ"); s != "" {
		var err error
		if seq, err = strconv.Atoi(s); err != nil {
			b.Fatal(err)
		}
	}
	threads := 2
	if s := os.Getenv("ORTALIGN_CHECKPOINT_THREADS"); s != "" {
		var err error
		if threads, err = strconv.Atoi(s); err != nil {
			b.Fatal(err)
		}
	}
	const rows = 16
	for _, ck := range []bool{false, true} {
		b.Run(fmt.Sprintf("checkpointing=%v", ck), func(b *testing.B) {
			m, err := onnx.Load(path)
			if err != nil {
				b.Fatal(err)
			}
			loss, _ := appendDPOLoss(&testing.T{}, m, 0.1)
			var trainable []string
			for _, init := range m.Graph().GetInitializer() {
				if onnx.DataType(init.GetDataType()) == onnx.Float && len(init.GetDims()) > 0 {
					trainable = append(trainable, init.GetName())
				}
			}
			rng := rand.New(rand.NewPCG(1, 2))
			feeds := map[string]*ort.Tensor{
				"input_ids":       {Shape: []int64{rows, int64(seq)}, I64: make([]int64, rows*seq)},
				"attention_mask":  {Shape: []int64{rows, int64(seq)}, I64: make([]int64, rows*seq)},
				"completion_mask": {Shape: []int64{rows, int64(seq)}, F32: make([]float32, rows*seq)},
				"ref_logps":       {Shape: []int64{rows}, F32: make([]float32, rows)},
			}
			for i := range rows * seq {
				feeds["input_ids"].I64[i] = rng.Int64N(8192)
				feeds["attention_mask"].I64[i] = 1
				if i%seq >= seq/2 {
					feeds["completion_mask"].F32[i] = 1
				}
			}
			for _, p := range trainable {
				feeds[p] = paramTensor(&testing.T{}, onnx.Initializer(m.Graph(), p))
			}
			res, err := Build(m, Config{Loss: loss, Trainable: trainable, GradientCheckpointing: ck})
			if err != nil {
				b.Fatal(err)
			}
			if ck && len(res.Checkpointed) == 0 {
				b.Fatalf("no layer checkpointed: %q", res.Notices)
			}
			bytes, err := res.Model.Marshal()
			if err != nil {
				b.Fatal(err)
			}
			outs := []string{loss}
			for _, p := range trainable {
				outs = append(outs, res.Grads[p])
			}
			layers := len(res.Checkpointed)
			m, res = nil, nil
			s, err := ort.NewSession(bytes, outs, ort.Options{Threads: threads})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Destroy()
			runtime.GC()
			before := procStatusKB(b, "VmRSS")
			// Reset VmHWM to the current resident memory (Linux 4.0+).
			if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
				b.Logf("cannot reset VmHWM: %v", err)
			}
			if _, err := s.Run(feeds, nil); err != nil {
				b.Fatal(err)
			}
			cpu0 := cpuSeconds()
			b.ResetTimer()
			for range b.N {
				if _, err := s.Run(feeds, nil); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(b.Elapsed().Seconds()/float64(b.N)*1e3, "ms/step")
			b.ReportMetric((cpuSeconds()-cpu0)/float64(b.N)*1e3, "cpu-ms/step")
			peak := procStatusKB(b, "VmHWM")
			b.ReportMetric(float64(peak)/1024, "peak-RSS-MB")
			b.ReportMetric(float64(peak-before)/1024, "step-peak-MB")
			b.Logf("%d layers checkpointed; RSS before the runs %d MB", layers, before/1024)
		})
	}
}

// cpuSeconds is the process's user and system CPU time so far.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// procStatusKB reads a "kB" field of /proc/self/status.
func procStatusKB(b *testing.B, field string) int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			v, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return v
		}
	}
	b.Fatalf("no %s in /proc/self/status", field)
	return 0
}

// TestCheckpointingWithLoRA: LoRA adapters inserted after export (nodes named
// "lora/...", outside the layers' name scopes) are recomputed with the layer
// they branch off and join: the gradients of the adapters are the same bit
// for bit without graph optimizations, and no backward node reads an
// adapter's intermediate value (nor one of the layers).
func TestCheckpointingWithLoRA(t *testing.T) {
	for _, file := range []string{"gpt2_opset17", "llama_opset17"} {
		t.Run(file, func(t *testing.T) {
			m, loss, logps, _, feeds := dpoModel(t, file)
			targets, err := lora.FindTargets(m)
			if err != nil {
				t.Fatal(err)
			}
			if targets, err = lora.Select(targets, nil); err != nil {
				t.Fatal(err)
			}
			adapters, err := lora.Insert(m, targets, lora.Config{R: 4, Alpha: 8, Seed: 1})
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(3, 4))
			var trainable []string
			for _, a := range adapters {
				trainable = append(trainable, a.A, a.B)
				b := onnx.Initializer(m.Graph(), a.B)
				v := make([]float32, a.Out*int64(a.R))
				for i := range v {
					v[i] = float32(rng.NormFloat64() * 0.02)
				}
				*b = *onnx.FloatTensor(a.B, b.GetDims(), v)
				for _, p := range []string{a.A, a.B} {
					feeds[p] = paramTensor(t, onnx.Initializer(m.Graph(), p))
				}
			}
			grads := make([]map[string]*ort.Tensor, 2)
			for i, ck := range []bool{false, true} {
				res, err := Build(m, Config{Loss: loss, Trainable: trainable, KeepOutputs: []string{logps}, GradientCheckpointing: ck})
				if err != nil {
					t.Fatal(err)
				}
				if ck && len(res.Checkpointed) != 2 {
					t.Fatalf("checkpointed %q, notices %q", res.Checkpointed, res.Notices)
				}
				var outs []string
				for _, p := range trainable {
					outs = append(outs, res.Grads[p])
				}
				got := runModelWith(t, res.Model, outs, feeds, ort.Options{Threads: 1, DisableOptimizations: true})
				grads[i] = map[string]*ort.Tensor{}
				for _, p := range trainable {
					grads[i][p] = got[res.Grads[p]]
				}
				// Adapter and layer intermediates read by the backward.
				inner := layerIntermediates(m.Graph(), trainable)
				data := map[string]bool{}
				for _, in := range m.Graph().GetInput() {
					data[in.GetName()] = !slices.Contains(trainable, in.GetName())
				}
				forward := map[string]bool{}
				for _, n := range m.Graph().GetNode() {
					forward[n.GetName()] = true
					if slices.ContainsFunc(n.GetInput(), func(v string) bool { return data[v] }) {
						for _, o := range n.GetOutput() {
							data[o] = true
							if strings.HasPrefix(n.GetName(), "lora/") && n.GetOpType() != "Add" {
								inner[o] = "an adapter"
							}
						}
					}
				}
				reads := 0
				for _, n := range res.Model.Graph().GetNode() {
					if !forward[n.GetName()] {
						reads += len(slices.DeleteFunc(onnx.NodeInputs(n), func(v string) bool { return inner[v] == "" }))
					}
				}
				if ck && reads > 0 {
					t.Errorf("with checkpointing the backward reads %d adapter or layer intermediates", reads)
				}
				if !ck && reads == 0 {
					t.Error("without checkpointing the backward reads no adapter intermediate: the check finds nothing")
				}
			}
			for _, p := range trainable {
				if !slices.Equal(grads[0][p].F32, grads[1][p].F32) {
					t.Errorf("%s: gradient differs with checkpointing", p)
				}
			}
			t.Logf("%d adapters; gradients equal bit for bit", len(adapters))
		})
	}
}
