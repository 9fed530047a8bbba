package generate

import (
	"context"
	"fmt"

	"ortalign/onnx/ort"
	"ortalign/pipeline/lm"
)

// Decoding with a cache whose presents are the pasts with the new tokens' keys and values
// concatenated (an optimum-style export, or a graph derived by concatenating pasts): rows
// share one mask over past and new tokens, left- or right-padded, and each step feeds the
// previous presents back.

// cacheRun is the state of a batch decoded with the KV cache.
type cacheRun struct {
	gen   *Generator
	n     int
	mask  [][]int64 // per row, over past + current tokens
	count []int64   // per row, the tokens attended so far (the next position id)
	out   map[string]*ort.Tensor
}

// prefill runs the padded prompts with an empty past. Positions follow the attention
// mask (cumsum − 1; 1 on padding, as transformers). It returns the logits at each row's
// last prompt token.
func (gen *Generator) prefill(prompts [][]int64, left bool) (*cacheRun, []float32, error) {
	width := 0
	for _, p := range prompts {
		width = max(width, len(p))
	}
	n := len(prompts)
	c := &cacheRun{gen: gen, n: n, mask: make([][]int64, n), count: make([]int64, n)}
	ids := make([]int64, n*width)
	pos := make([]int64, n*width)
	flat := make([]int64, 0, n*width)
	index := make([]int64, n)
	for i, p := range prompts {
		off := 0
		if left {
			off = width - len(p)
		}
		m := make([]int64, width, width+64)
		for t := 0; t < width; t++ {
			ids[i*width+t], pos[i*width+t] = gen.padID(), 1
			if k := t - off; k >= 0 && k < len(p) {
				ids[i*width+t], pos[i*width+t], m[t] = p[k], int64(k), 1
			}
		}
		c.mask[i], c.count[i], index[i] = m, int64(len(p)), int64(off+len(p)-1)
		flat = append(flat, m...)
	}
	shape := []int64{int64(n), int64(width)}
	feeds := map[string]*ort.Tensor{lm.InputIDs: ort.MustInt64Tensor(shape, ids), lm.AttentionMask: ort.MustInt64Tensor(shape, flat),
		GenIndexInput: ort.MustInt64Tensor([]int64{int64(n)}, index)}
	if gen.hasPos {
		feeds[lm.PositionIDs] = ort.MustInt64Tensor(shape, pos)
	}
	for _, p := range gen.pasts {
		feeds[p.name] = p.empty(n)
	}
	out, err := gen.run(feeds, nil)
	if err != nil {
		return nil, nil, gen.runError(n, prompts, err)
	}
	c.out = out
	return c, out[NextLogitsOutput].F32, nil
}

// step feeds one token per row (rows with active[i] false get padding, masked out) with
// the previous presents as the past, and returns the next logits.
func (c *cacheRun) step(tokens []int64, active []bool) ([]float32, error) {
	gen := c.gen
	ids := make([]int64, c.n)
	pos := make([]int64, c.n)
	var flat []int64
	for i := range c.mask {
		ids[i], pos[i] = gen.padID(), 1
		bit := int64(0)
		if active[i] {
			ids[i], pos[i], bit = tokens[i], c.count[i], 1
			c.count[i]++
		}
		c.mask[i] = append(c.mask[i], bit)
	}
	width := len(c.mask[0])
	flat = make([]int64, 0, c.n*width)
	for _, m := range c.mask {
		flat = append(flat, m...)
	}
	one := []int64{int64(c.n), 1}
	feeds := map[string]*ort.Tensor{lm.InputIDs: ort.MustInt64Tensor(one, ids), lm.AttentionMask: ort.MustInt64Tensor([]int64{int64(c.n), int64(width)}, flat),
		GenIndexInput: ort.MustInt64Tensor([]int64{int64(c.n)}, make([]int64, c.n))}
	if gen.hasPos {
		feeds[lm.PositionIDs] = ort.MustInt64Tensor(one, pos)
	}
	for _, p := range gen.pasts {
		feeds[p.name] = c.out[p.present]
	}
	out, err := gen.run(feeds, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: decoding step at %d tokens: %w", gen.Path, width, err)
	}
	c.out = out
	return out[NextLogitsOutput].F32, nil
}

// padID is the id fed at masked positions: any valid id will do.
func (gen *Generator) padID() int64 { return 0 }

// decodeCached prefills the prompts and decodes one token per step with the KV cache.
func (gen *Generator) decodeCached(ctx context.Context, rows []*genRow, o *SampleOptions) error {
	prompts := make([][]int64, len(rows))
	for i, r := range rows {
		prompts[i] = r.prompt
	}
	c, _, err := gen.prefill(prompts, o.PaddingSide == "left")
	if err != nil {
		return err
	}
	tokens := make([]int64, len(rows))
	active := make([]bool, len(rows))
	for {
		if err := gen.advance(rows, c.out, o); err != nil {
			return err
		}
		if allDone(rows) {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		for i, r := range rows {
			active[i] = !r.done
			if !r.done {
				tokens[i] = r.out[len(r.out)-1]
			}
		}
		if _, err = c.step(tokens, active); err != nil {
			return err
		}
	}
}
