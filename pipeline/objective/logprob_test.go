package objective

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx"
	"ortalign/onnx/ort"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
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
	b, err := os.ReadFile("../../testdata/expected/logps.json")
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
				lpm, err := lm.LoadLogProbModel(filepath.Join("../../testdata", file), lm.ModelOptions{Threads: 1, PadID: o.PadID})
				if err != nil {
					t.Fatal(err)
				}
				defer lpm.Close()
				if lpm.VocabSize() != 512 {
					t.Fatalf("vocab = %d, want 512", lpm.VocabSize())
				}
				checked, worst := 0, 0.0
				for _, b := range o.Batches {
					if b.Model != model {
						continue
					}
					rows := make([]lm.Sequence, len(b.InputIDs))
					for i := range rows {
						n := b.PromptLen[i] + b.CompletionLen[i]
						rows[i] = lm.Sequence{IDs: b.InputIDs[i][:n], CompletionStart: b.PromptLen[i]}
						// The oracle's mask must agree with our reading of it.
						for t2, m := range b.CompletionMask[i] {
							if want := t2 >= b.PromptLen[i] && t2 < n; (m == 1) != want {
								t.Fatalf("%s row %d: oracle mask disagrees at %d", b.Name, i, t2)
							}
						}
					}
					got, err := lpm.SequenceLogps(rows)
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
	m, err := onnx.Load("../../testdata/models/gpt2_opset17.onnx")
	if err != nil {
		t.Fatal(err)
	}
	m.Graph().GetOutput()[0].Name = nil
	m.Graph().GetOutput()[0].Name = new(string)
	*m.Graph().GetOutput()[0].Name = "hidden"
	_, err = lm.NewLogProbModel("renamed.onnx", m, lm.ModelOptions{})
	if err == nil || !strings.Contains(err.Error(), `no output "logits"`) || !strings.Contains(err.Error(), "renamed.onnx") {
		t.Fatalf("want error naming the file and the missing logits, got %v", err)
	}
}

