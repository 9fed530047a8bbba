package objective

import (
	"math"
	"testing"
)

// Tolerances of the comparisons of a float32 training graph with a float64 PyTorch
// oracle (loss oracle, SFT, reward model, LoRA): the figures testdata/README.md quotes.
const (
	// oracleLossTol bounds the loss's relative error.
	oracleLossTol = 7e-7
	// oracleGradTol bounds each gradient tensor's relative L2 error (relL2).
	oracleGradTol = 1.1e-5
)

// nanToInf is e, or +Inf when e is NaN: an error measure passed through it makes a
// check written `e > tol` fail on NaN (every comparison with NaN is false).
func nanToInf(e float64) float64 {
	if math.IsNaN(e) {
		return math.Inf(1)
	}
	return e
}

// relErr is |got − want| / |want|; +Inf when either is NaN or infinite.
func relErr(got, want float64) float64 {
	if math.IsInf(got, 0) || math.IsInf(want, 0) {
		return math.Inf(1)
	}
	return nanToInf(math.Abs(got-want) / math.Abs(want))
}

// TestOracleChecksFailOnNaN: the error measures of the oracle comparisons exceed every
// tolerance when the output is NaN or infinite, also through a running max.
func TestOracleChecksFailOnNaN(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	for _, got := range [][]float32{{nan, 1}, {1, nan}, {inf, 1}, {nan, nan}} {
		if e := max(0, relL2(got, []float64{1, 1})); !(e > 1) {
			t.Errorf("relL2(%v) = %v: passes a tolerance", got, e)
		}
	}
	for _, got := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		if e := max(0, relErr(got, 0.5)); !(e > 1) {
			t.Errorf("relErr(%v, 0.5) = %v: passes a tolerance", got, e)
		}
	}
	if e := relErr(0.5, math.NaN()); !(e > 1) {
		t.Errorf("relErr against a NaN oracle = %v", e)
	}
	if e := relErr(1+1e-7, 1); !(e > 0 && e < oracleLossTol) || relL2([]float32{1}, []float64{1}) != 0 {
		t.Errorf("finite measures changed: relErr %v", e)
	}
}
