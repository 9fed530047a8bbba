package onnx

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx/onnxpb"
)

// kvStyle loads testdata/models/kvstyle_<style>.onnx (testdata/gen_kv_styles.py).
func kvStyle(t *testing.T, style string) *Model {
	t.Helper()
	return mustLoad(t, filepath.Join("..", "testdata", "models", "kvstyle_"+style+".onnx"))
}

// TestFindMaskUsesStyles: on each export style the mask uses are where the style applies
// its masks and positions (the op and whether it acts on the attention scores, per layer),
// and no use is a shape operand.
func TestFindMaskUsesStyles(t *testing.T) {
	cases := []struct {
		style          string
		positionsAdded bool
		want           []string // "Op:scores" or "Op:act" of each layer's uses, sorted
	}{
		// torch.where(mask, scores, min)
		{"llama_bool", false, []string{"Where:scores"}},
		// rotary tables sliced to the key length and gathered by position_ids (q·cos, rot(q)·sin,
		// k·cos, rot(k)·sin), then the additive 4-D mask
		{"llama_additive", false, []string{"Add:scores", "Mul:act", "Mul:act", "Mul:act", "Mul:act"}},
		// scale from value.size(-1), the bias slice in Where, the additive padding mask
		{"gpt2", true, []string{"Add:scores", "Div:scores", "Where:scores"}},
		// the Trilu causal mask added, the padding mask in masked_fill's Where
		{"trilu", true, []string{"Add:scores", "Where:scores"}},
		{"fixed_reshape", false, []string{"Add:scores"}},
	}
	for _, c := range cases {
		t.Run(c.style, func(t *testing.T) {
			g := kvStyle(t, c.style).Graph()
			positions := "position_ids"
			if Input(g, positions) == nil {
				added, err := AddPositionIDs(g, positions)
				if err != nil {
					t.Fatal(err)
				}
				if added != c.positionsAdded {
					t.Fatalf("AddPositionIDs: %v, want %v", added, c.positionsAdded)
				}
			}
			layers := FindAttention(g)
			if len(layers) != 2 {
				t.Fatalf("%d attention layers, want 2", len(layers))
			}
			masks, err := FindMaskUses(g, layers, "attention_mask", positions)
			if err != nil {
				t.Fatal(err)
			}
			perLayer := map[string][]string{}
			for _, u := range masks.Uses {
				if u.Node.GetInput()[u.Input] != u.Tensor {
					t.Errorf("%s: input %d is %q", u, u.Input, u.Node.GetInput()[u.Input])
				}
				if shapeOperand(u.Node.GetOpType(), u.Input) {
					t.Errorf("%s is a shape operand", u)
				}
				layer := "?"
				for _, l := range []string{"layers.0", "layers.1", "h.0", "h.1"} {
					if strings.Contains(u.Node.GetName(), "/"+l+"/") {
						layer = l
					}
				}
				kind := "act"
				if u.Scores {
					kind = "scores"
				}
				perLayer[layer] = append(perLayer[layer], u.Node.GetOpType()+":"+kind)
			}
			if len(perLayer) != 2 {
				t.Fatalf("uses in layers %v, want two layers", perLayer)
			}
			for layer, got := range perLayer {
				slices.Sort(got)
				if !slices.Equal(got, c.want) {
					t.Errorf("layer %s: uses %v, want %v", layer, got, c.want)
				}
			}
			if len(masks.ShapeReads) == 0 {
				t.Error("no shape reads: every style sizes its masks from the new tokens")
			}
		})
	}
}

// TestAddPositionIDsUnsqueezeForm: transformers' arange(q).unsqueeze(0) feeding rotary
// (the trilu style) is replaced by position_ids, so no Range reaches the Cos; the same
// positions also compared to build a mask are left alone.
func TestAddPositionIDsUnsqueezeForm(t *testing.T) {
	g := kvStyle(t, "trilu").Graph()
	added, err := AddPositionIDs(g, "position_ids")
	if err != nil || !added {
		t.Fatalf("AddPositionIDs: %v, %v", added, err)
	}
	Prune(g, nil)
	for _, n := range g.GetNode() {
		if n.GetOpType() == "Range" {
			t.Errorf("Range node %q still used after AddPositionIDs", n.GetName())
		}
	}
	if len(Consumers(g)["position_ids"]) == 0 {
		t.Error("nothing reads position_ids")
	}

	g = kvStyle(t, "trilu").Graph()
	for _, n := range g.GetNode() {
		if n.GetOpType() == "Unsqueeze" && strings.HasPrefix(Producers(g)[n.GetInput()[0]].GetOpType(), "Range") {
			g.Node = append(g.Node, &onnxpb.NodeProto{Name: proto.String("mask_compare"), OpType: proto.String("Less"),
				Input: []string{n.GetOutput()[0], n.GetOutput()[0]}, Output: []string{"mask_compare_out"}})
		}
	}
	if added, err := AddPositionIDs(g, "position_ids"); err != nil || added {
		t.Errorf("positions also compared for a mask: AddPositionIDs %v, %v; want false", added, err)
	}
}

