//go:build linux

package onnx

import (
	"os"
	"syscall"
)

// mapFile maps the first size bytes of f privately (copy on write): writes
// through the mapping change only this process's copy, never the file.
func mapFile(f *os.File, size int) ([]byte, error) {
	return syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE)
}

// unmapFile releases a mapping made by mapFile.
func unmapFile(b []byte) error { return syscall.Munmap(b) }
