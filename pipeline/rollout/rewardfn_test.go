package rollout

import (
	"context"
	"ortalign/pipeline/generate"
	"ortalign/pipeline/objective"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func rewardInputs() []RewardInput {
	return []RewardInput{
		{Row: 0, Prompt: "2+2=", Completion: " 4", CompletionIDs: []int64{7, 510}, FinishReason: generate.FinishEOS},
		{Row: 1, Prompt: "3+4=", Completion: "8", CompletionIDs: []int64{1, 2, 3, 4}, FinishReason: generate.FinishLength},
		{Row: 2, Prompt: "capital of France:", Completion: "Paris\n", CompletionIDs: []int64{5, 6, 510}, FinishReason: generate.FinishEOS},
	}
}

func scores(t *testing.T, spec string, o RewardFuncOptions) []float64 {
	t.Helper()
	rf, err := ParseRewardFunc(spec, o)
	if err != nil {
		t.Fatal(err)
	}
	s, err := rf.Score(context.Background(), rewardInputs())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func equalScores(t *testing.T, spec string, got, want []float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %v, want %v", spec, got, want)
	}
	for i := range got {
		if d := got[i] - want[i]; d > 1e-12 || d < -1e-12 {
			t.Fatalf("%s: %v, want %v", spec, got, want)
		}
	}
}

// TestRewardFunctions: regex, match (against a dataset column, trimmed), length (a final
// EOS not counted) and cmd (a shell script reading JSON lines) score as documented.
func TestRewardFunctions(t *testing.T) {
	o := RewardFuncOptions{Prompts: "../../testdata/data/rl_prompts.jsonl", EOS: []int64{510}}
	equalScores(t, "regex", scores(t, `regex:^\s*\d+$`, o), []float64{1, 1, 0})
	equalScores(t, "match", scores(t, "match:answer", o), []float64{1, 0, 1})
	equalScores(t, "length", scores(t, "length:2", o), []float64{-0.5, -1, 0})
	dir := t.TempDir()
	script := filepath.Join(dir, "score.sh")
	// One number per line: 2.5 when the JSON line mentions Paris, else -1.
	if err := os.WriteFile(script, []byte("#!/bin/sh\nwhile IFS= read -r line; do case \"$line\" in *Paris*) echo 2.5;; *) echo -1;; esac; done\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	equalScores(t, "cmd", scores(t, "cmd:"+script, o), []float64{-1, -1, 2.5})
	for _, bad := range []string{"regex:(", "length:0", "length:x", "nope:1", "regex", "match:missing_column"} {
		if _, err := ParseRewardFunc(bad, o); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

// TestCommandRewardErrors: a failing program, a wrong number of lines or a line that is
// not a number is an error naming the row and prompt (no scores).
func TestCommandRewardErrors(t *testing.T) {
	for _, c := range []struct{ program, want string }{
		{"echo oops >&2; exit 3", "oops"},
		{"cat >/dev/null; echo 1; echo 2", "wrote 2 scores for 3 completions; no score for completion 2 (row 2, prompt \"capital of France:\")"},
		{"cat >/dev/null; echo 1; echo abc; echo 3", "line 2 is \"abc\", not a finite number (completion 1, row 1, prompt \"3+4=\")"},
		{"cat >/dev/null; echo 1; echo NaN; echo 3", "not a finite number"},
	} {
		_, err := CommandReward{Program: c.program}.Score(context.Background(), rewardInputs())
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want it to contain %q", c.program, err, c.want)
		}
	}
}

// TestAdvantagesGroups: GRPO and RLOO advantages on hand-computed groups.
func TestAdvantagesGroups(t *testing.T) {
	r := []float64{1, 0, 0, 1, 1, 1}
	a, _ := objective.Advantages(objective.RLConfig{Algo: objective.AlgoRLOO}, r, 3)
	equalScores(t, "rloo", a, []float64{1, -0.5, -0.5, 0, 0, 0})
	a, _ = objective.Advantages(objective.RLConfig{Algo: objective.AlgoGRPO, ScaleRewards: objective.ScaleNone}, r, 3)
	equalScores(t, "grpo none", a, []float64{2.0 / 3, -1.0 / 3, -1.0 / 3, 0, 0, 0})
	if _, err := objective.Advantages(objective.RLConfig{Algo: objective.AlgoGRPO}, r, 4); err == nil {
		t.Error("6 rewards in groups of 4: no error")
	}
}
