// Package lora inserts LoRA adapters (Hu et al. 2021, as Hugging Face PEFT implements
// them) into an ONNX causal LM and merges trained adapters back into its weights.
//
// A target is a linear layer of the exported graph: a MatMul y = x·W (W [in, out], the
// transpose of PyTorch's Linear weight, as torch.onnx.export writes it) or a Gemm (with
// transB 1, W is [out, in]) whose weight is a 2-D float32 initializer that no other node
// reads, and whose input x is a computed value (a hidden state). Insert rewrites
//
//	y = x·W   into   y = x·W + (α/r)·((x·Aᵀ)·Bᵀ)
//
// with A [r, in] and B [out, r] new initializers in PEFT's layout (lora_A.weight,
// lora_B.weight), A drawn as PEFT's reset_lora_parameters does
// (kaiming_uniform_(a=√5): uniform(−1/√in, 1/√in)) from a seeded generator and B zero, so
// that the adapted model starts equal to the base model. Merge folds trained adapters into
// the original graph: W += (α/r)·(B·A)ᵀ (or B·A for a Gemm with transB), leaving every node,
// name, input and output as they were.
//
// Module paths (model.layers.0.self_attn.q_proj) are recovered from the ONNX names: the
// weight's name when it is a parameter name (P.weight), else the node's scope
// (/model/layers.0/self_attn/q_proj/MatMul), completed with the prefix the exporter dropped
// when the top module's forward was not called (learnt from named initializers such as
// model.layers.0.input_layernorm.weight read by /layers.0/input_layernorm/Mul_1).
package lora

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand"
	"runtime"
	"slices"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
)

// DefaultTargetModules are the attention and MLP projections of Llama/Qwen/Mistral-style
// models and of GPT-2-style ones (c_attn, c_proj, c_fc).
var DefaultTargetModules = []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "c_attn", "c_proj", "c_fc"}

// AllLinear selects every linear layer except the output layer (PEFT's "all-linear").
const AllLinear = "all-linear"

// Target is one linear layer of a graph.
type Target struct {
	Node   string // the MatMul or Gemm node's name
	Output string // the node's output y
	Input  string // the node's input x
	Weight string // the weight initializer
	Module string // dotted module path, as PyTorch names it (model.layers.0.self_attn.q_proj)
	In     int64  // input features
	Out    int64  // output features
	// TransB says W is [out, in]: a Gemm with transB, or a MatMul of W's Transpose (Node
	// then reads W through that Transpose); Alpha is Gemm's alpha (1 for MatMul).
	Gemm   bool
	TransB bool
	Alpha  float32
	// OutputLayer marks the layer that computes the logits (lm_head), which "all-linear"
	// leaves out as PEFT does.
	OutputLayer bool
}

// FindTargets lists the linear layers of m's main graph, in graph order.
func FindTargets(m *onnx.Model) ([]Target, error) {
	g := m.Graph()
	inits := map[string]*onnxpb.TensorProto{}
	for _, t := range g.GetInitializer() {
		inits[t.GetName()] = t
	}
	isInput := map[string]bool{}
	for _, in := range g.GetInput() {
		isInput[in.GetName()] = true
	}
	isOutput := map[string]bool{}
	for _, o := range g.GetOutput() {
		isOutput[o.GetName()] = true
	}
	consumers := onnx.Consumers(g)
	producers := onnx.Producers(g)
	prefix := scopePrefix(g, inits)
	var out []Target
	for _, n := range g.GetNode() {
		op := n.GetOpType()
		if (op != "MatMul" && op != "Gemm") || n.GetDomain() != "" || len(n.GetInput()) < 2 || len(n.GetOutput()) != 1 {
			continue
		}
		x, w := n.GetInput()[0], n.GetInput()[1]
		t := inits[w]
		// torch.onnx.export without constant folding (models near 2 GB) writes a
		// Linear as MatMul(x, Transpose(W)) with W [out, in]: the layer is W, transposed.
		transposedW := false
		if tr := producers[w]; t == nil && op == "MatMul" && isTranspose2D(tr) && len(consumers[w]) == 1 {
			if src := tr.GetInput()[0]; inits[src] != nil {
				w, t, transposedW = src, inits[src], true
			}
		}
		if t == nil || isInput[w] || isOutput[w] || len(t.GetDims()) != 2 || onnx.DataType(t.GetDataType()) != onnx.Float {
			continue
		}
		if x == "" || inits[x] != nil {
			continue // a constant input, not a hidden state
		}
		if p := producers[x]; p != nil && p.GetOpType() == "Constant" {
			continue
		}
		if len(consumers[w]) != 1 {
			continue // shared weight: merging one adapter would change the other uses
		}
		tg := Target{Node: n.GetName(), Output: n.GetOutput()[0], Input: x, Weight: w, In: t.GetDims()[0], Out: t.GetDims()[1], Alpha: 1}
		if transposedW {
			tg.TransB, tg.In, tg.Out = true, tg.Out, tg.In
		}
		if op == "Gemm" {
			if a := onnx.FindAttr(n, "transA"); a != nil && a.GetI() != 0 {
				continue
			}
			tg.Gemm = true
			if a := onnx.FindAttr(n, "transB"); a != nil && a.GetI() != 0 {
				tg.TransB = true
				tg.In, tg.Out = tg.Out, tg.In
			}
			if a := onnx.FindAttr(n, "alpha"); a != nil {
				tg.Alpha = a.GetF()
			}
			if tg.Alpha == 0 {
				continue
			}
		}
		tg.Module = modulePath(n, w, prefix)
		out = append(out, tg)
	}
	markOutputLayers(g, out)
	return out, nil
}

