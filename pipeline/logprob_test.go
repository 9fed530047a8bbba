package pipeline

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ortalign/onnx"
)

// oracle is testdata/expected/logps.json, written by testdata/gen_expected_logps.py (PyTorch).
type oracle struct {
	PadID  int64 `json:"pad_id"`
	Models map[string]struct {
		OnnxFiles []string `json:"onnx_files"`
	} `json:"models"`
	Batches []struct {
		Model          string      `json:"model"`
		Name           string      `json:"name"`
		InputIDs       [][]int64   `json:"input_ids"`
		AttentionMask  [][]int64   `json:"attention_mask"`
		CompletionMask [][]float64 `json:"completion_mask"`
		PromptLen      []int       `json:"prompt_len"`
		CompletionLen  []int       `json:"completion_len"`
		Logps          []float64   `json:"logps_float64"`
	} `json:"batches"`
}

func loadOracle(t *testing.T) oracle {
	t.Helper()
	b, err := os.ReadFile("../testdata/expected/logps.json")
	if err != nil {
		t.Fatal(err)
	}
	var o oracle
	if err := json.Unmarshal(b, &o); err != nil {
		t.Fatal(err)
	}
	return o
}

// TestSequenceLogpsMatchPyTorch checks the scoring head against PyTorch's float64
// log-probs on both tiny models, at opsets 14 and 17, on right-padded mixed-length
// batches (chosen rows then rejected rows).
func TestSequenceLogpsMatchPyTorch(t *testing.T) {
	o := loadOracle(t)
	for model, info := range o.Models {
		for _, file := range info.OnnxFiles {
			t.Run(filepath.Base(file), func(t *testing.T) {
				lm, err := LoadLogProbModel(filepath.Join("../testdata", file), ModelOptions{Threads: 1, PadID: o.PadID})
				if err != nil {
					t.Fatal(err)
				}
				defer lm.Close()
				if lm.VocabSize() != 512 {
					t.Fatalf("vocab = %d, want 512", lm.VocabSize())
				}
				checked, worst := 0, 0.0
				for _, b := range o.Batches {
					if b.Model != model {
						continue
					}
					rows := make([]Sequence, len(b.InputIDs))
					for i := range rows {
						n := b.PromptLen[i] + b.CompletionLen[i]
						rows[i] = Sequence{IDs: b.InputIDs[i][:n], CompletionStart: b.PromptLen[i]}
						// The oracle's mask must agree with our reading of it.
						for t2, m := range b.CompletionMask[i] {
							if want := t2 >= b.PromptLen[i] && t2 < n; (m == 1) != want {
								t.Fatalf("%s row %d: oracle mask disagrees at %d", b.Name, i, t2)
							}
						}
					}
					got, err := lm.SequenceLogps(rows)
					if err != nil {
						t.Fatal(err)
					}
					for i := range got {
						d := math.Abs(got[i] - b.Logps[i])
						worst = max(worst, d)
						if d > 1e-4 {
							t.Errorf("%s row %d: logps %.7f, PyTorch %.7f (diff %.2e)", b.Name, i, got[i], b.Logps[i], d)
						}
						checked++
					}
				}
				if checked == 0 {
					t.Fatal("no oracle rows for this model")
				}
				t.Logf("%d rows, max |diff| vs PyTorch float64 = %.2e", checked, worst)
			})
		}
	}
}

func TestModelWithoutLogitsIsAnError(t *testing.T) {
	m, err := onnx.Load("../testdata/models/gpt2_opset17.onnx")
	if err != nil {
		t.Fatal(err)
	}
	m.Graph().GetOutput()[0].Name = nil
	m.Graph().GetOutput()[0].Name = new(string)
	*m.Graph().GetOutput()[0].Name = "hidden"
	_, err = NewLogProbModel("renamed.onnx", m, ModelOptions{})
	if err == nil || !strings.Contains(err.Error(), `no output "logits"`) || !strings.Contains(err.Error(), "renamed.onnx") {
		t.Fatalf("want error naming the file and the missing logits, got %v", err)
	}
}

