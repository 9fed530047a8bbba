package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ortalign/onnx"
	"ortalign/pipeline/engine"
)

// TestDPOWithLoRA: dpo --lora-r trains adapters only (the checkpoint is small), merges
// them into model.onnx (the user's graph), writes PEFT's adapter files with
// --save-adapter, and the merged model wins on held-out pairs against the start.
func TestDPOWithLoRA(t *testing.T) {
	out := t.TempDir()
	var stderr bytes.Buffer
	o := dpoOpts(t, out, "--lora-r", "8", "--lora-alpha", "16", "--lr", "1e-2", "--save-adapter", "--lora-base-model", "tiny/llama")
	if err := runDPO(context.Background(), o, io.Discard, &stderr); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr.String(), "training 28 tensors") {
		t.Fatalf("want 28 adapter tensors (2 layers x 7 projections x A, B): %s", stderr.String())
	}
	acc := heldOutAccuracy(t, filepath.Join(out, "model.onnx"), tinyLlama)
	t.Logf("held-out reward accuracy after one LoRA epoch: %.1f%%", 100*acc)
	if acc < 0.8 {
		t.Fatalf("held-out reward accuracy %.1f%%, want >= 80%%", 100*acc)
	}
	orig, _ := onnx.Load(tinyLlama)
	got, err := onnx.Load(filepath.Join(out, "model.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	if so, sg := onnx.Summary(orig), onnx.Summary(got); so.Nodes != sg.Nodes || so.ParamCount != sg.ParamCount {
		t.Fatalf("export changed the graph: %+v vs %+v", sg, so)
	}
	ck, err := os.Stat(filepath.Join(out, "checkpoint.bin"))
	if err != nil {
		t.Fatal(err)
	}
	// r 8: per layer q, o 2·8·32; k, v 8·32+8·16; gate, up 8·32+8·64; down 8·64+8·32.
	adapters := int64(2 * (2*512 + 2*384 + 3*768))
	if state := 3 * 4 * adapters; ck.Size() < state || ck.Size() > state+16384 {
		t.Fatalf("checkpoint of %d bytes, want the adapters' AdamW state (%d bytes) and a header", ck.Size(), state)
	}
	var cfg map[string]any
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(out, engine.AdapterConfigFile))), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg["r"] != 8.0 || cfg["lora_alpha"] != 16.0 || cfg["base_model_name_or_path"] != "tiny/llama" || len(cfg["target_modules"].([]any)) != 7 {
		t.Fatalf("adapter_config.json %v", cfg)
	}
	if _, err := os.Stat(filepath.Join(out, engine.AdapterWeightsFile)); err != nil {
		t.Fatal(err)
	}
}

// TestLoRAFlags: the LoRA flags reach the engine's configuration for every trainer, and
// bad values are errors naming the flag, before anything is loaded.
func TestLoRAFlags(t *testing.T) {
	o := parseSFT(t, "--model", "m", "--data", "d", "--out", "o", "--lora-r", "16", "--lora-target-modules", "q_proj, v_proj", "--save-adapter", "--seed", "5")
	c, err := o.optimFlags.trainConfig(&o.modelFlags, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	l, ok := c.Adapter.(engine.LoRA)
	if !ok || l.R != 16 || l.Alpha != 8 || l.Dropout != 0 || strings.Join(l.TargetModules, ",") != "q_proj,v_proj" || l.SaveDir != "o" || l.Seed != 5 {
		t.Fatalf("adapter %#v", c.Adapter)
	}
	if wd, err := os.Getwd(); err != nil || l.BaseModel != wd {
		t.Fatalf("without --tokenizer, --lora-base-model defaults to %q, want the model's folder as an absolute path", l.BaseModel)
	}
	if c, _ := parseDPO(t, "--model", "m", "--data", "d", "--out", "o").optimFlags.trainConfig(&modelFlags{}, 1, nil); c.Adapter != nil {
		t.Fatalf("LoRA on by default: %#v", c.Adapter)
	}
	// --lora-base-model: as given, else the tokenizer config's name_or_path.
	tokDir := t.TempDir()
	for _, f := range []string{"tokenizer.json", "tokenizer_config.json"} {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(tinyTok), f))
		if err != nil {
			t.Fatal(err)
		}
		if f == "tokenizer_config.json" {
			b = bytes.Replace(b, []byte("{"), []byte(`{"name_or_path": "HuggingFaceTB/SmolLM2-135M",`), 1)
		}
		if err := os.WriteFile(filepath.Join(tokDir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tok, err := loadTokenizer(filepath.Join(tokDir, "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "HuggingFaceTB/SmolLM2-135M"},
		{[]string{"--lora-base-model", "org/base"}, "org/base"},
	} {
		o := parseSFT(t, append([]string{"--model", "m", "--data", "d", "--out", "o", "--lora-r", "4", "--save-adapter"}, c.args...)...)
		cfg, err := o.optimFlags.trainConfig(&o.modelFlags, 1, tok)
		if l, ok := cfg.Adapter.(engine.LoRA); err != nil || !ok || l.BaseModel != c.want {
			t.Errorf("%v: adapter %#v, %v; want base model %q", c.args, cfg.Adapter, err, c.want)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--lora-r", "-1"}, "--lora-r"},
		{[]string{"--lora-r", "8", "--lora-dropout", "0.05"}, "dropout"},
		{[]string{"--lora-r", "8", "--lora-alpha", "0"}, "alpha"},
		{[]string{"--save-adapter"}, "need --lora-r"},
		{[]string{"--lora-target-modules", "q_proj"}, "need --lora-r"},
	} {
		o := parseDPO(t, append([]string{"--model", "/nonexistent.onnx", "--data", "/nonexistent.parquet", "--out", t.TempDir()}, c.args...)...)
		err := runDPO(context.Background(), o, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: want an error naming %q, got %v", c.args, c.want, err)
		}
	}
}
