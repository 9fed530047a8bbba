package data

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"
)

// readFile opens and reads a whole dataset, returning the first error.
func readFile(path string, o Options) error {
	d, err := Open(path, o)
	if err != nil {
		return err
	}
	defer d.Close()
	_, _, err = d.ReadAll()
	return err
}

// derive writes a damaged copy of a testdata file into a temporary directory.
func derive(t *testing.T, src, name string, damage func(b []byte) []byte) string {
	t.Helper()
	b, err := os.ReadFile("testdata/" + src)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, damage(b), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// pageOffset returns the offset of the first data page of column chunk col
// in row group rg, and the chunk's end.
func pageOffset(t *testing.T, src string, rg, col int) (int64, int64) {
	t.Helper()
	f, err := os.Open("testdata/" + src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	pf, err := parquet.OpenFile(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	md := pf.Metadata().RowGroups[rg].Columns[col].MetaData
	start, size := chunkRange(&pf.Metadata().RowGroups[rg].Columns[col])
	return md.DataPageOffset, start + size
}

func fill(b []byte, from, to int64, v byte) []byte {
	for i := from; i < to; i++ {
		b[i] = v
	}
	return b
}

// TestBadInput checks that damaged and unsuitable files give a one-line
// error naming the file (and column or row group where it applies), never a
// panic.
func TestBadInput(t *testing.T) {
	const good = "arrow_standard_uncompressed.parquet" // 3 row groups, 6 columns
	// Column 1 is "chosen"; its first data page in row group 1.
	dataOff, chunkEnd := pageOffset(t, good, 1, 1)
	zOff, zEnd := pageOffset(t, "duckdb_standard_zstd_v2enc.parquet", 1, 2) // "rejected", zstd
	sOff, sEnd := pageOffset(t, "arrow_standard_snappy_dict.parquet", 2, 0) // "prompt", snappy

	footer := func(b []byte) (int64, int64) {
		n := int64(binary.LittleEndian.Uint32(b[len(b)-8:]))
		return int64(len(b)) - 8 - n, int64(len(b)) - 8
	}
	tests := []struct {
		name    string
		path    func(t *testing.T) string
		mention []string
	}{
		{"empty file", func(t *testing.T) string {
			return derive(t, good, "empty.parquet", func([]byte) []byte { return nil })
		}, []string{"empty.parquet", "empty file"}},
		{"not parquet", func(t *testing.T) string {
			return derive(t, good, "text.parquet", func([]byte) []byte { return []byte("prompt,chosen,rejected\na,b,c\n") })
		}, []string{"text.parquet", "not a Parquet file"}},
		{"truncated", func(t *testing.T) string {
			return derive(t, good, "truncated.parquet", func(b []byte) []byte { return b[:len(b)/2] })
		}, []string{"truncated.parquet", "truncated"}},
		{"truncated to the footer", func(t *testing.T) string {
			return derive(t, good, "cut.parquet", func(b []byte) []byte { return b[:len(b)-3] })
		}, []string{"cut.parquet", "truncated"}},
		{"corrupt footer bytes", func(t *testing.T) string {
			return derive(t, good, "footer.parquet", func(b []byte) []byte {
				s, e := footer(b)
				return fill(b, s, e, 0xff)
			})
		}, []string{"footer.parquet", "corrupt footer"}},
		{"corrupt footer length", func(t *testing.T) string {
			return derive(t, good, "footerlen.parquet", func(b []byte) []byte {
				binary.LittleEndian.PutUint32(b[len(b)-8:], 1<<30)
				return b
			})
		}, []string{"footerlen.parquet", "corrupt footer"}},
		{"corrupt page header", func(t *testing.T) string {
			return derive(t, good, "pagehdr.parquet", func(b []byte) []byte { return fill(b, dataOff, dataOff+12, 0xff) })
		}, []string{"pagehdr.parquet", "row group 1", `"chosen"`, "corrupt page"}},
		{"corrupt page data (uncompressed)", func(t *testing.T) string {
			// Levels and lengths of a PLAIN BYTE_ARRAY page: the
			// 0xff bytes make huge lengths and runs.
			return derive(t, good, "pagedata.parquet", func(b []byte) []byte {
				return fill(b, dataOff+30, min(dataOff+200, chunkEnd), 0xff)
			})
		}, []string{"pagedata.parquet", "row group 1", "corrupt page"}},
		{"corrupt page data (zstd)", func(t *testing.T) string {
			return derive(t, "duckdb_standard_zstd_v2enc.parquet", "zstd.parquet", func(b []byte) []byte {
				m := (zOff + zEnd) / 2
				return fill(b, m, m+64, 0x5a)
			})
		}, []string{"zstd.parquet", "row group 1", `"rejected"`, "corrupt page"}},
		{"corrupt page data (snappy)", func(t *testing.T) string {
			return derive(t, "arrow_standard_snappy_dict.parquet", "snappy.parquet", func(b []byte) []byte {
				m := (sOff + sEnd) / 2
				return fill(b, m-8, m+8, 0xff)
			})
		}, []string{"snappy.parquet", "row group 2", `"prompt"`, "corrupt page"}},
		{"missing rejected column", func(t *testing.T) string { return "testdata/bad_no_rejected.parquet" },
			[]string{"bad_no_rejected.parquet", `missing column "rejected"`, "prompt, chosen, answer"}},
		{"wrong column type", func(t *testing.T) string { return "testdata/bad_rejected_int.parquet" },
			[]string{"bad_rejected_int.parquet", `"rejected"`, "int64", "want string"}},
		{"directory", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "dir.parquet")
			os.Mkdir(p, 0o755)
			return p
		}, []string{"dir.parquet", "directory"}},
		{"missing file", func(t *testing.T) string { return filepath.Join(t.TempDir(), "nope.parquet") },
			[]string{"nope.parquet", "no such file"}},
		{"jsonl wrong type", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "bad.jsonl")
			os.WriteFile(p, []byte(`{"prompt":"p","chosen":"c","rejected":"r"}`+"\n"+`{"prompt":"p","chosen":"c","rejected":5}`+"\n"), 0o644)
			return p
		}, []string{"bad.jsonl", "line 2", `"rejected"`, "want a string"}},
		{"jsonl not json", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "bad2.jsonl")
			os.WriteFile(p, []byte(`{"prompt":"p","chosen":"c","rejected":"r"}`+"\nPAR1 garbage\n"), 0o644)
			return p
		}, []string{"bad2.jsonl", "line 2"}},
		{"jsonl empty", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "empty.jsonl")
			os.WriteFile(p, nil, 0o644)
			return p
		}, []string{"empty.jsonl", "no records"}},
		{"jsonl missing rejected", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "norej.jsonl")
			os.WriteFile(p, []byte(`{"prompt":"p","chosen":"c","answer":"r"}`+"\n"), 0o644)
			return p
		}, []string{"norej.jsonl", `missing column "rejected"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := readFile(tt.path(t), Options{})
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("error is not one line: %q", msg)
			}
			for _, s := range tt.mention {
				if !strings.Contains(msg, s) {
					t.Errorf("error %q does not mention %q", msg, s)
				}
			}
			if strings.Contains(msg, "--") {
				t.Errorf("error %q names a command-line flag; the library must not", msg)
			}
			var mc *MissingColumnsError
			if strings.Contains(tt.name, "missing rejected") && (!errors.As(err, &mc) || len(mc.Fields) != 1 || mc.Fields[0] != "rejected") {
				t.Errorf("error %q: want a *MissingColumnsError for field rejected", msg)
			}
		})
	}
}

// TestDamageNeverPanics overwrites bytes across whole files, one spot at a
// time, and reads each damaged copy: any outcome but a panic is acceptable
// (damage inside a text value can go unnoticed), and every error names the
// file.
func TestDamageNeverPanics(t *testing.T) {
	files := []string{"arrow_standard_uncompressed.parquet", "arrow_ultrafeedback.parquet",
		"duckdb_tokenized_int32.parquet", "arrow_tokenized_int64.parquet", "duckdb_ultrafeedback.parquet", "duckdb_hh.parquet"}
	if testing.Short() {
		files = files[:2]
	}
	dir := t.TempDir()
	for _, f := range files {
		orig, err := os.ReadFile("testdata/" + f)
		if err != nil {
			t.Fatal(err)
		}
		step := max(1, len(orig)/300)
		p := filepath.Join(dir, f)
		for off := 0; off < len(orig); off += step {
			for _, v := range []byte{0x00, 0xff, 0x7f} {
				b := append([]byte(nil), orig...)
				for i := off; i < min(off+4, len(b)); i++ {
					b[i] ^= v | 0x11
				}
				if err := os.WriteFile(p, b, 0o644); err != nil {
					t.Fatal(err)
				}
				func() {
					defer func() {
						if r := recover(); r != nil {
							t.Fatalf("%s: damage at %d: panic: %v", f, off, r)
						}
					}()
					if err := readFile(p, Options{}); err != nil && !strings.Contains(err.Error(), p) {
						t.Errorf("%s: damage at %d: error does not name the file: %v", f, off, err)
					}
				}()
			}
		}
	}
}
