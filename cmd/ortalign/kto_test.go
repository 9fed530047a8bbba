package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"ortalign/onnx"
	"ortalign/pipeline/objective"
)

func parseKTO(t *testing.T, args ...string) *ktoOptions { return parseFlags(t, newKTOCmd, args...) }

// ktoOpts is the bundled KTO run: the tiny Llama on the synthetic pairs, unpaired.
func ktoOpts(t *testing.T, out string, extra ...string) *ktoOptions {
	t.Helper()
	args := []string{"--model", tinyLlama, "--data", trainData, "--tokenizer", tinyTok, "--out", out}
	args = append(args, "--max-length", "128", "--truncation", "keep_end", "--lr", "1e-3", "--epochs", "1", "--seed", "1", "--checkpoint-every", "50")
	return parseKTO(t, append(args, extra...)...)
}

// stepLines are the optimizer-step lines (those with a loss) of a metrics.jsonl, by name.
func stepLines(t *testing.T, path string) []map[string]float64 {
	t.Helper()
	var lines []map[string]float64
	for _, m := range metricLines(t, path) {
		if _, ok := m.Get("loss"); ok {
			line := map[string]float64{}
			for _, x := range m {
				line[x.Name] = x.Value
			}
			lines = append(lines, line)
		}
	}
	return lines
}

