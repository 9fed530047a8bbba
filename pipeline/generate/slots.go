package generate

import (
	"context"
	"fmt"
	"math"
	"slices"

	"ortalign/onnx/ort"
	"ortalign/pipeline/lm"
)

// Decoding with a cache written in place: GroupQueryAttention graphs (an export's, or
// attention rewritten into it, gqa.go). Each past input has one buffer of slots × [its
// dimensions, the sequence at the batch's final length], fed as the past and bound as the
// present of every run, so the op writes only the new tokens' keys and values. A row
// lives in a slot: its tokens fill the slot from position 0 (the op's right padding), its
// length says how many are valid, and the slots in use are the first ones, so a run views
// a prefix of each buffer. When a row finishes, the last row moves into its slot, and
// rows not yet started are prefilled into the free slots at the end: finished rows cost
// nothing, and the batch stays full while rows are waiting.

// Inputs of a graph whose attention was rewritten into GroupQueryAttention (gqa.go).
const (
	// lengthsInput is int64 [batch]: each row's valid tokens (cached and new) less one.
	lengthsInput = "ortalign_seqlens_k"
	// totalInput is an int64 scalar: the largest of the rows' valid tokens.
	totalInput = "ortalign_total_sequence_length"
)

// feedLengths sets the lengths inputs: last[i] is row i's last valid position, total the
// sequence length the run attends over.
func feedLengths(feeds map[string]*ort.Tensor, last []int64, total int64) {
	feeds[lengthsInput] = ort.MustInt64Tensor([]int64{int64(len(last))}, slices.Clone(last))
	feeds[totalInput] = ort.MustInt64Tensor([]int64{}, []int64{total})
}

// slotRun is a batch decoding in slots.
type slotRun struct {
	gen      *Generator
	capacity int   // positions per slot
	per      []int // floats per slot of each past's buffer
	rows     []*genRow
	n        []int64                // valid positions in each slot in use
	out      map[string]*ort.Tensor // the last run's outputs
}

// newSlotRun sizes the cache for slots rows of up to capacity tokens, reusing the
// generator's buffers when they are large enough.
func (gen *Generator) newSlotRun(slots, capacity int) (*slotRun, error) {
	s := &slotRun{gen: gen, capacity: capacity}
	if len(gen.kv) != len(gen.pasts) {
		gen.kv = make([][]float32, len(gen.pasts))
	}
	for i, p := range gen.pasts {
		per := capacity
		for ax, d := range p.dims {
			if ax == p.batchAxis || ax == p.seqAxis {
				continue
			}
			if d <= 0 {
				return nil, fmt.Errorf("%s: cache input %q has no static size on axis %d", gen.Path, p.name, ax)
			}
			per *= int(d)
		}
		s.per = append(s.per, per)
		if len(gen.kv[i]) < slots*per {
			gen.kv[i] = make([]float32, slots*per)
		}
	}
	return s, nil
}

// view is past i's buffer for slots [from, to).
func (s *slotRun) view(i, from, to int) *ort.Tensor {
	p := s.gen.pasts[i]
	shape := slices.Clone(p.dims)
	shape[p.batchAxis], shape[p.seqAxis] = int64(to-from), int64(s.capacity)
	return ort.MustFloatTensor(shape, s.gen.kv[i][from*s.per[i]:to*s.per[i]])
}

