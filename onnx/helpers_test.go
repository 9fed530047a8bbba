package onnx

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// expectedData is testdata/expected.json, written by testdata/gen_models.py.
type expectedData struct {
	Initializers    map[string][]float64 `json:"initializers"`
	OutShape        []int64              `json:"out_shape"`
	GraphUnknownHex string               `json:"graph_unknown_hex"`
	ModelUnknownHex string               `json:"model_unknown_hex"`
	HalfCases       []struct {
		F32Bits  uint32  `json:"f32_bits"`
		F16Bits  uint16  `json:"f16_bits"`
		BF16Bits *uint16 `json:"bf16_bits"`
	} `json:"half_cases"`
}

func loadExpected(t *testing.T) expectedData {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	var e expectedData
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatal(err)
	}
	if len(e.Initializers) == 0 || len(e.HalfCases) == 0 {
		t.Fatal("expected.json is incomplete; rerun testdata/gen_models.py")
	}
	return e
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustLoad(t *testing.T, path string) *Model {
	t.Helper()
	m, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var (
	pythonOnce sync.Once
	pythonPath string
)

// pythonWithONNX returns a Python interpreter that can import onnx, or ""
// when there is none (CI may lack it). $ORTALIGN_PYTHON is tried first.
func pythonWithONNX() string {
	pythonOnce.Do(func() {
		for _, c := range []string{os.Getenv("ORTALIGN_PYTHON"), "/usr/bin/python3", "python3"} {
			if c == "" {
				continue
			}
			if err := exec.Command(c, "-c", "import onnx, onnx.checker, numpy").Run(); err == nil {
				pythonPath = c
				return
			}
		}
	})
	return pythonPath
}

// runPython runs a script with the interpreter from pythonWithONNX and
// returns its output; the caller skips when there is no interpreter.
func runPython(t *testing.T, script string, args ...string) string {
	t.Helper()
	py := pythonWithONNX()
	cmd := exec.Command(py, append([]string{"-c", script}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python check failed: %v\n%s", err, out)
	}
	return string(out)
}

// listDir returns the names in dir.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}