func TestIDsOutsideVocabularyAreAnError(t *testing.T) {
	lm, err := LoadLogProbModel("../testdata/models/gpt2_opset17.onnx", ModelOptions{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer lm.Close()
	_, err = lm.SequenceLogps([]Sequence{{IDs: []int64{1, 2, 600}, CompletionStart: 1}})
	if err == nil || !strings.Contains(err.Error(), "600") {
		t.Fatalf("want error naming id 600, got %v", err)
	}
}

func TestLengthBatches(t *testing.T) {
	lens := []int{3, 9, 1, 7, 5}
	got := LengthBatches(len(lens), 2, func(i int) int { return lens[i] })
	want := [][]int{{1, 3}, {4, 0}, {2}}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		for j := range want[i] {
			if got[i][j] != want[i][j] {
				t.Fatalf("got %v, want %v", got, want)
			}
		}
	}
}

// TestLargeModelPathGivesSameLogps forces the path used for models over 2 GB (a
// temporary model.onnx + external data) and checks it scores exactly like the in-memory one.
func TestLargeModelPathGivesSameLogps(t *testing.T) {
	o := loadOracle(t)
	b := o.Batches[0]
	rows := make([]Sequence, len(b.InputIDs))
	for i := range rows {
		rows[i] = Sequence{IDs: b.InputIDs[i][:b.PromptLen[i]+b.CompletionLen[i]], CompletionStart: b.PromptLen[i]}
	}
	path := "../testdata/models/" + b.Model + "_opset17.onnx"
	score := func() []float64 {
		lm, err := LoadLogProbModel(path, ModelOptions{Threads: 1, PadID: o.PadID})
		if err != nil {
			t.Fatal(err)
		}
		defer lm.Close()
		lp, err := lm.SequenceLogps(rows)
		if err != nil {
			t.Fatal(err)
		}
		return lp
	}
	inline := score()
	defer func(old int) { inlineLimit = old }(inlineLimit)
	inlineLimit = 1000
	staged := score()
	for i := range inline {
		if inline[i] != staged[i] {
			t.Fatalf("row %d: staged model %v, in-memory %v", i, staged[i], inline[i])
		}
	}
}

// TestSparseHeadMatchesDense: the head that projects only completion positions is found
// on every bundled export and gives the dense head's log-probs; a model whose logits are
// not a plain projection (here scaled after the matmul) falls back to the dense head.
func TestSparseHeadMatchesDense(t *testing.T) {
	o := loadOracle(t)
	for _, file := range []string{"gpt2_opset14.onnx", "gpt2_opset17.onnx", "gpt2_tied_opset17.onnx", "llama_opset14.onnx", "llama_opset17.onnx"} {
		m, err := onnx.Load("../testdata/models/" + file)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := findLMHead(m.Graph()); !ok {
			t.Errorf("%s: final projection not recognised", file)
		}
	}
	m, err := onnx.Load("../testdata/models/llama_opset17.onnx")
	if err != nil {
		t.Fatal(err)
	}
	// Scale the logits by 1 after the projection: same values, no recognisable head.
	g := m.Graph()
	for _, n := range g.GetNode() {
		for i, out := range n.Output {
			if out == logitsOutput {
				n.Output[i] = "raw_logits"
			}
		}
	}
	b := onnx.NewBuilder(g, m.Opset(""), "test")
	addIdentity(g, b.Mul("raw_logits", b.ConstFloat(1)), logitsOutput)
	if _, ok := findLMHead(g); ok {
		t.Fatal("a scaled projection was taken for a plain one")
	}
	var rows []Sequence
	for _, bt := range o.Batches {
		if bt.Model == "llama" {
			for i := range bt.InputIDs {
				rows = append(rows, Sequence{IDs: bt.InputIDs[i][:bt.PromptLen[i]+bt.CompletionLen[i]], CompletionStart: bt.PromptLen[i]})
			}
			break
		}
	}
	score := func(m *onnx.Model) []float64 {
		lm, err := NewLogProbModel("llama", m, ModelOptions{Threads: 1, PadID: o.PadID})
		if err != nil {
			t.Fatal(err)
		}
		defer lm.Close()
		lp, err := lm.SequenceLogps(rows)
		if err != nil {
			t.Fatal(err)
		}
		return lp
	}
	dense := score(m)
	sparse, err := onnx.Load("../testdata/models/llama_opset17.onnx")
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range score(sparse) {
		if math.Abs(v-dense[i]) > 1e-4 {
			t.Fatalf("row %d: sparse head %.6f, dense head %.6f", i, v, dense[i])
		}
	}
}

// TestUnsupportedInputIsNamed: a model input ortalign cannot feed is an error naming it,
// for scoring and for training.
func TestUnsupportedInputIsNamed(t *testing.T) {
	m, err := onnx.Load("../testdata/models/gpt2_opset17.onnx")
	if err != nil {
		t.Fatal(err)
	}
	onnx.AddInput(m.Graph(), "token_type_ids", onnx.Int64, []onnx.Dim{onnx.DimParam("batch"), onnx.DimParam("sequence")})
	if _, err := NewLogProbModel("m.onnx", m, ModelOptions{}); err == nil || !strings.Contains(err.Error(), "token_type_ids") {
		t.Fatalf("scoring: want an error naming token_type_ids, got %v", err)
	}
	if _, err := BuildTrainingGraph(m, GraphConfig{Loss: LossConfig{Type: LossSigmoid, Beta: 0.1}}, nil); err == nil || !strings.Contains(err.Error(), "token_type_ids") {
		t.Fatalf("training: want an error naming token_type_ids, got %v", err)
	}
}
