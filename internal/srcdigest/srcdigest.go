// Package srcdigest digests a package's own Go sources, embedded in the binary
// with `//go:embed *.go`, so that what the package's code generates (a training
// graph) can be cached under a key that changes whenever that code changes, with
// no version constant to bump by hand.
package srcdigest

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"strings"
)

// Of returns the SHA-256, in hex, of the Go sources at the root of fsys that are
// not tests: each file's name and bytes, in name order, each length-prefixed so
// that no two sets of files give the same stream. Test files (_test.go), other
// files and subdirectories do not count. fsys holding no such file is an error.
func Of(fsys fs.FS) (string, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return "", fmt.Errorf("source digest: %w", err)
	}
	h := sha256.New()
	put := func(b []byte) {
		var n [binary.MaxVarintLen64]byte
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(b)))])
		h.Write(b)
	}
	files := 0
	for _, e := range entries { // fs.ReadDir sorts by name
		name := e.Name()
		if !e.Type().IsRegular() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return "", fmt.Errorf("source digest: %w", err)
		}
		put([]byte(name))
		put(b)
		files++
	}
	if files == 0 {
		return "", errors.New("source digest: no Go source files")
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Combine digests several digests (of packages whose code together generates something)
// into one, each length-prefixed.
func Combine(digests ...string) string {
	h := sha256.New()
	for _, d := range digests {
		var n [binary.MaxVarintLen64]byte
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(d)))])
		h.Write([]byte(d))
	}
	return hex.EncodeToString(h.Sum(nil))
}
