package ort

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRunFeedsAndFetches(t *testing.T) {
	s, err := NewSessionFromFile("testdata/addsum.onnx", nil, Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy()
	if !s.HasInput("x") || s.HasInput("nope") {
		t.Fatalf("HasInput wrong: %+v", s.Inputs())
	}
	in := map[string]*Tensor{
		"x":   {Shape: []int64{2, 3}, F32: []float32{1, 2, 3, 4, 5, 6}},
		"ids": {Shape: []int64{2}, I64: []int64{7, 9}},
	}
	// y goes into a caller-owned buffer; s (0-d) and idsf are allocated.
	yBuf := &Tensor{Shape: []int64{2, 3}, F32: make([]float32, 6)}
	out, err := s.Run(in, map[string]*Tensor{"y": yBuf})
	if err != nil {
		t.Fatal(err)
	}
	wantY := []float32{2, 4, 6, 5, 7, 9}
	for i, v := range wantY {
		if yBuf.F32[i] != v {
			t.Fatalf("y[%d] = %v, want %v", i, yBuf.F32[i], v)
		}
	}
	if out["y"] != yBuf {
		t.Fatal("y was not returned in the caller's buffer")
	}
	if got := out["s"]; len(got.Shape) != 0 || got.F32[0] != 33 {
		t.Fatalf("s = %+v, want scalar 33", got)
	}
	if got := out["idsf"].F32; got[0] != 7 || got[1] != 9 {
		t.Fatalf("idsf = %v", got)
	}
}

func TestRunMissingInput(t *testing.T) {
	s, err := NewSessionFromFile("testdata/addsum.onnx", []string{"s"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy()
	_, err = s.Run(map[string]*Tensor{"x": {Shape: []int64{1, 3}, F32: []float32{1, 2, 3}}}, nil)
	if err == nil || !strings.Contains(err.Error(), `"ids"`) {
		t.Fatalf("want error naming the missing input, got %v", err)
	}
}

func TestUnknownOutput(t *testing.T) {
	_, err := NewSessionFromFile("testdata/addsum.onnx", []string{"logits"}, Options{})
	if err == nil || !strings.Contains(err.Error(), `"logits"`) {
		t.Fatalf("want error naming the output, got %v", err)
	}
}

func TestFindLibraryErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.so")
	if _, err := FindLibrary(missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("explicit missing library: %v", err)
	}
	t.Setenv(LibEnv, missing)
	if _, err := FindLibrary(""); err == nil || !strings.Contains(err.Error(), LibEnv) {
		t.Fatalf("env missing library: %v", err)
	}
	t.Setenv(LibEnv, "")
	wd, _ := os.Getwd()
	defer os.Chdir(wd)
	os.Chdir(t.TempDir())
	if _, err := FindLibrary(""); err != nil && !errors.Is(err, ErrLibraryNotFound) {
		t.Fatalf("want ErrLibraryNotFound, got %v", err)
	}
}
