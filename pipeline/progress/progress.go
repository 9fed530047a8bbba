package progress

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Progress reports long work: a bar with rate and ETA on a terminal, plain log lines
// (at most every LogEvery) otherwise. A nil *Progress reports nothing.
type Progress struct {
	Label    string
	Unit     string
	Out      io.Writer
	Terminal bool
	LogEvery time.Duration

	total, done int
	resumed     int // items done before this run started: not part of the rate
	start, last time.Time
}

// NewProgress writes to w, drawing a bar when w is a terminal.
func NewProgress(w io.Writer, label, unit string) *Progress {
	p := &Progress{Label: label, Unit: unit, Out: w, LogEvery: 10 * time.Second}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.Terminal = true
		}
	}
	return p
}

// Start begins a run of total items.
func (p *Progress) Start(total int) {
	if p == nil {
		return
	}
	p.total, p.done, p.resumed = total, 0, 0
	p.start, p.last = time.Now(), time.Time{}
}

// Resume records n items finished by an earlier run: they count towards the total but
// not towards this run's rate and ETA.
func (p *Progress) Resume(n int) {
	if p == nil {
		return
	}
	p.done += n
	p.resumed += n
}

// Add records n more finished items.
func (p *Progress) Add(n int) {
	if p == nil {
		return
	}
	p.done += n
	now := time.Now()
	if p.Terminal {
		if now.Sub(p.last) >= 100*time.Millisecond || p.done == p.total {
			p.last = now
			fmt.Fprintf(p.Out, "\r%s", p.line(now, true))
		}
		return
	}
	if p.last.IsZero() || now.Sub(p.last) >= p.LogEvery {
		p.last = now
		fmt.Fprintln(p.Out, p.line(now, false))
	}
}

// Done ends the run.
func (p *Progress) Done() {
	if p == nil {
		return
	}
	if p.Terminal {
		fmt.Fprintf(p.Out, "\r%s\n", p.line(time.Now(), true))
	} else {
		fmt.Fprintln(p.Out, p.line(time.Now(), false))
	}
}

func (p *Progress) line(now time.Time, bar bool) string {
	elapsed := now.Sub(p.start).Seconds()
	rate := 0.0
	if elapsed > 0 {
		rate = float64(p.done-p.resumed) / elapsed
	}
	eta := "?"
	if p.done >= p.total {
		eta = "0s"
	} else if rate > 0 {
		eta = time.Duration(float64(p.total-p.done) / rate * float64(time.Second)).Round(time.Second).String()
	}
	frac := 1.0
	if p.total > 0 {
		frac = float64(p.done) / float64(p.total)
	}
	if !bar {
		return fmt.Sprintf("%s: %d/%d %s (%.0f%%), %.1f %s/s, ETA %s", p.Label, p.done, p.total, p.Unit, 100*frac, rate, p.Unit, eta)
	}
	const width = 30
	filled := int(frac * width)
	return fmt.Sprintf("%s [%s%s] %d/%d %.1f %s/s ETA %s ", p.Label, strings.Repeat("=", filled), strings.Repeat(" ", width-filled), p.done, p.total, rate, p.Unit, eta)
}