// isTranspose2D reports whether n swaps the two axes of a matrix.
func isTranspose2D(n *onnxpb.NodeProto) bool {
	if n == nil || n.GetOpType() != "Transpose" || n.GetDomain() != "" || len(n.GetInput()) != 1 {
		return false
	}
	perm := onnx.FindAttr(n, "perm")
	return perm == nil || slices.Equal(perm.GetInts(), []int64{1, 0})
}

// modulePath recovers the PyTorch module path of a linear layer from its weight's name
// or its node's scope.
func modulePath(n *onnxpb.NodeProto, weight, prefix string) string {
	if p, ok := paramModule(weight); ok {
		return p
	}
	if s := scope(n.GetName()); s != "" {
		return prefix + s
	}
	name := cmp.Or(n.GetName(), weight)
	return strings.Map(func(r rune) rune {
		if r == '.' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' {
			return r
		}
		return '_'
	}, strings.Trim(name, "/"))
}

// paramModule returns P for a parameter name P.weight or P.bias (not the exporter's
// opaque onnx::MatMul_123 names).
func paramModule(name string) (string, bool) {
	if strings.Contains(name, "::") || strings.Contains(name, "/") {
		return "", false
	}
	for _, suf := range []string{".weight", ".bias"} {
		if p, ok := strings.CutSuffix(name, suf); ok && p != "" {
			return p, true
		}
	}
	return "", false
}

// scope turns a node name /model/layers.0/self_attn/q_proj/MatMul into
// model.layers.0.self_attn.q_proj ("" for an unscoped name).
func scope(node string) string {
	s := strings.TrimPrefix(node, "/")
	i := strings.LastIndex(s, "/")
	if !strings.HasPrefix(node, "/") || i <= 0 {
		return ""
	}
	return strings.ReplaceAll(s[:i], "/", ".")
}

// scopePrefix learns the module-path prefix that node scopes lack: when the model's
// forward calls its submodules' children directly, torch.onnx.export scopes
// model.layers.0 as /layers.0. Nodes that read a named parameter P.weight in scope S,
// with P = prefix + S, vote for prefix; the most common vote wins ("" on a tie with it).
func scopePrefix(g *onnxpb.GraphProto, inits map[string]*onnxpb.TensorProto) string {
	votes := map[string]int{}
	for _, n := range g.GetNode() {
		s := scope(n.GetName())
		if s == "" {
			continue
		}
		for _, in := range n.GetInput() {
			if inits[in] == nil {
				continue
			}
			p, ok := paramModule(in)
			switch {
			case !ok:
			case p == s:
				votes[""]++
			case strings.HasSuffix(p, "."+s):
				votes[p[:len(p)-len(s)]]++
			}
		}
	}
	best, count := "", votes[""]
	keys := make([]string, 0, len(votes))
	for k := range votes {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if votes[k] > count {
			best, count = k, votes[k]
		}
	}
	return best
}

