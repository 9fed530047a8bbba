package rollout

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"ortalign/data"
	"ortalign/pipeline/lm"
)

// RewardInput is one completion to score.
type RewardInput struct {
	Row                      int64 // the prompt's row in the dataset
	Prompt, Completion       string
	PromptIDs, CompletionIDs []int64
	FinishReason             string
}

// RewardFunc scores completions: one number per input. An error names the input at fault
// and means no reward for the whole batch (the step is not applied).
type RewardFunc interface {
	Name() string
	Score(ctx context.Context, in []RewardInput) ([]float64, error)
}

// RewardFuncOptions are what reward specs need beside themselves.
type RewardFuncOptions struct {
	// Prompts is the dataset match:COLUMN reads its column from, with Columns mapping its
	// fields (data.ParseColumns).
	Prompts string
	Columns map[string]string
	// EOS ids are not counted by length:TARGET.
	EOS []int64
}

// ParseRewardFunc parses one reward spec:
//
//	regex:PATTERN  1 when the completion text matches PATTERN (Go RE2 syntax, anywhere), else 0
//	match:COLUMN   1 when the completion, trimmed of spaces, equals the dataset column's
//	               value (trimmed) in the prompt's row, else 0
//	length:TARGET  −|n − TARGET|/TARGET with n the completion's tokens (a final EOS not counted)
//	cmd:PROGRAM    PROGRAM run by sh -c once per step: JSON lines {"prompt", "completion"}
//	               on its stdin, one number a line on its stdout, in order
func ParseRewardFunc(spec string, o RewardFuncOptions) (RewardFunc, error) {
	kind, arg, ok := strings.Cut(spec, ":")
	if !ok || arg == "" {
		return nil, fmt.Errorf("reward function %q: want regex:PATTERN, match:COLUMN, length:TARGET or cmd:PROGRAM", spec)
	}
	switch kind {
	case "regex":
		re, err := regexp.Compile(arg)
		if err != nil {
			return nil, fmt.Errorf("reward function %q: %w", spec, err)
		}
		return RegexReward{re}, nil
	case "match":
		vals, err := LoadColumn(o.Prompts, arg, o.Columns)
		if err != nil {
			return nil, fmt.Errorf("reward function %q: %w", spec, err)
		}
		return MatchReward{Column: arg, Values: vals}, nil
	case "length":
		n, err := strconv.Atoi(arg)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("reward function %q: the target must be a positive number of tokens", spec)
		}
		return LengthReward{Target: n, EOS: o.EOS}, nil
	case "cmd":
		return CommandReward{Program: arg}, nil
	}
	return nil, fmt.Errorf("reward function %q: unknown kind %q (regex, match, length, cmd)", spec, kind)
}

// RegexReward is 1 for a completion that matches, else 0.
type RegexReward struct{ Re *regexp.Regexp }

// Name implements RewardFunc.
func (r RegexReward) Name() string { return "regex:" + r.Re.String() }

// Score implements RewardFunc.
func (r RegexReward) Score(_ context.Context, in []RewardInput) ([]float64, error) {
	out := make([]float64, len(in))
	for i, x := range in {
		if r.Re.MatchString(x.Completion) {
			out[i] = 1
		}
	}
	return out, nil
}

// MatchReward is 1 for a completion equal (trimmed) to its row's value, else 0.
type MatchReward struct {
	Column string
	Values map[int64]string // row -> value
}

// Name implements RewardFunc.
func (r MatchReward) Name() string { return "match:" + r.Column }

// Score implements RewardFunc.
func (r MatchReward) Score(_ context.Context, in []RewardInput) ([]float64, error) {
	out := make([]float64, len(in))
	for i, x := range in {
		want, ok := r.Values[x.Row]
		if !ok {
			return nil, fmt.Errorf("%s: row %d (prompt %q) has no value", r.Name(), x.Row, clip(x.Prompt))
		}
		if strings.TrimSpace(x.Completion) == strings.TrimSpace(want) {
			out[i] = 1
		}
	}
	return out, nil
}

// LengthReward is −|n − Target|/Target, n the completion's tokens without a final EOS.
type LengthReward struct {
	Target int
	EOS    []int64
}

// Name implements RewardFunc.
func (r LengthReward) Name() string { return "length:" + strconv.Itoa(r.Target) }

// Score implements RewardFunc.
func (r LengthReward) Score(_ context.Context, in []RewardInput) ([]float64, error) {
	out := make([]float64, len(in))
	for i, x := range in {
		n := len(x.CompletionIDs)
		if n > 0 && slices.Contains(r.EOS, x.CompletionIDs[n-1]) {
			n--
		}
		out[i] = -math.Abs(float64(n-r.Target)) / float64(r.Target)
	}
	return out, nil
}

// CommandReward runs a user program once per batch (see ParseRewardFunc).
type CommandReward struct{ Program string }

