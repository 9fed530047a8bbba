package engine

import (
	"math"
	"strings"
	"time"
)

// Wall-clock metrics of a run (RunConfig.MetricsPath), with TRL's names for the totals.
const (
	// StepTimeMetric is a step's seconds: its gradients and update, and for the first
	// step of a round the making of the round (reference values, rollouts); evaluations
	// and checkpoints are not counted. A line that sums up a round has its steps' mean.
	StepTimeMetric = "time/step_s"
	// RuntimeMetric is the seconds of the run's loop in this process, evaluations and
	// checkpoints included (Hugging Face's train_runtime).
	RuntimeMetric = "train_runtime"
	// SamplesPerSecondMetric is the items trained on in this process per second of
	// RuntimeMetric.
	SamplesPerSecondMetric = "train_samples_per_second"
	// StepsPerSecondMetric is the optimizer steps of this process per second of
	// RuntimeMetric.
	StepsPerSecondMetric = "train_steps_per_second"
)

// WallClock reports whether a metric measures wall-clock time (time/*, train_runtime
// and the rates on it): those differ from run to run, every other metric of a run is
// reproducible, and a resumed run's equal an uninterrupted one's.
func WallClock(name string) bool {
	switch name {
	case RuntimeMetric, SamplesPerSecondMetric, StepsPerSecondMetric:
		return true
	}
	return strings.HasPrefix(name, "time/")
}

// runClock times a run's loop for its metrics.
type runClock struct {
	start          time.Time
	steps, samples int
}

// step records a step of samples items that began at from, and returns its seconds.
func (c *runClock) step(from time.Time, samples int) float64 {
	c.steps++
	c.samples += samples
	return roundTo(time.Since(from).Seconds(), 4)
}

// summary is the run's last metrics line: Hugging Face's speed metrics, rounded as it
// rounds them (rates are 0 when nothing ran).
func (c *runClock) summary() Metrics {
	runtime := time.Since(c.start).Seconds()
	rate := func(n int) float64 {
		if runtime <= 0 {
			return 0
		}
		return roundTo(float64(n)/runtime, 3)
	}
	return Metrics{
		{Name: RuntimeMetric, Value: roundTo(runtime, 4)},
		{Name: SamplesPerSecondMetric, Value: rate(c.samples)},
		{Name: StepsPerSecondMetric, Value: rate(c.steps)},
	}
}

// roundTo rounds v to digits decimals.
func roundTo(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}

// itemCount is the number of items in a step's micro-batches.
func itemCount[T any](micro [][]T) int {
	n := 0
	for _, b := range micro {
		n += len(b)
	}
	return n
}
