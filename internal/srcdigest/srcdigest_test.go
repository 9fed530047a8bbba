package srcdigest

import (
	"maps"
	"testing"
	"testing/fstest"
)

func digest(t *testing.T, fsys fstest.MapFS) string {
	t.Helper()
	d, err := Of(fsys)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestOf: the digest follows the sources' names and bytes, and nothing else.
func TestOf(t *testing.T) {
	base := fstest.MapFS{
		"a.go":      {Data: []byte("package p\n\nfunc A() {}\n")},
		"b.go":      {Data: []byte("package p\n\nfunc B() {}\n")},
		"a_test.go": {Data: []byte("package p\n")},
		"README.md": {Data: []byte("notes\n")},
		"sub/c.go":  {Data: []byte("package sub\n")},
	}
	want := digest(t, base)
	if len(want) != 64 {
		t.Fatalf("digest %q is not a hex SHA-256", want)
	}
	if again := digest(t, maps.Clone(base)); again != want {
		t.Fatalf("the same files gave %s, then %s", want, again)
	}
	// with is base with each (name, data) pair written, or removed when data is "".
	with := func(pairs ...string) fstest.MapFS {
		m := maps.Clone(base)
		for i := 0; i+1 < len(pairs); i += 2 {
			if name, data := pairs[i], pairs[i+1]; data == "" {
				delete(m, name)
			} else {
				m[name] = &fstest.MapFile{Data: []byte(data)}
			}
		}
		return m
	}
	for _, tc := range []struct {
		name    string
		fsys    fstest.MapFS
		changes bool
	}{
		{"a source edited", with("b.go", "package p\n\nfunc B() { _ = 1 }\n"), true},
		{"a source added", with("c.go", "package p\n"), true},
		{"a source removed", with("b.go", ""), true},
		{"a source renamed", with("a.go", "", "a2.go", "package p\n\nfunc A() {}\n"), true},
		{"bytes moved between files", with("a.go", "package p\n\nfunc A() {}\npackage p\n", "b.go", "\nfunc B() {}\n"), true},
		{"a test edited", with("a_test.go", "package p\n\nfunc TestA() {}\n"), false},
		{"another file edited", with("README.md", "other notes\n"), false},
		{"a subdirectory edited", with("sub/c.go", "package sub\n\nvar X int\n"), false},
	} {
		if got := digest(t, tc.fsys); (got != want) != tc.changes {
			t.Errorf("%s: digest changed %v, want %v", tc.name, got != want, tc.changes)
		}
	}
}

// TestOfNoSources: a file system without Go sources (a wrong embed pattern) is an
// error, not the digest of nothing.
func TestOfNoSources(t *testing.T) {
	if d, err := Of(fstest.MapFS{"a_test.go": {Data: []byte("package p\n")}}); err == nil {
		t.Fatalf("no sources: digest %s, want an error", d)
	}
}
