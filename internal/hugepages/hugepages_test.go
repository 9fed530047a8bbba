package hugepages

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
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

// reexecHelperEnv makes TestReexecHelper act: it is set only in the child processes
// TestReexec starts.
const reexecHelperEnv = "ORTALIGN_HUGEPAGES_TEST_HELPER"

// TestReexecHelper is the program TestReexec runs: it prints the tunables it started
// with, calls ReexecWithMallocHugePages, and prints "returned" if that returned. A
// re-execution shows as a second "start" line (the process image is replaced; the
// output so far is already written).
func TestReexecHelper(t *testing.T) {
	if os.Getenv(reexecHelperEnv) != "1" {
		t.Skip("run by TestReexec")
	}
	fmt.Printf("start tunables=%q marker=%q\n", os.Getenv(TunablesEnv), os.Getenv(reexecMarker))
	ReexecWithMallocHugePages("ORTALIGN_TEST_OPT_OUT")
	fmt.Println("returned")
}

// TestReexec: ReexecWithMallocHugePages re-executes the program once with glibc's
// malloc tunable added to the ones already set (and then does nothing more); it does
// nothing when the marker, the opt-out variable or a malloc.hugetlb tunable is set.
func TestReexec(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  []string
		want []string // the helper's output lines
	}{
		{"re-executes once", nil, []string{`start tunables="" marker=""`, `start tunables="glibc.malloc.hugetlb=1" marker="1"`, "returned"}},
		{"keeps other tunables", []string{TunablesEnv + "=glibc.malloc.arena_max=2"}, []string{
			`start tunables="glibc.malloc.arena_max=2" marker=""`, `start tunables="glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1" marker="1"`, "returned"}},
		{"marker set", []string{reexecMarker + "=1"}, []string{`start tunables="" marker="1"`, "returned"}},
		{"opted out", []string{"ORTALIGN_TEST_OPT_OUT=1"}, []string{`start tunables="" marker=""`, "returned"}},
		{"tunable already set", []string{TunablesEnv + "=glibc.malloc.hugetlb=0"}, []string{`start tunables="glibc.malloc.hugetlb=0" marker=""`, "returned"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(exe, "-test.run=^TestReexecHelper$", "-test.count=1")
			var env []string
			for _, kv := range os.Environ() {
				k, _, _ := strings.Cut(kv, "=")
				if k != TunablesEnv && k != reexecMarker && k != "ORTALIGN_TEST_OPT_OUT" && k != reexecHelperEnv {
					env = append(env, kv)
				}
			}
			cmd.Env = append(append(env, reexecHelperEnv+"=1"), tc.env...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("helper: %v\n%s", err, out)
			}
			var got []string
			for _, line := range strings.Split(string(out), "\n") {
				if strings.HasPrefix(line, "start ") || line == "returned" {
					got = append(got, line)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("helper printed\n%s\nwant\n%s\n(whole output:\n%s)", strings.Join(got, "\n"), strings.Join(tc.want, "\n"), out)
			}
		})
	}
}