// TestKTORaisesHeldOutRewardAccuracy: kto on the bundled pairs, unpaired (800 rows), in
// TRL's order (a block of desirable rows, then undesirable ones) for one epoch raises the
// held-out reward accuracy of the pairs against the starting model from 0 (every reward
// is 0 at the start) to >= 90%; shuffled, so are 20 steps, as DPO's 20 steps on the same
// pairs (both accuracies logged); with LoRA adapters, >= 80%. The metrics lines carry
// TRL's names, and the export keeps the user's graph.
func TestKTORaisesHeldOutRewardAccuracy(t *testing.T) {
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	if err := runKTO(context.Background(), ktoOpts(t, out, "--eval-data", tinyData), &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr.String(), "on 800 rows (400 desirable; kto loss") {
		t.Fatalf("stderr: %s", stderr.String())
	}
	start := heldOutAccuracy(t, tinyLlama, tinyLlama)
	acc := heldOutAccuracy(t, filepath.Join(out, "model.onnx"), tinyLlama)
	t.Logf("held-out reward accuracy: %.1f%% at the start, %.1f%% after one KTO epoch", 100*start, 100*acc)
	if start != 0 || acc < 0.9 {
		t.Fatalf("held-out reward accuracy %.1f%% -> %.1f%%, want 0 -> >= 90%%", 100*start, 100*acc)
	}
	orig, _ := onnx.Load(tinyLlama)
	got, err := onnx.Load(filepath.Join(out, "model.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	if so, sg := onnx.Summary(orig), onnx.Summary(got); so.Nodes != sg.Nodes || so.ParamCount != sg.ParamCount || len(so.Inputs) != len(sg.Inputs) {
		t.Fatalf("export changed the graph: %+v vs %+v", sg, so)
	}
	lines := stepLines(t, filepath.Join(out, "metrics.jsonl"))
	if len(lines) != 100 {
		t.Fatalf("%d step lines, want 100 (800 rows / 8)", len(lines))
	}
	positiveKL := 0
	for i, m := range lines {
		for _, name := range []string{"kl", "rewards/chosen_sum", "logps/chosen_sum", "rewards/rejected_sum", "logps/rejected_sum", "grad_norm", "learning_rate"} {
			if _, ok := m[name]; !ok {
				t.Fatalf("step %d has no %s: %v", i+1, name, m)
			}
		}
		// In file order the first 50 batches are desirable rows, the last 50 undesirable.
		want := 0.0
		if i < 50 {
			want = 8
		}
		if m["count/chosen"] != want || m["count/chosen"]+m["count/rejected"] != 8 {
			t.Fatalf("step %d: counts %v / %v", i+1, m["count/chosen"], m["count/rejected"])
		}
		if m["kl"] < 0 {
			t.Fatalf("step %d: kl %v below its clamp", i+1, m["kl"])
		}
		if m["kl"] > 0 {
			positiveKL++
		}
	}
	if positiveKL == 0 || lines[0]["kl"] != 0 || lines[0]["rewards/chosen_sum"] > 1e-5 {
		t.Fatalf("kl never positive, or not 0 at the start: %v", lines[0])
	}
	if !strings.Contains(stdout.String(), "rewards/chosen_sum") {
		t.Fatalf("summary: %s", stdout.String())
	}

	// LoRA: the 28 adapter tensors of the tiny Llama (2 layers x 7 projections x A, B),
	// merged into model.onnx, also saved as PEFT's files.
	lora := t.TempDir()
	stderr.Reset()
	o := ktoOpts(t, lora, "--lora-r", "8", "--lora-alpha", "16", "--lr", "1e-2", "--no-shuffle=false", "--save-adapter", "--lora-base-model", "tiny/llama")
	if err := runKTO(context.Background(), o, io.Discard, &stderr); err != nil {
		t.Fatal(err)
	}
	loraAcc := heldOutAccuracy(t, filepath.Join(lora, "model.onnx"), tinyLlama)
	t.Logf("held-out reward accuracy after one LoRA KTO epoch (shuffled rows): %.1f%%", 100*loraAcc)
	if _, err := os.Stat(filepath.Join(lora, "adapter_config.json")); err != nil || !strings.Contains(stderr.String(), "training 28 tensors") || loraAcc < 0.8 {
		t.Fatalf("LoRA: accuracy %.1f%% (want >= 80%%), adapter_config.json: %v; %s", 100*loraAcc, err, stderr.String())
	}

	// Shuffled, 20 steps, against DPO's 20 steps on the same pairs.
	short := []string{"--max-steps", "20", "--lr-scheduler", "constant"}
	kto, dpo := t.TempDir(), t.TempDir()
	if err := runKTO(context.Background(), ktoOpts(t, kto, append(short, "--no-shuffle=false")...), io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	if err := runDPO(context.Background(), dpoOpts(t, dpo, short...), io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	ktoAcc, dpoAcc := heldOutAccuracy(t, filepath.Join(kto, "model.onnx"), tinyLlama), heldOutAccuracy(t, filepath.Join(dpo, "model.onnx"), tinyLlama)
	t.Logf("after 20 steps of 8: KTO (shuffled rows) %.1f%%, DPO (pairs) %.1f%%", 100*ktoAcc, 100*dpoAcc)
	if ktoAcc < 0.9 {
		t.Fatalf("KTO after 20 shuffled steps: %.1f%%, want >= 90%%", 100*ktoAcc)
	}
}

// TestKTOResumeMatchesUninterruptedRun: a run stopped after 5 steps and resumed to 10
// ends with exactly the weights and the metrics of a 10-step run: full fine-tuning in
// TRL's order, LoRA adapters on shuffled rows, and apo_zero_unpaired.
func TestKTOResumeMatchesUninterruptedRun(t *testing.T) {
	for name, extra := range map[string][]string{
		"full":              nil,
		"lora_shuffled":     {"--lora-r", "8", "--lora-alpha", "16", "--lr", "1e-2", "--no-shuffle=false"},
		"apo_zero_unpaired": {"--loss", "apo_zero_unpaired", "--batch-size", "3"},
	} {
		t.Run(name, func(t *testing.T) {
			straight, split := t.TempDir(), t.TempDir()
			run := func(dir string, steps int) {
				o := ktoOpts(t, dir, append([]string{"--max-steps", strconv.Itoa(steps), "--lr-scheduler", "constant", "--checkpoint-every", "3"}, extra...)...)
				if err := runKTO(context.Background(), o, io.Discard, io.Discard); err != nil {
					t.Fatal(err)
				}
			}
			run(straight, 10)
			run(split, 5)
			run(split, 10)
			a, b := readFile(t, filepath.Join(straight, "model.onnx")), readFile(t, filepath.Join(split, "model.onnx"))
			if a != b {
				t.Fatal("model.onnx of the resumed run differs from the uninterrupted run's")
			}
			want, got := stepLines(t, filepath.Join(straight, "metrics.jsonl")), stepLines(t, filepath.Join(split, "metrics.jsonl"))
			if len(got) != 10 || len(want) != 10 {
				t.Fatalf("%d and %d step lines, want 10", len(got), len(want))
			}
			for i := range want {
				for k, v := range want[i] {
					if !strings.HasPrefix(k, "time/") && got[i][k] != v {
						t.Fatalf("step %d: %s %v resumed, %v uninterrupted", i+1, k, got[i][k], v)
					}
				}
			}
			if name == "apo_zero_unpaired" && want[9]["kl"] != 0 {
				t.Fatalf("apo_zero_unpaired logs kl %v, want 0", want[9]["kl"])
			}
		})
	}
}

// TestKTOFlags: the loss flags and TRL's defaults (β 0.1, weights 1, lr 1e-6, rows in
// order) reach the configuration; bad values are errors naming the flag before anything
// is loaded.
func TestKTOFlags(t *testing.T) {
	o := parseKTO(t, "--model", "m", "--data", "d", "--out", "o")
	c, err := o.config()
	if err != nil {
		t.Fatal(err)
	}
	if c != (objective.KTOConfig{LossType: "kto", Beta: 0.1, DesirableWeight: 1, UndesirableWeight: 1}) || o.lr != 1e-6 || !o.noShuffle {
		t.Fatalf("defaults: %+v, lr %g, no-shuffle %v", c, o.lr, o.noShuffle)
	}
	o = parseKTO(t, "--model", "m", "--data", "d", "--out", "o", "--loss", "apo_zero_unpaired", "--beta", "0.3",
		"--desirable-weight", "1.33", "--undesirable-weight", "0.5", "--no-shuffle=false", "--batch-size", "1")
	if c, err = o.config(); err != nil || c != (objective.KTOConfig{LossType: "apo_zero_unpaired", Beta: 0.3, DesirableWeight: 1.33, UndesirableWeight: 0.5}) || o.noShuffle {
		t.Fatalf("%+v %v, no-shuffle %v", c, err, o.noShuffle)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--loss", "sigmoid"}, "--loss"},
		{[]string{"--beta", "0"}, "--beta"},
		{[]string{"--desirable-weight", "-1"}, "--desirable-weight"},
		{[]string{"--batch-size", "1"}, "--batch-size must be at least 2"},
		{[]string{"--lr-scheduler", "nope"}, "scheduler"},
		{[]string{"--eval-fraction", "1.5"}, "--eval-fraction"},
	} {
		o := parseKTO(t, append([]string{"--model", "/nonexistent.onnx", "--data", "/nonexistent.parquet", "--out", t.TempDir()}, c.args...)...)
		err := runKTO(context.Background(), o, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "nonexistent") {
			t.Errorf("%v: want a flag error mentioning %q before loading anything, got %v", c.args, c.want, err)
		}
	}
}

// TestKTOUnpairedFile: a labelled prompt-completion file trains as it is (its rows and
// labels), and an unbalanced one draws TRL's advice on the weights.
func TestKTOUnpairedFile(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "thumbs.jsonl")
	var b strings.Builder
	for i := range 12 {
		label := i%4 != 3 // 9 desirable, 3 undesirable
		completion := " excellent lovely."
		if !label {
			completion = " terrible broken."
		}
		line, _ := json.Marshal(map[string]any{"prompt": "Review " + strconv.Itoa(i) + ":", "completion": completion, "label": label})
		b.Write(append(line, '\n'))
	}
	if err := os.WriteFile(data, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	o := parseKTO(t, "--model", tinyLlama, "--data", data, "--tokenizer", tinyTok, "--out", filepath.Join(dir, "out"),
		"--lr", "1e-3", "--batch-size", "4", "--max-steps", "2")
	if err := runKTO(context.Background(), o, io.Discard, &stderr); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"on 12 rows (9 desirable", "9 desirable and 3 undesirable rows", "undesirable weight in [2.26, 3]"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
	if lines := stepLines(t, filepath.Join(dir, "out", "metrics.jsonl")); len(lines) != 2 || lines[0]["count/chosen"] != 3 || lines[0]["count/rejected"] != 1 {
		t.Fatalf("metrics %v", lines)
	}
}

// TestKTOStepReferenceEqualsPrecomputed: kto with each step's reference log-probs (rows'
// and KL sequences') computed as the step comes (the default) writes the model.onnx and
// metrics.jsonl (but for wall-clock values) of --precompute-ref-log-probs, with held-out
// rows evaluated along the way, with the starting model as the reference, with a --ref
// model, and shuffled with apo_zero_unpaired; stderr says which way it went.
func TestKTOStepReferenceEqualsPrecomputed(t *testing.T) {
	for name, extra := range map[string][]string{
		"starting model":             nil,
		"--ref":                      {"--ref", tinyLlama},
		"apo_zero_unpaired_shuffled": {"--loss", "apo_zero_unpaired", "--no-shuffle=false"},
	} {
		t.Run(name, func(t *testing.T) {
			run := func(pre bool) (string, string) {
				t.Helper()
				out := t.TempDir()
				args := append([]string{"--max-steps", "6", "--eval-fraction", "0.05", "--eval-steps", "3", "--batch-size", "4", "--gradient-accumulation-steps", "2"}, extra...)
				if pre {
					args = append(args, "--precompute-ref-log-probs")
				}
				var stderr bytes.Buffer
				if err := runKTO(context.Background(), ktoOpts(t, out, args...), io.Discard, &stderr); err != nil {
					t.Fatal(err)
				}
				return out, stderr.String()
			}
			step, stepLog := run(false)
			pre, preLog := run(true)
			if !strings.Contains(stepLog, "each step's as it comes") || strings.Contains(preLog, "each step's as it comes") || !strings.Contains(preLog, "reference: ") {
				t.Errorf("stderr does not say how the reference was computed:\n%s\n--precompute-ref-log-probs:\n%s", stepLog, preLog)
			}
			if strings.Contains(stepLog, "reference: ") {
				t.Errorf("a pass over the data before training:\n%s", stepLog)
			}
			if a, b := readFile(t, filepath.Join(step, "model.onnx")), readFile(t, filepath.Join(pre, "model.onnx")); a != b {
				t.Error("model.onnx differs from the precomputed run's")
			}
			a := untimed(t, []byte(readFile(t, filepath.Join(step, "metrics.jsonl"))))
			b := untimed(t, []byte(readFile(t, filepath.Join(pre, "metrics.jsonl"))))
			if a != b || strings.Count(a, `"eval_loss"`) != 2 {
				t.Errorf("metrics (wall-clock values left out), each step's reference:\n%s\nprecomputed:\n%s", a, b)
			}
		})
	}
}
