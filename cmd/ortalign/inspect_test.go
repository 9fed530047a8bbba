package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
)

// runInspect runs `ortalign inspect path` and returns its output.
func runInspect(t *testing.T, path string) string {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"inspect", "--threads", "1", path})
	if err := root.Execute(); err != nil {
		t.Fatalf("inspect %s: %v\n%s", path, err, out.String())
	}
	return out.String()
}

// TestInspectKVCache: inspect says how generation decodes: with the export's own cache,
// with a derived one (where the past goes and which masks were extended), or without one
// and why.
func TestInspectKVCache(t *testing.T) {
	cases := []struct {
		model string
		want  []string
	}{
		{"../../testdata/models/llama_kv_opset17.onnx", []string{"KV cache:   the export's own", "past_key_values.0.key -> present.0.key"}},
		{"../../testdata/models/kvstyle_gpt2.onnx", []string{"KV cache:   derived from the graph", "past_key_values.1.value -> present.1.value [batch, sequence, 32]: joined at /h.1/attn/Split_output_2",
			"replaced by a position_ids input", `extended to the past: Where node "/h.0/attn/Where"`, "last q of axis 2"}},
	}
	// No cache: the attention's Softmax written as Exp(LogSoftmax) is not recognised.
	m, err := onnx.Load("../../testdata/models/kvstyle_llama_bool.onnx")
	if err != nil {
		t.Fatal(err)
	}
	var nodes []*onnxpb.NodeProto
	for _, n := range m.Graph().GetNode() {
		if n.GetOpType() == "Softmax" {
			mid := n.GetOutput()[0] + "_log"
			nodes = append(nodes,
				&onnxpb.NodeProto{OpType: proto.String("LogSoftmax"), Input: n.Input, Output: []string{mid}, Attribute: n.Attribute},
				&onnxpb.NodeProto{OpType: proto.String("Exp"), Input: []string{mid}, Output: n.Output})
			continue
		}
		nodes = append(nodes, n)
	}
	m.Graph().Node = nodes
	noSoftmax := filepath.Join(t.TempDir(), "no_softmax.onnx")
	if err := m.Save(noSoftmax, onnx.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	cases = append(cases, struct {
		model string
		want  []string
	}{noSoftmax, []string{"KV cache:   none; generation re-runs the whole sequence", "no attention pattern"}})
	for _, c := range cases {
		out := runInspect(t, c.model)
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("inspect %s: output lacks %q:\n%s", filepath.Base(c.model), w, out)
			}
		}
	}
}

// TestInspectArgs: the model path argument fills the options through runF, without
// running; inspect takes exactly one.
func TestInspectArgs(t *testing.T) {
	if o := parseFlags(t, newInspectCmd, "m.onnx"); o.model != "m.onnx" || o.threads != 1 {
		t.Fatalf("options %+v", o)
	}
	cmd := newInspectCmd(&globalOptions{}, func(*inspectOptions) error { t.Fatal("ran without a model"); return nil })
	cmd.SetArgs(nil)
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&bytes.Buffer{})
	if err := cmd.Execute(); err == nil {
		t.Fatal("inspect without a model: no error")
	}
}