// markOutputLayers marks the targets that compute a graph output with no other MatMul or
// Gemm between them and it: the lm_head.
func markOutputLayers(g *onnxpb.GraphProto, targets []Target) {
	byOutput := map[string]int{}
	for i, t := range targets {
		byOutput[t.Output] = i
	}
	onnx.WalkBack(g, func(v string, n *onnxpb.NodeProto) bool {
		if n == nil {
			return false
		}
		if op := n.GetOpType(); op == "MatMul" || op == "Gemm" {
			if i, ok := byOutput[v]; ok {
				targets[i].OutputLayer = true
			}
			return false
		}
		return true
	})
}

// Matches reports whether a module path is selected by a target-module name, with PEFT's
// rule: the path equals the name or ends with "." + name.
func Matches(module, name string) bool {
	return module == name || strings.HasSuffix(module, "."+name)
}

// Select keeps the targets whose module matches one of modules (DefaultTargetModules when
// empty; AllLinear for every layer but the output layer). Selecting nothing, or two layers
// of one module path, is an error.
func Select(targets []Target, modules []string) ([]Target, error) {
	if len(modules) == 0 {
		modules = DefaultTargetModules
	}
	all := slices.Contains(modules, AllLinear)
	var out []Target
	for _, t := range targets {
		if all && !t.OutputLayer || !all && slices.ContainsFunc(modules, func(m string) bool { return Matches(t.Module, m) }) {
			out = append(out, t)
		}
	}
	if len(out) == 0 {
		var found []string
		for _, t := range targets {
			found = append(found, t.Module)
		}
		if len(found) > 12 {
			found = append(found[:12], "...")
		}
		return nil, fmt.Errorf("no linear layer matches the LoRA target modules %s (linear layers found: %s); name others, or use %s",
			strings.Join(modules, ","), cmp.Or(strings.Join(found, ", "), "none"), AllLinear)
	}
	seen := map[string]string{}
	for _, t := range out {
		if prev, dup := seen[t.Module]; dup {
			return nil, fmt.Errorf("LoRA targets %q and %q both have module path %q: the model's names do not tell its layers apart", prev, t.Node, t.Module)
		}
		seen[t.Module] = t.Node
	}
	return out, nil
}

