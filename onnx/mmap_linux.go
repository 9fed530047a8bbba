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

// madvPageout is MADV_PAGEOUT (Linux 5.4), missing from package syscall.
const madvPageout = 21

// pageOut asks the kernel to reclaim b's pages: clean file pages are dropped (read again
// from the file when touched); pages this process wrote are anonymous and, without swap,
// stay. Older kernels reject the advice, which is harmless.
func pageOut(b []byte) { _ = syscall.Madvise(b, madvPageout) }
