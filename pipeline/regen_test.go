package pipeline

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRegenRunsEveryGenerator: testdata/regen.sh, which remakes every committed fixture,
// runs every generator in testdata/ (gen_*.py and gen_*.mjs; gen_bench*.py make
// benchmark models, not fixtures), and every script it runs exists.
func TestRegenRunsEveryGenerator(t *testing.T) {
	script, err := os.ReadFile("../testdata/regen.sh")
	if err != nil {
		t.Fatal(err)
	}
	run := map[string]bool{}
	for _, line := range strings.Split(string(script), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && (f[0] == "$PY" || f[0] == "node") {
			run[f[1]] = true
		}
	}
	for s := range run {
		if _, err := os.Stat(filepath.Join("..", s)); err != nil {
			t.Errorf("regen.sh runs %s: %v", s, err)
		}
	}
	gens, err := filepath.Glob("../testdata/gen_*")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, g := range gens {
		name := filepath.Base(g)
		if ext := filepath.Ext(name); (ext != ".py" && ext != ".mjs") || strings.HasPrefix(name, "gen_bench") {
			continue
		}
		checked++
		if !run["testdata/"+name] {
			t.Errorf("testdata/regen.sh does not run testdata/%s", name)
		}
	}
	if checked < 10 {
		t.Fatalf("found %d generators in testdata/", checked)
	}
}
