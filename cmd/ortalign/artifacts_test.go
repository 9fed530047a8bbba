package main

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"ortalign/onnx"
	"ortalign/onnx/ort"
	"ortalign/pipeline/objective"
)

// TestArtifactsRunInPlainORT: the written training graph, driven only through its
// manifest, gives PyTorch's DPO loss for the oracle batch.
func TestArtifactsRunInPlainORT(t *testing.T) {
	out := t.TempDir()
	if err := ort.Init(""); err != nil {
		t.Fatal(err)
	}
	if err := runArtifacts(&globalOptions{}, &artifactsOptions{modelFlags: modelFlags{model: tinyLlama}, out: out, lossFlags: lossFlags{loss: objective.LossSigmoid, beta: 0.1}}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	var manifest struct {
		Loss   string `json:"loss"`
		Params []struct {
			Name string `json:"name"`
			Grad string `json:"grad"`
		} `json:"params"`
	}
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(out, "manifest.json"))), &manifest); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open("../../testdata/expected/dpo_grads_llama.json.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, _ := gzip.NewReader(f)
	var o struct {
		InputIDs       [][]int64   `json:"input_ids"`
		AttentionMask  [][]int64   `json:"attention_mask"`
		PositionIDs    [][]int64   `json:"position_ids"`
		CompletionMask [][]float32 `json:"completion_mask"`
		RefLogps       []float32   `json:"ref_logps"`
		Loss           float64     `json:"loss_float64"`
	}
	if err := json.NewDecoder(gz).Decode(&o); err != nil {
		t.Fatal(err)
	}
	flat64 := func(x [][]int64) []int64 {
		var r []int64
		for _, row := range x {
			r = append(r, row...)
		}
		return r
	}
	var mask []float32
	for _, row := range o.CompletionMask {
		mask = append(mask, row...)
	}
	shape := []int64{int64(len(o.InputIDs)), int64(len(o.InputIDs[0]))}
	n := int64(len(o.RefLogps) / 2)
	feeds := map[string]*ort.Tensor{
		"input_ids":          {Shape: shape, I64: flat64(o.InputIDs)},
		"attention_mask":     {Shape: shape, I64: flat64(o.AttentionMask)},
		"position_ids":       {Shape: shape, I64: flat64(o.PositionIDs)},
		"completion_mask":    {Shape: shape, F32: mask},
		"ref_chosen_logps":   {Shape: []int64{n}, F32: o.RefLogps[:n]},
		"ref_rejected_logps": {Shape: []int64{n}, F32: o.RefLogps[n:]},
	}
	src, _ := onnx.Load(tinyLlama)
	for _, p := range manifest.Params {
		init := onnx.Initializer(src.Graph(), p.Name)
		data, err := onnx.TensorFloats(init)
		if err != nil {
			t.Fatal(err)
		}
		feeds[p.Name] = &ort.Tensor{Shape: init.GetDims(), F32: data}
	}
	sess, err := ort.NewSessionFromFile(filepath.Join(out, "training.onnx"), []string{manifest.Loss, manifest.Params[0].Grad}, ort.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Destroy()
	res, err := sess.Run(feeds, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := float64(res[manifest.Loss].F32[0]); math.Abs(got-o.Loss) > 1e-5 {
		t.Fatalf("loss %.7f, PyTorch %.7f", got, o.Loss)
	}
}

// TestArtifactsFlags: the command line fills the options through runF, without running.
func TestArtifactsFlags(t *testing.T) {
	o := parseFlags(t, newArtifactsCmd, "--model", "m.onnx", "--out", "dir", "--loss", "ipo", "--beta", "0.3", "--freeze", "emb.*", "--untie")
	if o.model != "m.onnx" || o.out != "dir" || o.loss != "ipo" || o.beta != 0.3 || o.freeze != "emb.*" || !o.untie {
		t.Fatalf("options %+v", o)
	}
	c, err := o.lossFlags.config()
	if err != nil || c.Type != objective.LossIPO || c.Beta != 0.3 {
		t.Fatalf("loss config %+v, %v", c, err)
	}
	if d := parseFlags(t, newArtifactsCmd, "--model", "m.onnx", "--out", "dir"); d.loss != objective.LossSigmoid || d.beta != 0.1 || d.untie {
		t.Fatalf("defaults %+v", d)
	}
}
