package objective

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"strings"
	"testing"
)

// TestEveryObjectiveDigestsItsSources: every type of this package with an AppendLoss
// method (an engine.Objective) also has SourceDigest, so that the training-graph cache
// key changes with the code of its loss head.
func TestEveryObjectiveDigestsItsSources(t *testing.T) {
	fset := token.NewFileSet()
	entries, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	methods := map[string]map[string]bool{} // receiver type -> methods
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Recv == nil || len(fn.Recv.List) != 1 {
				continue
			}
			recv := fn.Recv.List[0].Type
			if star, ok := recv.(*ast.StarExpr); ok {
				recv = star.X
			}
			id, ok := recv.(*ast.Ident)
			if !ok {
				continue
			}
			if methods[id.Name] == nil {
				methods[id.Name] = map[string]bool{}
			}
			methods[id.Name][fn.Name.Name] = true
		}
	}
	objectives := 0
	for typ, m := range methods {
		if !m["AppendLoss"] {
			continue
		}
		objectives++
		if !m["SourceDigest"] {
			t.Errorf("objective %s has no SourceDigest: its cached training graphs would outlive changes to its loss head", typ)
		}
	}
	if objectives < 8 {
		t.Errorf("found %d objectives, want at least 8 (DPO, SFT, Reward, RL, PPO, KTO, ORPO, CPO)", objectives)
	}
}
