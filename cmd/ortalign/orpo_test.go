package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"ortalign/onnx"
)

func parseORPO(t *testing.T, args ...string) *orpoOptions { return parseFlags(t, newORPOCmd, args...) }
func parseCPO(t *testing.T, args ...string) *cpoOptions   { return parseFlags(t, newCPOCmd, args...) }

// refFreeArgs is the bundled reference-free run: the tiny Llama on the synthetic pairs.
func refFreeArgs(out string, extra ...string) []string {
	return append([]string{"--model", tinyLlama, "--data", trainData, "--tokenizer", tinyTok, "--out", out,
		"--max-length", "128", "--truncation", "keep_end", "--lr", "1e-3", "--epochs", "1", "--seed", "1",
		"--checkpoint-every", "50"}, extra...)
}

// runRefFreeCmd parses and runs `ortalign orpo` (cmd "orpo") or `ortalign cpo` with args;
// it returns stdout and stderr.
func runRefFreeCmd(t *testing.T, cmd string, args ...string) (string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	var err error
	if cmd == "orpo" {
		err = runORPO(context.Background(), parseORPO(t, args...), &stdout, &stderr)
	} else {
		err = runCPO(context.Background(), parseCPO(t, args...), &stdout, &stderr)
	}
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", cmd, args, err, stderr.String())
	}
	return stdout.String(), stderr.String()
}

