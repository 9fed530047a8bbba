package ort

import (
	"regexp"
	"strconv"
	"testing"
)

// TestVersion: Version loads the library when needed and reports a release of it
// that speaks onnxruntime_go's ORT API 24 (ONNX Runtime 1.24 or later).
func TestVersion(t *testing.T) {
	v, err := Version()
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`^1\.(\d+)\.\d+`).FindStringSubmatch(v)
	if m == nil {
		t.Fatalf("Version() = %q, want a 1.x.y release", v)
	}
	if minor, _ := strconv.Atoi(m[1]); minor < 24 {
		t.Fatalf("Version() = %q: older than the ORT API 24 that sessions use", v)
	}
}
