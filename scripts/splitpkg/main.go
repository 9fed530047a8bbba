// splitpkg moves the files of one Go package into sub-packages, exporting and
// qualifying every name that crosses a new boundary.
//
//	splitpkg -module-dir DIR -pkg ortalign/pipeline -map mapping.txt [-dry]
//
// mapping.txt: "file.go sub" per line (sub "." keeps the file). A _test.go file goes
// where the file named in its "// splitpkg: FILE" override or its base name goes.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"go/ast"
	"go/token"
	"go/types"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"unicode"

	"golang.org/x/tools/go/packages"
)

type edit struct {
	off, end int
	text     string
}

func main() {
	dir := flag.String("module-dir", ".", "module root")
	pkgPath := flag.String("pkg", "", "package to split")
	mapFile := flag.String("map", "", "mapping")
	dry := flag.Bool("dry", false, "report only")
	flag.Parse()
	mapping := map[string]string{}
	f, err := os.Open(*mapFile)
	check(err)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.Fields(line)
		mapping[parts[0]] = parts[1]
	}
	cfg := &packages.Config{Dir: *dir, Mode: packages.LoadAllSyntax, Tests: true}
	pkgs, err := packages.Load(cfg, "./...")
	check(err)
	var errs int
	packages.Visit(pkgs, nil, func(p *packages.Package) {
		for _, e := range p.Errors {
			fmt.Fprintln(os.Stderr, "load:", e)
			errs++
		}
	})
	if errs > 0 {
		os.Exit(1)
	}
	// target of a file in the split package
	target := func(file string) string {
		base := filepath.Base(file)
		if t, ok := mapping[base]; ok {
			return t
		}
		if strings.HasSuffix(base, "_test.go") {
			stem := strings.TrimSuffix(base, "_test.go") + ".go"
			if t, ok := mapping[stem]; ok {
				return t
			}
		}
		fmt.Fprintln(os.Stderr, "unmapped file:", base)
		os.Exit(1)
		return ""
	}
	pkgDir := ""
	// objects of the split package, declared where
	declFile := map[types.Object]string{}
	var splitPkgs []*packages.Package
	for _, p := range pkgs {
		if p.PkgPath == *pkgPath || p.PkgPath == *pkgPath+"_test" {
			splitPkgs = append(splitPkgs, p)
		}
	}
	var tpkg *types.Package
	for _, p := range splitPkgs {
		if p.PkgPath == *pkgPath && tpkg == nil {
			tpkg = p.Types
		}
		for i, file := range p.Syntax {
			name := p.CompiledGoFiles[i]
			pkgDir = filepath.Dir(name)
			for id, obj := range p.TypesInfo.Defs {
				if obj == nil || id.Pos() < file.Pos() || id.Pos() > file.End() {
					continue
				}
				declFile[obj] = name
			}
		}
	}
	// Objects are per type-checked package (the test variant re-checks the package):
	// key by position instead.
	key := func(fset *token.FileSet, obj types.Object) string {
		return fset.Position(obj.Pos()).String()
	}
	_ = tpkg
	needExport := map[string]bool{} // decl pos key
	objName := map[string]string{}
	type use struct {
		file   string
		id     *ast.Ident
		obj    types.Object
		qual   string // target package to qualify with ("" none)
		fset   *token.FileSet
		inSel  bool
	}
	var uses []use
	edges := map[string][]string{}
	inSplit := func(obj types.Object) bool {
		return obj != nil && obj.Pkg() != nil && (obj.Pkg().Path() == *pkgPath)
	}
	seenFile := map[string]bool{}
	for _, p := range pkgs {
		for i, file := range p.Syntax {
			name := p.CompiledGoFiles[i]
			k := p.ID + "|" + name
			if seenFile[k] {
				continue
			}
			seenFile[k] = true
			isSplit := p.PkgPath == *pkgPath
			fileTarget := ""
			if isSplit {
				fileTarget = target(name)
			}
			// selector parents
			selX := map[*ast.Ident]bool{}
			ast.Inspect(file, func(n ast.Node) bool {
				if se, ok := n.(*ast.SelectorExpr); ok {
					selX[se.Sel] = true
				}
				return true
			})
			for id, obj := range p.TypesInfo.Uses {
				if id.Pos() < file.Pos() || id.Pos() > file.End() || !inSplit(obj) {
					continue
				}
				if _, isPkg := obj.(*types.PkgName); isPkg {
					continue
				}
				dk := key(p.Fset, obj)
				objName[dk] = obj.Name()
				df := p.Fset.Position(obj.Pos()).Filename
				objTarget := target(df)
				pkgLevel := obj.Parent() != nil && obj.Parent() == obj.Pkg().Scope()
				u := use{file: name, id: id, obj: obj, fset: p.Fset, inSel: selX[id]}
				if isSplit {
					if objTarget != fileTarget && !strings.HasSuffix(name, "_test.go") {
						edges[fileTarget+" -> "+objTarget] = append(edges[fileTarget+" -> "+objTarget], obj.Name())
					}
					if objTarget != fileTarget {
						if !obj.Exported() {
							needExport[dk] = true
						}
						if pkgLevel {
							u.qual = objTarget
						}
					}
				} else {
					// importer: pipeline.X -> sub.X
					if pkgLevel && objTarget != "." {
						u.qual = objTarget
					}
				}
				uses = append(uses, u)
			}
		}
	}
	// Methods with the same name are exported together (interfaces and their
	// implementations).
	methodNames := map[string]bool{}
	for dk := range needExport {
		methodNames[objName[dk]] = true
	}
	_ = methodNames
	// Report
	var names []string
	for dk := range needExport {
		names = append(names, objName[dk]+" @ "+dk)
	}
	sort.Strings(names)
	fmt.Fprintf(os.Stderr, "%d names to export\n", len(names))
	if *dry {
		var ek []string
		for k, v := range edges {
			sort.Strings(v)
			v = compact(v)
			ek = append(ek, fmt.Sprintf("%s: %s", k, strings.Join(v, " ")))
		}
		sort.Strings(ek)
		for _, e := range ek {
			fmt.Println(e)
		}
		return
	}
	exportedName := func(n string) string {
		r := []rune(n)
		r[0] = unicode.ToUpper(r[0])
		return string(r)
	}
	// exported set by name for methods/fields: any object whose name is in exportByName
	// and is a method or field of the split package is renamed too.
	exportByName := map[string]bool{}
	for dk := range needExport {
		exportByName[objName[dk]] = true
	}
	edits := map[string][]edit{}
	rename := func(fset *token.FileSet, file string, id *ast.Ident, text string) {
		off := fset.Position(id.Pos()).Offset
		edits[file] = append(edits[file], edit{off, off + len(id.Name), text})
	}
	isMemberOrField := func(obj types.Object) bool {
		switch o := obj.(type) {
		case *types.Func:
			return o.Type().(*types.Signature).Recv() != nil
		case *types.Var:
			return o.IsField()
		}
		return false
	}
	shouldRename := func(fset *token.FileSet, obj types.Object) bool {
		if obj.Exported() {
			return false
		}
		if needExport[key(fset, obj)] {
			return true
		}
		return isMemberOrField(obj) && exportByName[obj.Name()]
	}
	doneEdit := map[string]bool{}
	for _, u := range uses {
		text := u.id.Name
		if shouldRename(u.fset, u.obj) {
			text = exportedName(text)
		}
		if u.qual != "" && !u.inSel {
			text = filepath.Base(u.qual) + "." + text
		} else if u.qual != "" && u.inSel {
			// pipeline.X in an importer: replace the package ident separately below
		}
		k := fmt.Sprintf("%s:%d", u.file, u.id.Pos())
		if doneEdit[k] || text == u.id.Name {
			continue
		}
		doneEdit[k] = true
		rename(u.fset, u.file, u.id, text)
	}
	// Definitions
	seenDef := map[string]bool{}
	for _, p := range pkgs {
		if p.PkgPath != *pkgPath {
			continue
		}
		for id, obj := range p.TypesInfo.Defs {
			if obj == nil || !shouldRename(p.Fset, obj) {
				continue
			}
			pos := p.Fset.Position(id.Pos())
			k := pos.String()
			if seenDef[k] {
				continue
			}
			seenDef[k] = true
			edits[pos.Filename] = append(edits[pos.Filename], edit{pos.Offset, pos.Offset + len(id.Name), exportedName(id.Name)})
		}
	}
	// Importers: pipeline.X where X moves -> sub.X (rewrite the package qualifier).
	for _, p := range pkgs {
		if p.PkgPath == *pkgPath {
			continue
		}
		for i, file := range p.Syntax {
			name := p.CompiledGoFiles[i]
			ast.Inspect(file, func(n ast.Node) bool {
				se, ok := n.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				x, ok := se.X.(*ast.Ident)
				if !ok {
					return true
				}
				pn, ok := p.TypesInfo.Uses[x].(*types.PkgName)
				if !ok || pn.Imported().Path() != *pkgPath {
					return true
				}
				obj := p.TypesInfo.Uses[se.Sel]
				if obj == nil {
					return true
				}
				t := target(p.Fset.Position(obj.Pos()).Filename)
				if t == "." {
					return true
				}
				pos := p.Fset.Position(x.Pos())
				k := fmt.Sprintf("q%s:%d", name, pos.Offset)
				if doneEdit[k] {
					return true
				}
				doneEdit[k] = true
				edits[name] = append(edits[name], edit{pos.Offset, pos.Offset + len(x.Name), filepath.Base(t)})
				return true
			})
		}
	}
	// Apply edits and move files.
	for file, es := range edits {
		applyEdits(file, es)
	}
	for _, p := range splitPkgs {
		for _, name := range p.CompiledGoFiles {
			t := target(name)
			if t == "." {
				continue
			}
			dst := filepath.Join(pkgDir, t, filepath.Base(name))
			if _, err := os.Stat(name); err != nil {
				continue
			}
			check(os.MkdirAll(filepath.Dir(dst), 0o755))
			b, err := os.ReadFile(name)
			check(err)
			s := string(b)
			old := "package " + p.Name
			i := strings.Index(s, old)
			if i < 0 {
				panic(name)
			}
			s = s[:i] + "package " + filepath.Base(t) + strings.TrimPrefix(p.Name, filepath.Base(*pkgPath)) + s[i+len(old):]
			check(os.WriteFile(dst, []byte(s), 0o644))
			check(os.Remove(name))
			fmt.Println("moved", name, "->", dst)
		}
	}
}

func applyEdits(file string, es []edit) {
	b, err := os.ReadFile(file)
	check(err)
	sort.Slice(es, func(i, j int) bool { return es[i].off > es[j].off })
	last := -1
	for _, e := range es {
		if last >= 0 && e.end > last {
			fmt.Fprintf(os.Stderr, "overlapping edit in %s at %d\n", file, e.off)
			continue
		}
		b = append(b[:e.off], append([]byte(e.text), b[e.end:]...)...)
		last = e.off
	}
	check(os.WriteFile(file, b, 0o644))
}

func check(err error) {
	if err != nil {
		panic(err)
	}
}

func compact(v []string) []string {
	var out []string
	for i, x := range v {
		if i == 0 || v[i-1] != x {
			out = append(out, x)
		}
	}
	return out
}
