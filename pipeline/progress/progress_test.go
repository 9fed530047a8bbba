package progress

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestProgressRateCountsOnlyThisRun: a resumed run's rate and ETA come from the steps
// this run did, not the ones before the checkpoint; a finished run shows ETA 0s.
func TestProgressRateCountsOnlyThisRun(t *testing.T) {
	var buf bytes.Buffer
	p := &Progress{Label: "dpo", Unit: "steps", Out: &buf} // LogEvery 0: a line per Add
	p.Start(10)
	p.Resume(6)
	// 2 steps in 4.2 s: 0.48 steps/s, 2 steps left ≈ 4.2 s. Counting the 6 resumed steps
	// would give 1.9 steps/s and ETA 1s.
	p.start = time.Now().Add(-4200 * time.Millisecond)
	p.Add(2)
	if want := "dpo: 8/10 steps (80%), 0.5 steps/s, ETA 4s\n"; buf.String() != want {
		t.Errorf("resumed progress %q, want %q", buf.String(), want)
	}
	buf.Reset()
	p.start = time.Now().Add(-8200 * time.Millisecond)
	p.Add(2)
	if want := "dpo: 10/10 steps (100%), 0.5 steps/s, ETA 0s\n"; buf.String() != want {
		t.Errorf("finished progress %q, want %q", buf.String(), want)
	}
	buf.Reset()
	p.Done()
	if !strings.HasSuffix(buf.String(), "ETA 0s\n") || !strings.HasPrefix(buf.String(), "dpo: 10/10 steps (100%)") {
		t.Errorf("done line %q", buf.String())
	}

	// A run resumed at its end (nothing left to do) shows 0 steps/s and ETA 0s.
	buf.Reset()
	p.Start(4)
	p.Resume(4)
	p.Done()
	if want := "dpo: 4/4 steps (100%), 0.0 steps/s, ETA 0s\n"; buf.String() != want {
		t.Errorf("resumed at the end: %q, want %q", buf.String(), want)
	}
	// Before any step of this run the ETA is unknown.
	buf.Reset()
	p.Start(10)
	p.Resume(3)
	p.LogEvery = time.Hour
	p.Add(0)
	if want := "dpo: 3/10 steps (30%), 0.0 steps/s, ETA ?\n"; buf.String() != want {
		t.Errorf("resumed, no step yet: %q, want %q", buf.String(), want)
	}
	var nilProgress *Progress
	nilProgress.Start(1)
	nilProgress.Resume(1)
	nilProgress.Add(1)
	nilProgress.Done()
}

// TestProgressETARounds: 2 steps left at 2 steps per 2.8 s is 2.8 s: ETA 3s.
func TestProgressETARounds(t *testing.T) {
	var buf bytes.Buffer
	p := &Progress{Label: "dpo", Unit: "steps", Out: &buf}
	p.Start(4)
	p.start = time.Now().Add(-2800 * time.Millisecond)
	p.Add(2)
	if want := "dpo: 2/4 steps (50%), 0.7 steps/s, ETA 3s\n"; buf.String() != want {
		t.Errorf("progress %q, want %q", buf.String(), want)
	}
}
