// Package atomicfile writes files so that readers, and the file system after a
// crash, see either the old content of the target or the complete new content,
// never a partial file.
//
// Content goes to a temporary file named ".<base>.tmp-*" in the target's
// directory (the same file system, so the final rename is atomic). Commit
// flushes and fsyncs it, sets its mode, renames it over the target and fsyncs
// the directory so the rename itself survives a crash. On any error, and on
// Abort, the temporary file is removed and the target is left as it was.
//
// Mode rule, the same for every writer: a file that replaces an existing
// target gets that target's permission bits (so replacing a file never widens
// or narrows who can read it); a new file gets 0o644. The temporary file is
// created 0o600 by os.CreateTemp, so the mode must be set explicitly;
// 0o644 matches what tools like `cp` and os.WriteFile produce under the usual
// umask 022.
package atomicfile

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// DefaultMode is the permission of a newly created target (one that did not
// exist at Commit).
const DefaultMode os.FileMode = 0o644

// bufferSize is large because the main users write model weights and
// checkpoints of hundreds of MiB; small writes then cost no system calls.
const bufferSize = 1 << 20

// File is a target file being written. Its Write method is buffered, so
// callers need no bufio.Writer of their own. Nothing is visible at the target
// path until Commit; a File that is neither committed nor aborted leaves a
// temporary file behind, so always defer Abort.
type File struct {
	path string        // the target
	tmp  *os.File      // the temporary file, nil once committed or aborted
	w    *bufio.Writer // buffers writes to tmp
}

// Create starts writing path. The temporary file is created right away, so
// an unwritable directory is reported before any work is done.
func Create(path string) (*File, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return nil, wrap("create", path, err)
	}
	return &File{path: path, tmp: tmp, w: bufio.NewWriterSize(tmp, bufferSize)}, nil
}

// Write appends p to the file (buffered). Errors are wrapped with the target
// path; a write error is also returned again by Sync and Commit.
func (f *File) Write(p []byte) (int, error) {
	if f.tmp == nil {
		return 0, wrap("write", f.path, os.ErrClosed)
	}
	n, err := f.w.Write(p)
	if err != nil {
		return n, wrap("write", f.path, err)
	}
	return n, nil
}

// Sync flushes the buffer and fsyncs the temporary file without renaming it.
// Callers that replace several files together (a model and its external
// data) sync all of them first, so that a full disk is detected before any
// target is replaced. Commit syncs too; calling Sync is optional.
func (f *File) Sync() error {
	if f.tmp == nil {
		return wrap("sync", f.path, os.ErrClosed)
	}
	if err := f.w.Flush(); err != nil {
		return wrap("write", f.path, err)
	}
	if err := f.tmp.Sync(); err != nil {
		return wrap("sync", f.path, err)
	}
	return nil
}

// Commit flushes and fsyncs the content, sets the mode (that of an existing
// target, else DefaultMode), renames the temporary file over the target and
// fsyncs the directory. On error the temporary file is removed and the
// target is untouched. After Commit, further Writes fail and Abort does
// nothing.
func (f *File) Commit() error {
	if f.tmp == nil {
		return wrap("commit", f.path, os.ErrClosed)
	}
	if err := f.Sync(); err != nil {
		f.Abort()
		return err
	}
	mode := DefaultMode
	if st, err := os.Stat(f.path); err == nil && st.Mode().IsRegular() {
		mode = st.Mode().Perm()
	}
	if err := f.tmp.Chmod(mode); err != nil {
		f.Abort()
		return wrap("chmod", f.path, err)
	}
	tmp := f.tmp
	f.tmp = nil
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return wrap("close", f.path, err)
	}
	if err := os.Rename(tmp.Name(), f.path); err != nil {
		os.Remove(tmp.Name())
		return wrap("rename", f.path, err)
	}
	syncDir(filepath.Dir(f.path))
	return nil
}

// Abort discards what was written and removes the temporary file. It is
// idempotent and does nothing after Commit, so `defer f.Abort()` right after
// Create covers every early return.
func (f *File) Abort() {
	if f.tmp == nil {
		return
	}
	f.tmp.Close()
	os.Remove(f.tmp.Name())
	f.tmp = nil
}

// WriteFile atomically replaces path with what write writes to w (a buffered
// writer). If write returns an error, nothing is replaced and the error is
// returned wrapped with path.
func WriteFile(path string, write func(w io.Writer) error) error {
	f, err := Create(path)
	if err != nil {
		return err
	}
	defer f.Abort()
	if err := write(f); err != nil {
		// Errors from f.Write already name the path; don't repeat it.
		var pe *os.PathError
		if errors.As(err, &pe) && pe.Path == path {
			return err
		}
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Commit()
}

// syncDir makes the rename durable. It is best effort: the new content is
// already in place, and some file systems (and all of Windows) refuse to
// sync a directory, which must not turn a successful replacement into an
// error.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// wrap reports err as an *os.PathError on the target path. The errors of
// os calls on the temporary file name that file (".x.tmp-123"), which means
// nothing to a user, so only their cause is kept.
func wrap(op, path string, err error) error {
	var pe *os.PathError
	var le *os.LinkError
	switch {
	case errors.As(err, &pe):
		err = pe.Err
	case errors.As(err, &le):
		err = le.Err
	}
	return &os.PathError{Op: op, Path: path, Err: err}
}