// TestRefFreeFirstStepLogsTRLValues: `ortalign orpo` and `ortalign cpo` on the four
// pairs of testdata/gen_reffree_oracle.py's batch (its pre-tokenized rows, one batch)
// log at step 1 what TRL's formulas give in PyTorch: ORPO's nll_loss, log_odds_ratio,
// log_odds_chosen and loss, with loss = nll_loss − β·log_odds_ratio; CPO's loss and
// nll_loss (sigmoid with the NLL, simpo without).
func TestRefFreeFirstStepLogsTRLValues(t *testing.T) {
	f, err := os.Open("../../testdata/expected/reffree_oracle_llama.json.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var oracle struct {
		NPairs int `json:"n_pairs"`
		Cases  []struct {
			Name    string             `json:"name"`
			Loss    float64            `json:"loss"`
			Metrics map[string]float64 `json:"metrics"`
		} `json:"cases"`
	}
	if err := json.NewDecoder(zr).Decode(&oracle); err != nil {
		t.Fatal(err)
	}
	rows := strings.SplitAfter(readFile(t, "../../testdata/data/train_tokenized.jsonl"), "\n")[:oracle.NPairs]
	data := filepath.Join(t.TempDir(), "pairs.jsonl")
	if err := os.WriteFile(data, []byte(strings.Join(rows, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cmd, oracleCase string
		args            []string
		metrics         []string
	}{
		{"orpo", "orpo", []string{"--beta", "0.1"}, []string{"nll_loss", "log_odds_ratio", "log_odds_chosen", "rewards/accuracies"}},
		{"cpo", "cpo_sigmoid", []string{"--beta", "0.1"}, []string{"nll_loss", "rewards/margins"}},
		{"cpo", "simpo", []string{"--loss", "simpo", "--beta", "2", "--cpo-alpha", "0", "--simpo-gamma", "0.5"}, []string{"nll_loss", "rewards/margins"}},
	} {
		t.Run(c.oracleCase, func(t *testing.T) {
			var want map[string]float64
			var wantLoss float64
			for _, oc := range oracle.Cases {
				if oc.Name == c.oracleCase {
					want, wantLoss = oc.Metrics, oc.Loss
				}
			}
			if want == nil {
				t.Fatalf("no oracle case %s", c.oracleCase)
			}
			out := t.TempDir()
			runRefFreeCmd(t, c.cmd, append([]string{"--model", tinyLlama, "--data", data, "--out", out, "--max-length", "0",
				"--batch-size", strconv.Itoa(oracle.NPairs), "--max-steps", "1", "--no-shuffle"}, c.args...)...)
			got := metricLines(t, filepath.Join(out, "metrics.jsonl"))[0]
			near := func(name string, g, w float64) {
				if math.Abs(g-w) > 2e-6*math.Max(1, math.Abs(w)) {
					t.Errorf("step 1 %s: logged %.9f, TRL's formula %.9f", name, g, w)
				}
			}
			loss, nll := got.Value("loss"), got.Value("nll_loss")
			near("loss", loss, wantLoss)
			for _, name := range c.metrics {
				near(name, got.Value(name), want[name])
			}
			if ratio := got.Value("log_odds_ratio"); c.cmd == "orpo" && math.Abs(loss-(nll-0.1*ratio)) > 1e-6 {
				t.Errorf("loss %.9f != nll_loss − β·log_odds_ratio (%.9f)", loss, nll-0.1*ratio)
			}
			t.Logf("step 1: loss %.7f (TRL %.7f), nll_loss %.7f (TRL %.7f)", loss, wantLoss, nll, want["nll_loss"])
		})
	}
}

// heldOutAccuracies reads the held-out rewards/accuracies before and after training
// from a trainer's summary.
func heldOutAccuracies(t *testing.T, stdout string) (before, after float64) {
	t.Helper()
	m := regexp.MustCompile(`rewards/accuracies +(\S+) +(\S+)\n`).FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("summary has no held-out accuracy: %s", stdout)
	}
	before, _ = strconv.ParseFloat(m[1], 64)
	after, _ = strconv.ParseFloat(m[2], 64)
	return before, after
}

// TestORPOAndSimPORaiseHeldOutAccuracy: one epoch of ORPO and of SimPO (cpo --loss simpo
// --cpo-alpha 0) on the bundled pairs raises the held-out reward accuracy (their own
// rewards: β times the average log-probs) from its start to at least 80%, with full
// training and with LoRA adapters; the exports keep the user's graph.
func TestORPOAndSimPORaiseHeldOutAccuracy(t *testing.T) {
	simpo := []string{"--loss", "simpo", "--cpo-alpha", "0", "--beta", "2"}
	lora := []string{"--lora-r", "8", "--lora-alpha", "16", "--lr", "1e-2"}
	orig, _ := onnx.Load(tinyLlama)
	for _, c := range []struct {
		name, cmd string
		args      []string
	}{
		{"orpo", "orpo", nil},
		{"simpo", "cpo", simpo},
		{"orpo_lora", "orpo", lora},
		{"simpo_lora", "cpo", append(append([]string{}, simpo...), lora...)},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := t.TempDir()
			stdout, stderr := runRefFreeCmd(t, c.cmd, refFreeArgs(out, append([]string{"--eval-data", tinyData}, c.args...)...)...)
			if strings.Contains(c.name, "lora") && !strings.Contains(stderr, "training 28 tensors") {
				t.Fatalf("want 28 adapter tensors: %s", stderr)
			}
			before, after := heldOutAccuracies(t, stdout)
			t.Logf("held-out reward accuracy %.2f -> %.2f", before, after)
			if !(after > before) || after < 0.8 {
				t.Fatalf("held-out reward accuracy %.2f -> %.2f: want a rise to >= 0.8", before, after)
			}
			got, err := onnx.Load(filepath.Join(out, "model.onnx"))
			if err != nil {
				t.Fatal(err)
			}
			if so, sg := onnx.Summary(orig), onnx.Summary(got); so.Nodes != sg.Nodes || so.ParamCount != sg.ParamCount {
				t.Fatalf("export changed the graph: %+v vs %+v", sg, so)
			}
		})
	}
}

