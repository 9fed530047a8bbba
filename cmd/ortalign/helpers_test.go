package main

import (
	"path/filepath"
	"testing"

	"ortalign/data"
	"ortalign/onnx"
)

// writeColumns writes a Parquet file with prompt and chosen but no rejected column.
func writeColumns(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := data.WriteFile(p, []data.Column{{Name: "prompt", Kind: data.String}, {Name: "chosen", Kind: data.String}},
		[][]any{{"p", " c"}}); err != nil {
		t.Fatal(err)
	}
	return p
}

// renameOutput copies a model, renaming its logits output.
func renameOutput(t *testing.T, src, dst, name string) {
	t.Helper()
	m, err := onnx.Load(src)
	if err != nil {
		t.Fatal(err)
	}
	g := m.Graph()
	old := g.GetOutput()[0].GetName()
	*g.GetOutput()[0].Name = name
	for _, n := range g.GetNode() {
		for i, o := range n.Output {
			if o == old {
				n.Output[i] = name
			}
		}
	}
	if err := m.Save(dst, onnx.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
}