// run feeds tokens[i] to slot from+i, whose first start[i] positions are cached, and
// returns the logits after each row's last token.
func (s *slotRun) run(from int, tokens [][]int64, start []int64) ([]float32, error) {
	gen, m := s.gen, len(tokens)
	width, total := 0, int64(0)
	for i, t := range tokens {
		width = max(width, len(t))
		total = max(total, start[i]+int64(len(t)))
	}
	if total > int64(s.capacity) {
		return nil, fmt.Errorf("%s: %d positions in a cache of %d", gen.Path, total, s.capacity)
	}
	shape := []int64{int64(m), int64(width)}
	ids, pos := make([]int64, m*width), make([]int64, m*width)
	mask := make([]int64, m*int(total))
	last, index := make([]int64, m), make([]int64, m)
	for i, t := range tokens {
		copy(ids[i*width:], t)
		for k := range t {
			pos[i*width+k] = start[i] + int64(k)
		}
		n := start[i] + int64(len(t))
		for k := range n {
			mask[i*int(total)+int(k)] = 1
		}
		last[i], index[i] = n-1, int64(len(t)-1)
	}
	feeds := map[string]*ort.Tensor{lm.InputIDs: ort.MustInt64Tensor(shape, ids), GenIndexInput: ort.MustInt64Tensor([]int64{int64(m)}, index)}
	if gen.hasMask {
		feeds[lm.AttentionMask] = ort.MustInt64Tensor([]int64{int64(m), total}, mask)
	}
	if gen.hasPos {
		feeds[lm.PositionIDs] = ort.MustInt64Tensor(shape, pos)
	}
	if gen.lengths {
		feedLengths(feeds, last, total)
	}
	into := map[string]*ort.Tensor{}
	for i, p := range gen.pasts {
		t := s.view(i, from, from+m)
		feeds[p.name], into[p.present] = t, t
	}
	out, err := gen.run(feeds, into)
	if err != nil {
		return nil, fmt.Errorf("%s: %d rows of up to %d tokens after %d cached: %w", gen.Path, m, width, slices.Max(start), err)
	}
	s.out = out
	return out[NextLogitsOutput].F32, nil
}

// admit prefills rows into the free slots after those in use and returns their logits.
func (s *slotRun) admit(rows []*genRow) ([]float32, error) {
	tokens := make([][]int64, len(rows))
	for i, r := range rows {
		tokens[i] = r.prompt
	}
	logits, err := s.run(len(s.rows), tokens, make([]int64, len(rows)))
	if err != nil {
		return nil, err
	}
	for _, r := range rows {
		s.rows, s.n = append(s.rows, r), append(s.n, int64(len(r.prompt)))
	}
	return logits, nil
}

// step feeds every row in use its last token and returns the next logits.
func (s *slotRun) step() ([]float32, error) {
	tokens := make([][]int64, len(s.rows))
	for i, r := range s.rows {
		tokens[i] = r.out[len(r.out)-1:]
	}
	logits, err := s.run(0, tokens, s.n)
	if err != nil {
		return nil, err
	}
	for i := range s.n {
		s.n[i]++
	}
	return logits, nil
}

// retire drops finished rows, moving the last rows in use into their slots.
func (s *slotRun) retire() (retired []*genRow) {
	for i := 0; i < len(s.rows); {
		if !s.rows[i].done {
			i++
			continue
		}
		retired = append(retired, s.rows[i])
		last := len(s.rows) - 1
		if i != last {
			s.move(last, i)
		}
		s.rows, s.n = s.rows[:last], s.n[:last]
	}
	return retired
}

// move copies slot from's row (its valid positions) into slot to.
func (s *slotRun) move(from, to int) {
	n := int(s.n[from])
	for i, p := range s.gen.pasts {
		buf, per := s.gen.kv[i], s.per[i]
		// The slot's dimensions before the sequence axis are blocks of capacity × inner
		// values, of which the first n × inner are valid.
		inner := 1
		for ax := p.seqAxis + 1; ax < len(p.dims); ax++ {
			inner *= int(p.dims[ax])
		}
		block := s.capacity * inner
		for off := 0; off < per; off += block {
			copy(buf[to*per+off:to*per+off+n*inner], buf[from*per+off:from*per+off+n*inner])
		}
	}
	s.rows[to], s.n[to] = s.rows[from], s.n[from]
}