// ModuleNames returns the distinct last components of the targets' module paths, sorted:
// the target_modules PEFT needs to find the same layers.
func ModuleNames(targets []Target) []string {
	var names []string
	for _, t := range targets {
		name := t.Module[strings.LastIndex(t.Module, ".")+1:]
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// Config is the adapters' rank, scale and initialisation.
type Config struct {
	R     int
	Alpha float64 // the update is scaled by Alpha/R (PEFT's lora_alpha; use_rslora off)
	Seed  int64   // seed of A's initialisation
}

// Scale is α/r.
func (c Config) Scale() float64 { return c.Alpha / float64(c.R) }

// Adapter is one inserted adapter.
type Adapter struct {
	Target
	A, B string // initializers: A [r, in] (lora_A.weight), B [out, r] (lora_B.weight)
	R    int
}

// Insert adds an adapter to each target of m's main graph, in place, and returns them in
// targets' order. The adapters' initializers are named <module>.lora_A.weight and
// <module>.lora_B.weight (made unique if taken).
func Insert(m *onnx.Model, targets []Target, c Config) ([]Adapter, error) {
	if c.R <= 0 {
		return nil, fmt.Errorf("LoRA rank must be positive, got %d", c.R)
	}
	g := m.Graph()
	nodes := map[string]*onnxpb.NodeProto{}
	for _, n := range g.GetNode() {
		if n.GetName() != "" {
			nodes[n.GetName()] = n
		}
	}
	b := onnx.NewBuilder(g, m.Opset(""), "lora")
	rng := rand.New(rand.NewSource(c.Seed))
	scale := b.ConstFloat(float32(c.Scale()))
	perm := onnx.AttrInts("perm", []int64{1, 0})
	var out []Adapter
	for _, t := range targets {
		n := nodes[t.Node]
		if n == nil || len(n.GetOutput()) != 1 || n.GetOutput()[0] != t.Output {
			return nil, fmt.Errorf("LoRA target %q: no such node with output %q", t.Node, t.Output)
		}
		a := Adapter{Target: t, R: c.R, A: onnx.UniqueName(g, t.Module+".lora_A.weight")}
		bound := 1 / math.Sqrt(float64(t.In))
		av := make([]float32, int64(c.R)*t.In)
		for i := range av {
			av[i] = float32((2*rng.Float64() - 1) * bound)
		}
		if err := onnx.AddInitializer(g, onnx.FloatTensor(a.A, []int64{int64(c.R), t.In}, av)); err != nil {
			return nil, err
		}
		a.B = onnx.UniqueName(g, t.Module+".lora_B.weight")
		if err := onnx.AddInitializer(g, onnx.FloatTensor(a.B, []int64{t.Out, int64(c.R)}, make([]float32, int64(c.R)*t.Out))); err != nil {
			return nil, err
		}
		base := onnx.UniqueName(g, t.Output+"_lora_base")
		n.Output[0] = base
		h := b.MatMul(t.Input, b.Op("Transpose", []string{a.A}, perm))
		d := b.Mul(b.MatMul(h, b.Op("Transpose", []string{a.B}, perm)), scale)
		g.Node = append(g.Node, &onnxpb.NodeProto{
			Name:   proto.String(b.Name("Add")),
			OpType: proto.String("Add"),
			Input:  []string{base, d},
			Output: []string{t.Output},
		})
		out = append(out, a)
	}
	if err := onnx.TopologicalSort(g); err != nil {
		return nil, fmt.Errorf("insert LoRA adapters: %w", err)
	}
	return out, nil
}

// Delta returns the update of a's base weight in its graph layout: (α/r)·(B·A)ᵀ [in, out]
// for a MatMul or Gemm without transB, (α/r)·B·A [out, in] with transB, divided by a
// Gemm's alpha. a and b are A's and B's values, accumulated in float64.
func Delta(ad Adapter, scale float64, a, b []float32) ([]float64, error) {
	r, in, out := ad.R, int(ad.In), int(ad.Out)
	if len(a) != r*in || len(b) != out*r {
		return nil, fmt.Errorf("LoRA adapter of %s: A has %d values and B %d, want %d and %d", ad.Module, len(a), len(b), r*in, out*r)
	}
	s := scale / float64(ad.Alpha)
	d := make([]float64, in*out)
	for o := 0; o < out; o++ {
		bo := b[o*r : (o+1)*r]
		for i := 0; i < in; i++ {
			var sum float64
			for k, bk := range bo {
				sum += float64(bk) * float64(a[k*in+i])
			}
			if ad.TransB {
				d[o*in+i] = s * sum
			} else {
				d[i*out+o] = s * sum
			}
		}
	}
	return d, nil
}

// Merge folds trained adapters into m, the original model (without adapters): each
// target weight W becomes W + Delta. values holds A's and B's values by initializer name.
func Merge(m *onnx.Model, adapters []Adapter, scale float64, values map[string][]float32) error {
	g := m.Graph()
	weights := make([]*onnxpb.TensorProto, len(adapters))
	for i, ad := range adapters {
		if weights[i] = onnx.Initializer(g, ad.Weight); weights[i] == nil {
			return fmt.Errorf("merge LoRA adapter of %s: the model has no initializer %q", ad.Module, ad.Weight)
		}
	}
	// Each adapter has its own weight (shared weights are not targets): merge them in
	// parallel, as the float64 products dominate an export (8 s of 13 on Qwen2.5-0.5B).
	errs := make([]error, len(adapters))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(adapters)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				errs[i] = mergeOne(weights[i], adapters[i], scale, values)
			}
		}()
	}
	for i := range adapters {
		next <- i
	}
	close(next)
	wg.Wait()
	return errors.Join(errs...)
}

// mergeOne folds one adapter into its weight w.
func mergeOne(w *onnxpb.TensorProto, ad Adapter, scale float64, values map[string][]float32) error {
	d, err := Delta(ad, scale, values[ad.A], values[ad.B])
	if err != nil {
		return err
	}
	wv, err := onnx.TensorFloats(w)
	if err != nil {
		return err
	}
	if len(wv) != len(d) {
		return fmt.Errorf("merge LoRA adapter of %s: weight %q has %d values, the adapter %d", ad.Module, ad.Weight, len(wv), len(d))
	}
	for i := range wv {
		wv[i] = float32(float64(wv[i]) + d[i])
	}
	return onnx.SetTensorFloats(w, wv)
}