func TestIDsOutsideVocabularyAreAnError(t *testing.T) {
	lpm, err := lm.LoadLogProbModel("../../testdata/models/gpt2_opset17.onnx", lm.ModelOptions{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer lpm.Close()
	_, err = lpm.SequenceLogps([]lm.Sequence{{IDs: []int64{1, 2, 600}, CompletionStart: 1}})
	if err == nil || !strings.Contains(err.Error(), "600") {
		t.Fatalf("want error naming id 600, got %v", err)
	}
}

func TestLengthBatches(t *testing.T) {
	lens := []int{3, 9, 1, 7, 5}
	got := lm.LengthBatches(len(lens), 2, func(i int) int { return lens[i] })
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
	rows := make([]lm.Sequence, len(b.InputIDs))
	for i := range rows {
		rows[i] = lm.Sequence{IDs: b.InputIDs[i][:b.PromptLen[i]+b.CompletionLen[i]], CompletionStart: b.PromptLen[i]}
	}
	path := "../../testdata/models/" + b.Model + "_opset17.onnx"
	score := func() []float64 {
		lpm, err := lm.LoadLogProbModel(path, lm.ModelOptions{Threads: 1, PadID: o.PadID})
		if err != nil {
			t.Fatal(err)
		}
		defer lpm.Close()
		lp, err := lpm.SequenceLogps(rows)
		if err != nil {
			t.Fatal(err)
		}
		return lp
	}
	inline := score()
	defer func(old int) { lm.InlineLimit = old }(lm.InlineLimit)
	lm.InlineLimit = 1000
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
		m, err := onnx.Load("../../testdata/models/" + file)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := lm.FindLMHead(m.Graph()); !ok {
			t.Errorf("%s: final projection not recognised", file)
		}
	}
	m, err := onnx.Load("../../testdata/models/llama_opset17.onnx")
	if err != nil {
		t.Fatal(err)
	}
	// Scale the logits by 1 after the projection: same values, no recognisable head.
	g := m.Graph()
	for _, n := range g.GetNode() {
		for i, out := range n.Output {
			if out == lm.LogitsOutput {
				n.Output[i] = "raw_logits"
			}
		}
	}
	b := onnx.NewBuilder(g, m.Opset(""), "test")
	lm.AddIdentity(g, b.Mul("raw_logits", b.ConstFloat(1)), lm.LogitsOutput)
	if _, ok := lm.FindLMHead(g); ok {
		t.Fatal("a scaled projection was taken for a plain one")
	}
	var rows []lm.Sequence
	for _, bt := range o.Batches {
		if bt.Model == "llama" {
			for i := range bt.InputIDs {
				rows = append(rows, lm.Sequence{IDs: bt.InputIDs[i][:bt.PromptLen[i]+bt.CompletionLen[i]], CompletionStart: bt.PromptLen[i]})
			}
			break
		}
	}
	score := func(m *onnx.Model) []float64 {
		lpm, err := lm.NewLogProbModel("llama", m, lm.ModelOptions{Threads: 1, PadID: o.PadID})
		if err != nil {
			t.Fatal(err)
		}
		defer lpm.Close()
		lp, err := lpm.SequenceLogps(rows)
		if err != nil {
			t.Fatal(err)
		}
		return lp
	}
	dense := score(m)
	sparse, err := onnx.Load("../../testdata/models/llama_opset17.onnx")
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
	m, err := onnx.Load("../../testdata/models/gpt2_opset17.onnx")
	if err != nil {
		t.Fatal(err)
	}
	onnx.AddInput(m.Graph(), "token_type_ids", onnx.Int64, []onnx.Dim{onnx.DimParam("batch"), onnx.DimParam("sequence")})
	if _, err := lm.NewLogProbModel("m.onnx", m, lm.ModelOptions{}); err == nil || !strings.Contains(err.Error(), "token_type_ids") {
		t.Fatalf("scoring: want an error naming token_type_ids, got %v", err)
	}
	if _, err := engine.BuildTrainingGraph[encode.EncodedPair](m, DPO{Loss: LossConfig{Type: LossSigmoid, Beta: 0.1}}, engine.GraphConfig{}); err == nil || !strings.Contains(err.Error(), "token_type_ids") {
		t.Fatalf("training: want an error naming token_type_ids, got %v", err)
	}
}

// headRun appends the log-prob head with options o to a copy of m and runs it, and the
// unmodified model for its logits, on rows.
func headRun(t *testing.T, m *onnx.Model, o lm.HeadOptions, rows []lm.Sequence, pad int64) (lm.HeadOutputs, map[string]*ort.Tensor, *ort.Tensor) {
	t.Helper()
	b := lm.BatchInputs(rows, pad)
	feeds := map[string]*ort.Tensor{lm.InputIDs: b.IDs}
	if onnx.Input(m.Graph(), lm.AttentionMask) != nil {
		feeds[lm.AttentionMask] = b.AttentionMask
	}
	if onnx.Input(m.Graph(), lm.PositionIDs) != nil {
		feeds[lm.PositionIDs] = b.PositionIDs
	}
	plain, err := lm.NewModelSession(m, []string{lm.LogitsOutput}, ort.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Destroy()
	logits, err := plain.Run(feeds, nil)
	if err != nil {
		t.Fatal(err)
	}
	hm := m.Clone()
	head, err := lm.AppendLogProbHeadWith(hm, o)
	if err != nil {
		t.Fatal(err)
	}
	outs := []string{head.SequenceLogps}
	for _, n := range []string{head.TokenLogps, head.TokenCorrect, head.TokenWPOLogps, head.CompletionLogits} {
		if n != "" {
			outs = append(outs, n)
		}
	}
	s, err := lm.NewModelSession(hm, outs, ort.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy()
	feeds[lm.CompletionMaskInput] = b.CompletionMask
	out, err := s.Run(feeds, nil)
	if err != nil {
		t.Fatal(err)
	}
	return head, out, logits[lm.LogitsOutput]
}

// TestHeadPerTokenOutputs: on the tiny models (opsets 14 and 17), sparse and dense, with
// a row whose prompt is empty and right padding, token_logps is log softmax(logits[t-1])
// [ids[t]] at completion positions t >= 1 and 0 elsewhere (computed in Go from the
// model's logits) and sums to sequence_logps; token_correct is the number of completion
// positions whose Go argmax is the target; token_wpo_logps is token_logps − log Σ p²;
// completion_logits is the sum over completion positions of the vocabulary mean of
// logits[t-1].
func TestHeadPerTokenOutputs(t *testing.T) {
	var o dpoOracle
	readOracle(t, "../../testdata/expected/dpo_grads_llama.json.gz", &o)
	pairs, _, _ := oracleBatch(&o)
	rows := encode.PairRows(pairs)
	rows = append(rows, lm.Sequence{IDs: []int64{5, 9, 13, 2}, CompletionStart: 0}, lm.Sequence{IDs: []int64{7, 7}, CompletionStart: 1})
	all := lm.HeadOptions{TokenLogps: true, TokenCorrect: true, TokenWPOLogps: true, CompletionLogits: true}
	for _, file := range []string{"gpt2_opset14", "gpt2_tied_opset17", "llama_opset14", "llama_opset17", "llama_opset17+bias"} {
		m, err := onnx.Load("../../testdata/models/" + strings.TrimSuffix(file, "+bias") + ".onnx")
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(file, "+bias") {
			addHeadBias(t, m)
		}
		// The random tiny models rarely predict a token: a greedy continuation (with one
		// token changed) gives rows with correct predictions.
		g := greedy(t, m, []int64{3, 1, 4, 1, 5}, 6)
		g[7] = (g[7] + 1) % 512
		rows := append(rows, lm.Sequence{IDs: g, CompletionStart: 5})
		for _, dense := range []bool{false, true} {
			o := all
			o.Dense = dense
			t.Run(fmt.Sprintf("%s/dense=%v", file, dense), func(t *testing.T) {
				head, out, logits := headRun(t, m, o, rows, 511)
				if head.Sparse == dense {
					t.Fatalf("sparse head %v, asked dense %v", head.Sparse, dense)
				}
				width, vocab := int(logits.Shape[1]), int(logits.Shape[2])
				tok, wpo := out[lm.TokenLogpsOutput].F32, out[lm.TokenWPOLogpsOutput].F32
				if len(tok) != len(rows)*width || len(wpo) != len(rows)*width {
					t.Fatalf("per-token outputs have %d and %d values, want %d", len(tok), len(wpo), len(rows)*width)
				}
				worst, correctTotal := 0.0, 0
				for i, r := range rows {
					var sum, logitsSum float64
					correct := 0
					for p := 0; p < width; p++ {
						got, gotW := float64(tok[i*width+p]), float64(wpo[i*width+p])
						if p == 0 || p < r.CompletionStart || p >= len(r.IDs) {
							if got != 0 || gotW != 0 {
								t.Fatalf("row %d position %d (not a predicted completion token): token_logps %g, token_wpo_logps %g, want 0", i, p, got, gotW)
							}
							continue
						}
						z := logits.F32[(i*width+p-1)*vocab : (i*width+p)*vocab]
						mx, arg := math.Inf(-1), 0
						for v, x := range z {
							if float64(x) > mx {
								mx, arg = float64(x), v
							}
						}
						var se, se2, zs float64
						for _, x := range z {
							e := math.Exp(float64(x) - mx)
							se += e
							se2 += e * e
							zs += float64(x)
						}
						logitsSum += zs / float64(vocab)
						lse := mx + math.Log(se)
						want := float64(z[r.IDs[p]]) - lse
						wantW := want - (math.Log(se2) + 2*mx - 2*lse)
						worst = max(worst, math.Abs(got-want), math.Abs(gotW-wantW))
						if math.Abs(got-want) > 1e-4 || math.Abs(gotW-wantW) > 1e-4 {
							t.Fatalf("row %d position %d: token_logps %.6f (Go %.6f), token_wpo_logps %.6f (Go %.6f)", i, p, got, want, gotW, wantW)
						}
						sum += got
						if int64(arg) == r.IDs[p] {
							correct++
						}
					}
					if seq := float64(out[lm.SequenceLogpsOutput].F32[i]); math.Abs(sum-seq) > 1e-4*math.Max(1, math.Abs(seq)) {
						t.Errorf("row %d: token_logps sum %.6f, sequence_logps %.6f", i, sum, seq)
					}
					if got := float64(out[lm.CompletionLogitsOutput].F32[i]); !(math.Abs(got-logitsSum) <= 1e-5*math.Max(1, math.Abs(logitsSum))) {
						t.Errorf("row %d: completion_logits %.7f, Go %.7f", i, got, logitsSum)
					}
					if got := out[lm.TokenCorrectOutput].F32[i]; got != float32(correct) {
						t.Errorf("row %d: token_correct %g, Go argmax count %d", i, got, correct)
					}
					correctTotal += correct
				}
				if correctTotal == 0 {
					t.Fatal("no correct prediction in the batch: token_correct is not exercised")
				}
				t.Logf("worst per-token |diff| vs Go %.1e; %d correct predictions", worst, correctTotal)
			})
		}
	}
}

// addHeadBias gives m's final projection a bias (logits = hidden · W + b, as some
// exporters write it), so that the sparse head's bias path is exercised.
func addHeadBias(t *testing.T, m *onnx.Model) {
	t.Helper()
	g := m.Graph()
	head, ok := lm.FindLMHead(g)
	if !ok || head.Bias != "" {
		t.Fatal("want a plain projection to add a bias to")
	}
	vocab := onnx.Output(g, lm.LogitsOutput).GetType().GetTensorType().GetShape().GetDim()[2].GetDimValue()
	bias := make([]float32, vocab)
	for i := range bias {
		bias[i] = float32(i%7) * 0.25
	}
	if err := onnx.AddInitializer(g, onnx.FloatTensor("test_head_bias", []int64{vocab}, bias)); err != nil {
		t.Fatal(err)
	}
	for _, n := range g.GetNode() {
		for i, out := range n.Output {
			if out == lm.LogitsOutput {
				n.Output[i] = "logits_without_bias"
			}
		}
	}
	b := onnx.NewBuilder(g, m.Opset(""), "test")
	sum := b.Add("logits_without_bias", "test_head_bias")
	for _, n := range g.GetNode() {
		if len(n.Output) == 1 && n.Output[0] == sum {
			n.Output[0] = lm.LogitsOutput // the Add itself writes the logits
		}
	}
	if head, ok := lm.FindLMHead(g); !ok || head.Bias != "test_head_bias" {
		t.Fatalf("head %+v, %v: the bias is not recognised", head, ok)
	}
}

// greedy extends prompt by n tokens, each the argmax of the model's next-token logits.
func greedy(t *testing.T, m *onnx.Model, prompt []int64, n int) []int64 {
	t.Helper()
	ids := append([]int64(nil), prompt...)
	for range n {
		_, _, logits := headRun(t, m, lm.HeadOptions{}, []lm.Sequence{{IDs: ids, CompletionStart: 1}}, 0)
		vocab := int(logits.Shape[2])
		z := logits.F32[(len(ids)-1)*vocab:]
		arg := 0
		for v, x := range z {
			if x > z[arg] {
				arg = v
			}
		}
		ids = append(ids, int64(arg))
	}
	return ids
}

// TestHeadDefaultsUnchanged: AppendLogProbHeadWith with no options builds
// AppendLogProbHead's graph, and asking for outputs leaves sequence_logps' value as is.
func TestHeadDefaultsUnchanged(t *testing.T) {
	m, err := onnx.Load("../../testdata/models/llama_opset17.onnx")
	if err != nil {
		t.Fatal(err)
	}
	a, b := m.Clone(), m.Clone()
	if _, err := lm.AppendLogProbHead(a); err != nil {
		t.Fatal(err)
	}
	if _, err := lm.AppendLogProbHeadWith(b, lm.HeadOptions{}); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(a.Proto(), b.Proto()) {
		t.Fatal("AppendLogProbHeadWith(HeadOptions{}) differs from AppendLogProbHead")
	}
}
