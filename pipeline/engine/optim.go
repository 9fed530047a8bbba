package engine

import (
	"fmt"
	"math"
	"runtime"
	"sync"

	"ortalign/internal/hugepages"
)

// Optimizer names.
const (
	OptimSGD   = "sgd"
	OptimAdamW = "adamw"
)

// OptimConfig configures the optimizer, with PyTorch's semantics: SGD adds weight decay
// to the gradient (L2); AdamW decouples it and bias-corrects both moments.
type OptimConfig struct {
	Name         string
	WeightDecay  float64
	Beta1, Beta2 float64 // AdamW; 0 means PyTorch's defaults 0.9 and 0.999
	Eps          float64 // AdamW; 0 means 1e-8
}

// Optimizer updates parameter buffers in place from gradient buffers. Gradients live in
// plain buffers between "compute" and "apply", which is the seam where a data-parallel
// all-reduce would go.
type Optimizer struct {
	cfg  OptimConfig
	Step int         // updates applied so far
	M, V [][]float32 // AdamW moments, one per parameter (nil for SGD)
}

// NewOptimizer allocates state for parameters of the given sizes.
func NewOptimizer(cfg OptimConfig, sizes []int) (*Optimizer, error) {
	if cfg.Beta1 == 0 {
		cfg.Beta1 = 0.9
	}
	if cfg.Beta2 == 0 {
		cfg.Beta2 = 0.999
	}
	if cfg.Eps == 0 {
		cfg.Eps = 1e-8
	}
	o := &Optimizer{cfg: cfg}
	switch cfg.Name {
	case OptimSGD:
	case OptimAdamW:
		o.M, o.V = make([][]float32, len(sizes)), make([][]float32, len(sizes))
		for i, n := range sizes {
			o.M[i], o.V[i] = hugepages.Floats(n), hugepages.Floats(n)
		}
	default:
		return nil, fmt.Errorf("unknown optimizer %q (want %s or %s)", cfg.Name, OptimSGD, OptimAdamW)
	}
	return o, nil
}

// Apply performs one update with learning rate lr, in parallel over chunks of all
// parameters.
func (o *Optimizer) Apply(params, grads [][]float32, lr float64) {
	o.Step++
	wd := o.cfg.WeightDecay
	b1, b2, eps := o.cfg.Beta1, o.cfg.Beta2, o.cfg.Eps
	bc1 := 1 - math.Pow(b1, float64(o.Step))
	bc2 := 1 - math.Pow(b2, float64(o.Step))
	parallelChunks(params, func(i, lo, hi int) {
		p, g := params[i][lo:hi], grads[i][lo:hi]
		switch o.cfg.Name {
		case OptimSGD:
			lr32, wd32 := float32(lr), float32(wd)
			for k := range p {
				p[k] -= lr32 * (g[k] + wd32*p[k])
			}
		case OptimAdamW:
			m, v := o.M[i][lo:hi], o.V[i][lo:hi]
			decay := float32(1 - lr*wd)
			fb1, fb2 := float32(b1), float32(b2)
			step := float32(lr / bc1)
			sqrtBC2 := float32(math.Sqrt(bc2))
			feps := float32(eps)
			for k := range p {
				p[k] *= decay
				m[k] = fb1*m[k] + (1-fb1)*g[k]
				v[k] = fb2*v[k] + (1-fb2)*g[k]*g[k]
				denom := float32(math.Sqrt(float64(v[k])))/sqrtBC2 + feps
				p[k] -= step * m[k] / denom
			}
		}
	})
}

// GradNorm is the L2 norm over all gradients, computed in float64. Partial sums are
// added in a fixed order, so the norm (and with it clipping) is the same on every run
// whatever the goroutines' timing: a resumed run must repeat an uninterrupted one bit for bit.
func GradNorm(grads [][]float32) float64 {
	var offsets []int // first chunk index of each buffer
	n := 0
	for _, g := range grads {
		offsets = append(offsets, n)
		n += (len(g) + chunkSize - 1) / chunkSize
	}
	partial := make([]float64, n)
	parallelChunks(grads, func(i, lo, hi int) {
		s := 0.0
		for _, g := range grads[i][lo:hi] {
			s += float64(g) * float64(g)
		}
		partial[offsets[i]+lo/chunkSize] = s
	})
	total := 0.0
	for _, s := range partial {
		total += s
	}
	return math.Sqrt(total)
}

// ClipGrads scales gradients so their norm is at most maxNorm, as PyTorch's
// clip_grad_norm_ does; norm is their current norm.
func ClipGrads(grads [][]float32, norm, maxNorm float64) {
	coef := maxNorm / (norm + 1e-6)
	if maxNorm <= 0 || coef >= 1 {
		return
	}
	c := float32(coef)
	parallelChunks(grads, func(i, lo, hi int) {
		g := grads[i][lo:hi]
		for k := range g {
			g[k] *= c
		}
	})
}

// chunkSize is the number of values a parallelChunks job covers.
const chunkSize = 1 << 15

// parallelChunks calls fn on chunks of every buffer, spread over all cores.
func parallelChunks(bufs [][]float32, fn func(i, lo, hi int)) {
	const chunk = chunkSize
	type job struct{ i, lo, hi int }
	jobs := make(chan job, 64)
	var wg sync.WaitGroup
	for w := 0; w < runtime.NumCPU(); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				fn(j.i, j.lo, j.hi)
			}
		}()
	}
	for i, b := range bufs {
		for lo := 0; lo < len(b); lo += chunk {
			jobs <- job{i, lo, min(lo+chunk, len(b))}
		}
	}
	close(jobs)
	wg.Wait()
}