// TestKVPointExtend: where the head split and repeat are sized from the new tokens' count
// (fixed_reshape), the rotated keys above them need extended shapes and say which operands;
// where they are sized from the keys' own shape (llama_bool), they do not (only the points
// between the repeat's Expand and Reshape, which read the shape of the keys above them).
func TestKVPointExtend(t *testing.T) {
	for _, c := range []struct {
		style  string
		extend bool
	}{{"fixed_reshape", true}, {"llama_bool", false}} {
		g := kvStyle(t, c.style).Graph()
		layers := FindAttention(g)
		if len(layers) == 0 {
			t.Fatalf("%s: no attention", c.style)
		}
		key := layers[0].Key
		for _, p := range key.Points {
			uses := p.ShapeUses(g)
			if p.Extend != (len(uses) > 0) {
				t.Errorf("%s point %s: Extend %v with %d shape uses", c.style, p.Tensor, p.Extend, len(uses))
			}
			for _, u := range uses {
				if !u.Layout || u.Axis != -1 || !slices.Contains(p.Between, u.Node) || !shapeOperand(u.Node.GetOpType(), u.Input) {
					t.Errorf("%s point %s: shape use %s (layout %v, axis %d)", c.style, p.Tensor, u, u.Layout, u.Axis)
				}
			}
		}
		top := key.Points[len(key.Points)-1]
		if op := Producers(g)[top.Tensor].GetOpType(); op != "Add" {
			t.Errorf("%s: highest key point %s is made by %s, want the rotary Add", c.style, top.Tensor, op)
		}
		if top.Extend != c.extend {
			t.Errorf("%s: the rotated keys need extended shapes: %v, want %v", c.style, top.Extend, c.extend)
		}
		if !c.extend {
			for _, p := range key.Points {
				if op := Producers(g)[p.Tensor].GetOpType(); p.Extend && op != "Expand" && op != "Unsqueeze" {
					t.Errorf("%s: point %s (%s) needs extended shapes", c.style, p.Tensor, op)
				}
			}
		}
	}
}

// TestMaskUseAxis: a mask on the scores keeps its last q queries along the second-to-last
// axis and its keys whole; on other activations its one sequence axis; any other layout is
// an error naming the node.
func TestMaskUseAxis(t *testing.T) {
	node := &onnxpb.NodeProto{Name: proto.String("/layers.0/Where_2"), OpType: proto.String("Where")}
	scores := KVMaskUse{Node: node, Tensor: "mask", Scores: true}
	act := KVMaskUse{Node: node, Tensor: "cos"}
	cases := []struct {
		use  KVMaskUse
		a, b []int64
		want int // -2: an error
	}{
		{scores, []int64{2, 1, 5, 5}, []int64{3, 1, 7, 7}, 2},
		{scores, []int64{1, 1, 5, 5}, []int64{1, 1, 7, 7}, 2},
		{scores, []int64{5, 5}, []int64{7, 7}, 0},
		{scores, []int64{2, 1, 1, 5}, []int64{3, 1, 1, 7}, -1}, // keys only: GPT-2's padding mask
		{scores, []int64{}, []int64{}, -1},                     // a scalar scale
		{scores, []int64{2, 5, 1, 5}, []int64{3, 7, 1, 7}, -2}, // a sequence axis outside the last two
		{act, []int64{2, 1, 5, 8}, []int64{3, 1, 7, 8}, 2},
		{act, []int64{1, 5, 32}, []int64{1, 7, 32}, 1},
		{act, []int64{2, 1, 1, 8}, []int64{3, 1, 1, 8}, -1},
		{act, []int64{5, 5, 8}, []int64{7, 7, 8}, -2}, // two sequence axes on activations
		{act, []int64{5, 8}, []int64{7, 8, 1}, -2},    // rank changes
	}
	for _, c := range cases {
		got, err := MaskUseAxis(c.use, c.a, c.b, 5, 7)
		switch {
		case c.want == -2 && err == nil:
			t.Errorf("scores %v %v -> %v: axis %d, want an error", c.use.Scores, c.a, c.b, got)
		case c.want == -2 && !strings.Contains(err.Error(), `"/layers.0/Where_2"`):
			t.Errorf("error does not name the node: %v", err)
		case c.want != -2 && (err != nil || got != c.want):
			t.Errorf("scores %v %v -> %v: axis %d, %v; want %d", c.use.Scores, c.a, c.b, got, err, c.want)
		}
	}
	if got := SeqEntries([]int64{2, 4, 5, 5, 8}, []int64{3, 4, 7, 7, 8}, 5, 7); !slices.Equal(got, []bool{false, false, true, true, false}) {
		t.Errorf("SeqEntries = %v", got)
	}
}

// TestFindMaskUsesSizeNamesNode: scores scaled by the element count of the hidden states
// (Size) cannot be extended to a past; the error names the use and the Size node.
func TestFindMaskUsesSizeNamesNode(t *testing.T) {
	g := &onnxpb.GraphProto{Name: proto.String("size_scale")}
	if err := AddInput(g, "input_ids", Int64, []Dim{DimParam("batch"), DimParam("sequence")}); err != nil {
		t.Fatal(err)
	}
	if err := AddInput(g, "attention_mask", Int64, []Dim{DimParam("batch"), DimParam("sequence")}); err != nil {
		t.Fatal(err)
	}
	b := NewBuilder(g, 17, "")
	emb := b.Const(FloatTensor("", []int64{16, 4}, make([]float32, 64)))
	x := b.Gather(emb, "input_ids", 0)
	scores := b.MatMul(x, b.Transpose(x, []int64{0, 2, 1}))
	size := b.Op("Size", []string{x})
	scaled := b.Div(scores, b.Cast(size, Float))
	ctx := b.MatMul(b.Softmax(scaled, -1), x)
	if err := AddOutput(g, ctx, Float, nil); err != nil {
		t.Fatal(err)
	}
	layers := FindAttention(g)
	if len(layers) != 1 {
		t.Fatalf("%d attention layers, want 1", len(layers))
	}
	_, err := FindMaskUses(g, layers, "attention_mask", "")
	sizeNode := Producers(g)[size].GetName()
	divNode := Producers(g)[scaled].GetName()
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("Size node %q", sizeNode)) || !strings.Contains(err.Error(), fmt.Sprintf("Div node %q", divNode)) {
		t.Fatalf("FindMaskUses: %v; want an error naming the Div use and the Size node", err)
	}
}
