// Package hugepages asks Linux to back large, long-lived buffers with 2 MiB transparent
// huge pages. A training run touches gigabytes of fresh memory (parameters, gradients,
// optimizer moments, ONNX Runtime's arena); at 4 KiB a page that is hundreds of
// thousands of page faults, which on a virtual machine cost as much as the first
// training step itself (measured: 8 s of a 13 s first step on a SmolLM2-135M shape).
// Most distributions set transparent huge pages to "madvise": memory gets them only when
// asked for, which is what this package does. Elsewhere it is a no-op.
package hugepages

import (
	"os"
	"slices"
	"strings"
	"syscall"
)

// minBytes is the smallest buffer worth advising: below a few huge pages the faults
// saved are few and rounding to whole huge pages wastes memory.
const minBytes = 8 << 20

// Floats returns a zeroed []float32 of length n whose memory, when large, is advised to
// use huge pages before anything touches it.
func Floats(n int) []float32 {
	b := make([]float32, n)
	Advise(b)
	return b
}

// TunablesEnv is the environment variable glibc reads its tunables from at start-up.
const TunablesEnv = "GLIBC_TUNABLES"

// mallocTunable makes glibc's malloc advise huge pages for the large blocks it maps,
// which is where ONNX Runtime's arena gets its memory (glibc 2.35 and later; older ones
// ignore it).
const mallocTunable = "glibc.malloc.hugetlb=1"

// reexecMarker stops a second re-execution.
const reexecMarker = "ORTALIGN_HUGEPAGES_SET"

// ReexecWithMallocHugePages re-executes the running program with glibc's malloc set to
// advise huge pages (see mallocTunable), since glibc reads tunables only when a process
// starts. It returns (doing nothing) when the tunable is already set, when optOut is
// set in the environment, or when re-execution fails; on success it does not return.
// Call it first thing in main, before any goroutine or file is opened.
func ReexecWithMallocHugePages(optOut string) {
	if os.Getenv(reexecMarker) != "" || os.Getenv(optOut) != "" {
		return
	}
	cur := os.Getenv(TunablesEnv)
	if strings.Contains(cur, "glibc.malloc.hugetlb") {
		return
	}
	exe, err := os.Executable()
	if err != nil {
		return
	}
	val := mallocTunable
	if cur != "" {
		val = cur + ":" + mallocTunable
	}
	// The environment keeps one GLIBC_TUNABLES: with two, the first is the one read.
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, TunablesEnv+"=") })
	env = append(env, TunablesEnv+"="+val, reexecMarker+"=1")
	_ = syscall.Exec(exe, os.Args, env) // returns only on failure: carry on without
}
