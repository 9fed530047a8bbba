package hugepages

import (
	"os"
	"strings"
	"testing"
)

func TestFloatsAreZeroedAndSized(t *testing.T) {
	for _, n := range []int{0, 1, 1000, minBytes/4 - 1, minBytes / 4, 3 * minBytes / 4} {
		b := Floats(n)
		if len(b) != n {
			t.Fatalf("Floats(%d) has length %d", n, len(b))
		}
		for i, v := range b {
			if v != 0 {
				t.Fatalf("Floats(%d)[%d] = %g, want 0", n, i, v)
			}
		}
		for i := range b {
			b[i] = float32(i)
		}
	}
	Advise(nil)
	Advise(make([]float32, 3)[1:]) // small and misaligned: nothing to do
}

// With transparent huge pages in "madvise" or "always" mode, an advised buffer is backed
// by huge pages once written.
func TestAdvisedBufferGetsHugePages(t *testing.T) {
	mode, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil || strings.Contains(string(mode), "[never]") {
		t.Logf("transparent huge pages unavailable (%q): only the advice's harmlessness is tested", mode)
		Floats(minBytes)[0] = 1
		return
	}
	before := anonHugeKB(t)
	b := Floats(64 << 20 / 4) // 64 MiB
	for i := 0; i < len(b); i += 1024 {
		b[i] = 1
	}
	if got := anonHugeKB(t) - before; got < 32<<10 {
		t.Fatalf("64 MiB advised and written: %d KiB more in huge pages, want at least 32 MiB", got)
	}
}

func anonHugeKB(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps_rollup")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "AnonHugePages:" {
			var kb int
			for _, c := range f[1] {
				kb = kb*10 + int(c-'0')
			}
			return kb
		}
	}
	t.Fatal("no AnonHugePages in /proc/self/smaps_rollup")
	return 0
}

func TestReexecIsANoOpWhenSet(t *testing.T) {
	t.Setenv(reexecMarker, "1")
	ReexecWithMallocHugePages("X") // would replace the test binary if it did anything
	t.Setenv(reexecMarker, "")
	t.Setenv("ORTALIGN_TEST_OPT_OUT", "1")
	ReexecWithMallocHugePages("ORTALIGN_TEST_OPT_OUT")
	t.Setenv("ORTALIGN_TEST_OPT_OUT", "")
	t.Setenv(TunablesEnv, "glibc.malloc.hugetlb=0")
	ReexecWithMallocHugePages("ORTALIGN_TEST_OPT_OUT")
}
