//go:build linux

package hugepages

import (
	"syscall"
	"unsafe"
)

const hugePage = 2 << 20

// Advise asks for huge pages for the whole 2 MiB pages inside b; call it before b is
// first written. Failures are ignored: the advice is only about speed.
func Advise(b []float32) {
	size := uintptr(len(b)) * 4
	if size < minBytes {
		return
	}
	start := uintptr(unsafe.Pointer(&b[0]))
	skip := (hugePage - start%hugePage) % hugePage
	n := (size - skip) / hugePage * hugePage
	if n == 0 {
		return
	}
	region := unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(&b[0]), skip)), n)
	_ = syscall.Madvise(region, syscall.MADV_HUGEPAGE)
}