// Name implements RewardFunc.
func (r CommandReward) Name() string { return "cmd:" + r.Program }

// Score implements RewardFunc: a program that fails, writes another number of lines or a
// line that is not a finite number is an error naming the prompt's row.
func (r CommandReward) Score(ctx context.Context, in []RewardInput) ([]float64, error) {
	var stdin bytes.Buffer
	enc := json.NewEncoder(&stdin)
	enc.SetEscapeHTML(false)
	for _, x := range in {
		if err := enc.Encode(map[string]string{"prompt": x.Prompt, "completion": x.Completion}); err != nil {
			return nil, err
		}
	}
	cmd := exec.CommandContext(ctx, "sh", "-c", r.Program)
	cmd.Stdin = &stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 500 {
			msg = msg[len(msg)-500:]
		}
		first := ""
		if len(in) > 0 {
			first = fmt.Sprintf(" (scoring %d completions, the first of row %d, prompt %q)", len(in), in[0].Row, clip(in[0].Prompt))
		}
		if msg != "" {
			msg = ": " + msg
		}
		return nil, fmt.Errorf("reward program %q failed%s: %w%s", r.Program, first, err, msg)
	}
	var out []float64
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(make([]byte, 1<<16), 1<<24)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" && len(out) >= len(in) {
			continue
		}
		k := len(out)
		v, err := strconv.ParseFloat(line, 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			if k < len(in) {
				return nil, fmt.Errorf("reward program %q: line %d is %q, not a finite number (completion %d, row %d, prompt %q)", r.Program, k+1, clip(line), k, in[k].Row, clip(in[k].Prompt))
			}
			return nil, fmt.Errorf("reward program %q: line %d is %q, not a finite number", r.Program, k+1, clip(line))
		}
		out = append(out, v)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reward program %q: %w", r.Program, err)
	}
	if len(out) != len(in) {
		at := ""
		if len(out) < len(in) {
			at = fmt.Sprintf("; no score for completion %d (row %d, prompt %q) on", len(out), in[len(out)].Row, clip(in[len(out)].Prompt))
		}
		return nil, fmt.Errorf("reward program %q wrote %d scores for %d completions%s", r.Program, len(out), len(in), at)
	}
	return out, nil
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}

// LoadColumn reads a string column of a dataset, by row: the value match:COLUMN compares
// completions with. columns maps the dataset's other fields, as for its prompts.
func LoadColumn(path, column string, columns map[string]string) (map[int64]string, error) {
	if path == "" {
		return nil, errors.New("no dataset to read the column from")
	}
	cols := map[string]string{}
	for k, v := range columns {
		if k == data.FieldPrompt || k == data.FieldPromptIDs {
			cols[k] = v
		}
	}
	// Read COLUMN as the completion of a prompt-completion dataset.
	cols[data.FieldCompletion] = column
	ds, err := data.Open(path, data.Options{Columns: cols, Use: data.UseSFT})
	if err != nil {
		return nil, fmt.Errorf("%s: column %q: %w", path, column, err)
	}
	defer ds.Close()
	if ds.Layout != data.PromptCompletion {
		return nil, fmt.Errorf("%s: column %q: read as a %s dataset, want a string column beside a text prompt", path, column, ds.Layout)
	}
	ex, _, err := ds.ReadAll()
	if err != nil {
		return nil, err
	}
	out := make(map[int64]string, len(ex))
	for _, e := range ex {
		out[e.Row] = e.Completion
	}
	return out, nil
}

// ModelReward scores prompt + completion ids with a reward model (RewardModel.Rewards),
// in batches.
type ModelReward struct {
	Label   string // "reward_model" when empty
	Rewards func(rows []lm.Sequence) ([]float64, error)
	Batch   int // sequences per forward pass (0: 16)
}

// Name implements RewardFunc.
func (r ModelReward) Name() string {
	if r.Label == "" {
		return "reward_model"
	}
	return r.Label
}

// Score implements RewardFunc: the model's score of each prompt + completion.
func (r ModelReward) Score(ctx context.Context, in []RewardInput) ([]float64, error) {
	bs := r.Batch
	if bs <= 0 {
		bs = 16
	}
	out := make([]float64, 0, len(in))
	for lo := 0; lo < len(in); lo += bs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		part := in[lo:min(lo+bs, len(in))]
		rows := make([]lm.Sequence, len(part))
		for i, x := range part {
			rows[i] = lm.Sequence{IDs: append(slices.Clip(x.PromptIDs), x.CompletionIDs...)}
		}
		v, err := r.Rewards(rows)
		if err != nil {
			return nil, fmt.Errorf("%s: completions of rows %d..%d: %w", r.Name(), part[0].Row, part[len(part)-1].Row, err)
		}
		if len(v) != len(part) {
			return nil, fmt.Errorf("%s: %d scores for %d sequences", r.Name(), len(v), len(part))
		}
		out = append(out, v...)
	}
	return out, nil
}