// decodeSlots completes rows in at most o.BatchSize slots (all rows when 0).
func (gen *Generator) decodeSlots(ctx context.Context, rows []*genRow, o *SampleOptions) error {
	slots := len(rows)
	if o.BatchSize > 0 {
		slots = min(slots, o.BatchSize)
	}
	capacity := 0
	for _, r := range rows {
		capacity = max(capacity, len(r.prompt)+o.MaxNewTokens)
	}
	s, err := gen.newSlotRun(slots, capacity)
	if err != nil {
		return err
	}
	waiting := rows
	for {
		o.rowsDone(s.retire())
		if k := min(slots-len(s.rows), len(waiting)); k > 0 {
			batch := waiting[:k]
			waiting = waiting[k:]
			if _, err := s.admit(batch); err != nil {
				return err
			}
			if err := gen.advance(batch, s.out, o); err != nil {
				return err
			}
			continue
		}
		if len(s.rows) == 0 {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := s.step(); err != nil {
			return err
		}
		if err := gen.advance(s.rows, s.out, o); err != nil {
			return err
		}
	}
}

// checkStep is one comparison of the in-place cache's check: the sequences of the rows
// in their slots and the reference logits after each.
type checkStep struct {
	seqs   [][]int64
	logits []float32
}

// The check decodes checkPrompts in two slots, following checkPlan (the prompts in the
// slots at each comparison): the first two are prefilled together and decoded two steps,
// then the first finishes, the second moves into its slot and the third is prefilled into
// the other (compared alone), and the two decode two more steps.
var (
	checkPrompts = [][]int64{{1, 2, 3}, {4, 5, 6, 7, 8}, {9, 10}}
	checkPlan    = [][]int{{0, 1}, {0, 1}, {2}, {1, 2}, {1, 2}}
)

// recordCheck computes the check's reference: at each point of checkPlan, ref's logits
// after the rows' sequences (computed without a cache), each row then continued with its
// greedy token.
func recordCheck(ref func(seqs [][]int64) ([]float32, error)) ([]checkStep, error) {
	seqs := make([][]int64, len(checkPrompts))
	for i, p := range checkPrompts {
		seqs[i] = slices.Clone(p)
	}
	var steps []checkStep
	for _, rows := range checkPlan {
		in := make([][]int64, len(rows))
		for i, r := range rows {
			in[i] = slices.Clone(seqs[r])
		}
		logits, err := ref(in)
		if err != nil {
			return nil, err
		}
		steps = append(steps, checkStep{seqs: in, logits: logits})
		vocab := len(logits) / len(rows)
		for i, r := range rows {
			row := logits[i*vocab : (i+1)*vocab]
			seqs[r] = append(seqs[r], int64(slices.Index(row, slices.Max(row))))
		}
	}
	return steps, nil
}

// checkInPlace replays the check (recordCheck) with the in-place cache and compares each
// step's logits with the reference's.
func (gen *Generator) checkInPlace(steps []checkStep) error {
	if len(steps) != len(checkPlan) {
		return fmt.Errorf("%d reference steps for a check of %d", len(steps), len(checkPlan))
	}
	rows := make([]*genRow, len(checkPrompts))
	for i, p := range checkPrompts {
		if slices.Max(p) >= int64(gen.vocab) {
			return fmt.Errorf("vocabulary of %d tokens: too small for the cache check", gen.vocab)
		}
		rows[i] = &genRow{prompt: p}
	}
	s, err := gen.newSlotRun(2, 16)
	if err != nil {
		return err
	}
	var logits []float32
	for k, want := range steps {
		switch k {
		case 0:
			logits, err = s.admit(rows[:2])
		case 2:
			rows[0].done = true
			s.retire()
			logits, err = s.admit(rows[2:])
		default:
			logits, err = s.step()
		}
		if err != nil {
			return err
		}
		if len(logits) != len(want.logits) {
			return fmt.Errorf("check step %d: %d logits, the reference has %d", k, len(logits), len(want.logits))
		}
		worst := 0.0
		for i, w := range want.logits {
			worst = max(worst, math.Abs(float64(logits[i]-w))/(1+math.Abs(float64(w))))
		}
		if !(worst <= 1e-3) {
			return fmt.Errorf("the in-place cache's logits differ from a run without a cache by %.2g at step %d", worst, k)
		}
		vocab := len(want.logits) / len(checkPlan[k])
		for i, r := range checkPlan[k] {
			if !slices.Equal(append(slices.Clip(rows[r].prompt), rows[r].out...), want.seqs[i]) {
				return fmt.Errorf("check step %d: row %d is not the reference's sequence", k, r)
			}
			row := want.logits[i*vocab : (i+1)*vocab]
			rows[r].out = append(rows[r].out, int64(slices.Index(row, slices.Max(row))))
		}
	}
	return nil
}
