package atomicfile

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// assertOnly fails unless dir holds exactly the named files (so no temporary
// files were left behind).
func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Errorf("directory holds %q, want %q", got, names)
	}
}

func assertFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != content {
		t.Errorf("%s holds %q, want %q", path, b, content)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != mode {
		t.Errorf("%s has mode %v, want %v", path, st.Mode().Perm(), mode)
	}
}

func TestWriteFileSuccess(t *testing.T) {
	tests := []struct {
		name    string
		old     string      // existing content; "" means no file
		oldMode os.FileMode // mode of the existing file
		want    os.FileMode
	}{
		{name: "new file gets default mode", want: DefaultMode},
		{name: "replace keeps 0600", old: "old", oldMode: 0o600, want: 0o600},
		{name: "replace keeps 0640", old: "old content that is longer", oldMode: 0o640, want: 0o640},
		{name: "replace keeps 0755", old: "x", oldMode: 0o755, want: 0o755},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "out.bin")
			if tc.old != "" {
				if err := os.WriteFile(path, []byte(tc.old), tc.oldMode); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(path, tc.oldMode); err != nil { // umask-proof
					t.Fatal(err)
				}
			}
			err := WriteFile(path, func(w io.Writer) error {
				_, err := io.WriteString(w, "new")
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			assertFile(t, path, "new", tc.want)
			assertOnly(t, dir, "out.bin")
		})
	}
}

func TestFileCommitLarge(t *testing.T) {
	// More than the buffer, so Commit must flush what Write did not.
	dir := t.TempDir()
	path := filepath.Join(dir, "big")
	f, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Abort()
	chunk := strings.Repeat("abcdefgh", 1000)
	var want strings.Builder
	for range 300 {
		io.WriteString(f, chunk)
		want.WriteString(chunk)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("target exists before Commit: %v", err)
	}
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	f.Abort() // no-op after Commit
	assertFile(t, path, want.String(), DefaultMode)
	assertOnly(t, dir, "big")
	if _, err := f.Write([]byte("x")); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Write after Commit: %v, want os.ErrClosed", err)
	}
	if err := f.Commit(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("second Commit: %v, want os.ErrClosed", err)
	}
}

func TestFailureLeavesOldFile(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name string
		run  func(path string) error // returns the error seen by the caller, if any
	}{
		{"WriteFile error before writing", func(path string) error {
			return WriteFile(path, func(w io.Writer) error { return boom })
		}},
		{"WriteFile error after partial write", func(path string) error {
			return WriteFile(path, func(w io.Writer) error {
				io.WriteString(w, strings.Repeat("partial", 1<<18)) // beyond the buffer
				return boom
			})
		}},
		{"Abort after partial write", func(path string) error {
			f, err := Create(path)
			if err != nil {
				return err
			}
			io.WriteString(f, strings.Repeat("partial", 1<<18))
			f.Abort()
			f.Abort() // idempotent
			return nil
		}},
		{"Abort after Sync", func(path string) error {
			f, err := Create(path)
			if err != nil {
				return err
			}
			io.WriteString(f, "synced")
			if err := f.Sync(); err != nil {
				return err
			}
			f.Abort()
			return nil
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "keep.txt")
			if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
				t.Fatal(err)
			}
			err := tc.run(path)
			if strings.HasPrefix(tc.name, "WriteFile") {
				if !errors.Is(err, boom) || !strings.Contains(err.Error(), path) {
					t.Errorf("error %v: want boom, naming %s", err, path)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			assertFile(t, path, "old", 0o600)
			assertOnly(t, dir, "keep.txt")
		})
	}
}

func TestCreateErrors(t *testing.T) {
	// parentIsFile is a path whose directory is a regular file: no one, root included,
	// can create a file there.
	parentIsFile := func(t *testing.T) (string, error) {
		file := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(file, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(file, "out.txt"), syscall.ENOTDIR
	}
	// readOnly is a file in a read-only directory; for root, whom permissions do not
	// stop, it is parentIsFile's.
	readOnly := func(t *testing.T) (string, error) {
		if os.Geteuid() == 0 {
			return parentIsFile(t)
		}
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o555); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(dir, 0o755) })
		return filepath.Join(dir, "out.txt"), os.ErrPermission
	}
	missingParent := func(t *testing.T) (string, error) {
		return filepath.Join(t.TempDir(), "no", "such", "dir", "out.txt"), os.ErrNotExist
	}
	tests := []struct {
		name string
		path func(t *testing.T) (string, error) // the path and the error creating it gives
	}{
		{"read-only directory", readOnly},
		{"missing parent", missingParent},
		{"parent is a file", parentIsFile},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path, want := tc.path(t)
			err := WriteFile(path, func(w io.Writer) error {
				t.Error("write called although the file could not be created")
				return nil
			})
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, want) {
				t.Errorf("error %v: want %v", err, want)
			}
			if !strings.Contains(err.Error(), path) || strings.Contains(err.Error(), ".tmp-") {
				t.Errorf("error %q should name %s and not the temporary file", err, path)
			}
		})
	}
}

func TestCommitOverDirectoryFails(t *testing.T) {
	// The rename fails late, after the content was written: the temporary file
	// must still go.
	dir := t.TempDir()
	target := filepath.Join(dir, "sub")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(target, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err := WriteFile(target, func(w io.Writer) error {
		_, err := io.WriteString(w, "data")
		return err
	})
	if err == nil || !strings.Contains(err.Error(), target) {
		t.Fatalf("error %v: want one naming %s", err, target)
	}
	assertOnly(t, dir, "sub")
}
