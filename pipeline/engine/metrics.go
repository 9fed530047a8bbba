package engine

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// Metric is one named value of a step or an evaluation.
type Metric struct {
	Name  string
	Value float64
	// Sum marks a count (tokens, items) that accumulates over micro-batches instead of
	// being averaged.
	Sum bool
	// Over, when positive, is what Value is a mean over (a micro-batch's tokens, say):
	// micro-batches' values then combine in proportion to it rather than to the
	// objective's Weight, so that accumulation gives the one-batch mean.
	Over float64
}

// Metrics is an ordered list of named values: one line of metrics.jsonl, with TRL's
// names. The order is the objective's, so logs read the same from run to run.
type Metrics []Metric

// Get returns the value of name and whether it is present.
func (m Metrics) Get(name string) (float64, bool) {
	x, ok := m.metric(name)
	return x.Value, ok
}

// Value returns the value of name, 0 when absent.
func (m Metrics) Value(name string) float64 {
	v, _ := m.Get(name)
	return v
}

// Set replaces the value of name, or appends it.
func (m Metrics) Set(name string, v float64) Metrics {
	for i := range m {
		if m[i].Name == name {
			m[i].Value = v
			return m
		}
	}
	return append(m, Metric{Name: name, Value: v})
}

// Prefixed returns a copy with every name prefixed (TRL's "eval_").
func (m Metrics) Prefixed(prefix string) Metrics {
	out := make(Metrics, len(m))
	for i, x := range m {
		out[i] = x
		out[i].Name = prefix + x.Name
	}
	return out
}

// MarshalJSON writes the metrics as one JSON object, in order. Values are formatted as
// encoding/json formats float64s.
func (m Metrics) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, x := range m {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := json.Marshal(x.Name)
		if err != nil {
			return nil, err
		}
		v, err := json.Marshal(x.Value)
		if err != nil {
			return nil, fmt.Errorf("metric %s: %w", x.Name, err)
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// UnmarshalJSON reads an object of numbers, keeping the file's order.
func (m *Metrics) UnmarshalJSON(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return fmt.Errorf("metrics: want a JSON object")
	}
	*m = (*m)[:0]
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		name, _ := t.(string)
		var v float64
		if err := dec.Decode(&v); err != nil {
			return fmt.Errorf("metrics: %s: %w", name, err)
		}
		*m = append(*m, Metric{Name: name, Value: v})
	}
	return nil
}

// weightedMean combines micro-batch metrics: each value is weighted by its batch's
// weight over the total (or by its own Over), counts (Sum) are added.
func weightedMean(parts []Metrics, weights []float64) Metrics {
	if len(parts) == 0 {
		return nil
	}
	total := 0.0
	for _, w := range weights {
		total += w
	}
	out := make(Metrics, len(parts[0]))
	copy(out, parts[0])
	for i := range out {
		out[i].Value, out[i].Over = 0, 0
	}
	for k, p := range parts {
		for i := range out {
			x, _ := p.metric(out[i].Name)
			switch {
			case out[i].Sum:
				out[i].Value += x.Value
			case x.Over > 0:
				out[i].Value += x.Value * x.Over
				out[i].Over += x.Over
			case total > 0:
				out[i].Value += x.Value * (weights[k] / total)
			}
		}
	}
	for i := range out {
		if out[i].Over > 0 {
			out[i].Value /= out[i].Over
		}
	}
	return out
}

// metric returns the metric named name and whether it is present (the zero Metric when
// absent).
func (m Metrics) metric(name string) (Metric, bool) {
	for _, x := range m {
		if x.Name == name {
			return x, true
		}
	}
	return Metric{}, false
}