// TestRefFreeResumeMatchesUninterruptedRun: an ORPO and a CPO run stopped after 5 steps
// and resumed to 10 end with exactly the weights and metrics of a 10-step run.
func TestRefFreeResumeMatchesUninterruptedRun(t *testing.T) {
	for _, c := range []struct {
		cmd  string
		args []string
	}{
		{"orpo", nil},
		{"cpo", []string{"--loss", "ipo", "--lora-r", "4"}},
	} {
		t.Run(c.cmd, func(t *testing.T) {
			straight, split := t.TempDir(), t.TempDir()
			run := func(dir string, steps int) {
				runRefFreeCmd(t, c.cmd, refFreeArgs(dir, append([]string{"--max-steps", strconv.Itoa(steps), "--checkpoint-every", "3", "--lr-scheduler", "constant"}, c.args...)...)...)
			}
			run(straight, 10)
			run(split, 5)
			run(split, 10)
			if a, b := readFile(t, filepath.Join(straight, "model.onnx")), readFile(t, filepath.Join(split, "model.onnx")); a != b {
				t.Fatal("resumed model.onnx differs from the uninterrupted run's")
			}
			a, b := metricLines(t, filepath.Join(straight, "metrics.jsonl")), metricLines(t, filepath.Join(split, "metrics.jsonl"))
			if len(a) != 10 || len(b) != 10 {
				t.Fatalf("%d and %d step lines, want 10", len(a), len(b))
			}
			for i := range a {
				for _, name := range []string{"loss", "nll_loss", "rewards/accuracies", "grad_norm"} {
					if x, y := a[i].Value(name), b[i].Value(name); x != y {
						t.Fatalf("step %d %s: resumed %v, straight %v", i+1, name, y, x)
					}
				}
			}
		})
	}
}

// TestRefFreeFlags: TRL's option names and defaults parse into the objectives, and bad
// values are errors naming the flag, before anything is loaded.
func TestRefFreeFlags(t *testing.T) {
	base := []string{"--model", "m", "--data", "d", "--out", "o"}
	if o := parseORPO(t, base...); o.beta != 0.1 || o.lr != 1e-6 {
		t.Errorf("orpo defaults: beta %g, lr %g", o.beta, o.lr)
	}
	c, err := parseCPO(t, base...).config()
	if err != nil || c.Loss != "sigmoid" || c.Beta != 0.1 || c.Alpha != 1 || c.SimPOGamma != 0 || c.LabelSmoothing != 0 {
		t.Errorf("cpo defaults: %+v, %v", c, err)
	}
	c, err = parseCPO(t, append(base, "--loss", "simpo", "--label-smoothing", "0.1", "--cpo-alpha", "0")...).config()
	if err != nil || c.SimPOGamma != 0.5 || c.Alpha != 0 || c.LabelSmoothing != 0.1 {
		t.Errorf("cpo --loss simpo: %+v, %v", c, err)
	}
	for _, c := range []struct {
		cmd  string
		args []string
		want string
	}{
		{"orpo", []string{"--beta", "0"}, "--beta"},
		{"cpo", []string{"--loss", "nope"}, "--loss"},
		{"cpo", []string{"--simpo-gamma", "1"}, "--simpo-gamma"},
		{"cpo", []string{"--loss", "hinge", "--label-smoothing", "0.1"}, "label smoothing"},
		{"cpo", []string{"--cpo-alpha", "-1"}, "cpo alpha"},
		{"cpo", []string{"--beta", "-0.1"}, "beta"},
		{"orpo", []string{"--gradient-accumulation-steps", "0"}, "--gradient-accumulation-steps"},
	} {
		args := append([]string{"--model", "/nonexistent.onnx", "--data", "/nonexistent.parquet", "--out", t.TempDir()}, c.args...)
		var err error
		if c.cmd == "orpo" {
			err = runORPO(context.Background(), parseORPO(t, args...), io.Discard, io.Discard)
		} else {
			err = runCPO(context.Background(), parseCPO(t, args...), io.Discard, io.Discard)
		}
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "nonexistent") {
			t.Errorf("%s %v: want a flag error mentioning %q before loading anything, got %v", c.cmd, c.args, c.want, err)
		}
	}
}
