package engine

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"unsafe"

	"ortalign/internal/atomicfile"
)

// A checkpoint file (version 3) is, in order:
//
//	"ORTALIGN-CHECKPOINT-3\n"
//	uint64 (little-endian)  the length n of the header
//	n bytes                 the header, JSON (checkpointHeader)
//	uint32                  CRC-32C (Castagnoli) of the header's n bytes
//	for each state array (parameters, then AdamW's first and second moments, each in
//	the header's name order):
//	    float32s (little-endian), then uint32 CRC-32C of their bytes
//
// Each checksum covers one section, so a damaged byte is reported with the section it
// is in. Version 2 is the same without the checksums; it still loads.
const (
	checkpointMagicPrefix = "ORTALIGN-CHECKPOINT-"
	checkpointVersion     = 3
	// checkpointVersionNoCRC is the previous format, read for checkpoints written by
	// earlier releases: no checksums.
	checkpointVersionNoCRC = 2
)

var CheckpointMagic = fmt.Sprintf("%s%d\n", checkpointMagicPrefix, checkpointVersion)

// castagnoli is the CRC-32C table (the polynomial with hardware support on x86-64 and
// arm64).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// checkpointHeader describes the float32 arrays that follow it: the parameters, then
// (AdamW) the first and second moments, each in Names order.
type CheckpointHeader struct {
	Step      int      `json:"step"`
	Optimizer string   `json:"optimizer"`
	Names     []string `json:"names"`
	Sizes     []int    `json:"sizes"`
	Moments   bool     `json:"moments"`
	// Settings are what decide the data order and the update (see Engine.settings).
	Settings map[string]string `json:"settings"`
	// Totals are the engine's running sums of counting metrics.
	Totals map[string]float64 `json:"totals,omitempty"`
}

// saveCheckpoint writes parameters and optimizer state atomically (see
// internal/atomicfile), so an interruption leaves the previous checkpoint intact.
func (e *Engine[T]) SaveCheckpoint(path string, settings map[string]string) error {
	h := CheckpointHeader{Step: e.opt.Step, Optimizer: e.cfg.Optim.Name, Names: e.names, Moments: e.opt.M != nil, Settings: settings, Totals: e.Totals}
	for _, p := range e.params {
		h.Sizes = append(h.Sizes, len(p))
	}
	hdr, err := json.Marshal(h)
	if err != nil {
		return err
	}
	err = atomicfile.WriteFile(path, func(w io.Writer) error {
		if _, err := io.WriteString(w, CheckpointMagic); err != nil {
			return err
		}
		if err := binary.Write(w, binary.LittleEndian, uint64(len(hdr))); err != nil {
			return err
		}
		if err := writeSection(w, hdr); err != nil {
			return err
		}
		for _, a := range e.StateArrays(h.Moments) {
			if err := writeSection(w, floatBytes(a)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}

// writeSection writes b and its CRC-32C.
func writeSection(w io.Writer, b []byte) error {
	if _, err := w.Write(b); err != nil {
		return err
	}
	return binary.Write(w, binary.LittleEndian, crc32.Checksum(b, castagnoli))
}

// stateArrays are the buffers a checkpoint holds, in file order.
func (e *Engine[T]) StateArrays(moments bool) [][]float32 {
	arrays := slices.Clone(e.params)
	if moments {
		arrays = append(append(arrays, e.opt.M...), e.opt.V...)
	}
	return arrays
}

// sectionName names state array i of stateArrays for messages.
func (e *Engine[T]) SectionName(i int) string {
	kind := [...]string{"parameters", "AdamW first moments (exp_avg)", "AdamW second moments (exp_avg_sq)"}
	return fmt.Sprintf("%s of %q", kind[i/len(e.names)], e.names[i%len(e.names)])
}

// loadCheckpoint restores state from path; it reports false when there is none. A
// checkpoint of another model, optimizer or settings, or a damaged one, is an error
// naming what differs (for a checksum, the section it fails in); nothing is restored
// then.
func (e *Engine[T]) LoadCheckpoint(path string, settings map[string]string) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("checkpoint %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("checkpoint %s: %w", path, err)
	}
	bad := func(format string, args ...any) (bool, error) {
		return false, fmt.Errorf("checkpoint %s: %s; remove it (or use another output directory) to start over", path, fmt.Sprintf(format, args...))
	}
	r := bufio.NewReaderSize(f, 1<<20)
	magic := make([]byte, len(CheckpointMagic))
	if _, err := io.ReadFull(r, magic); err != nil || !bytes.HasPrefix(magic, []byte(checkpointMagicPrefix)) {
		return bad("not an ortalign checkpoint")
	}
	var checksums bool
	switch string(magic) {
	case CheckpointMagic:
		checksums = true
	case fmt.Sprintf("%s%d\n", checkpointMagicPrefix, checkpointVersionNoCRC):
	default:
		return bad("format %q, this ortalign reads versions %d and %d", bytes.TrimSpace(magic[len(checkpointMagicPrefix):]), checkpointVersionNoCRC, checkpointVersion)
	}
	var n uint64
	if err := binary.Read(r, binary.LittleEndian, &n); err != nil || n > 1<<30 || int64(n) > st.Size() {
		return bad("bad header length")
	}
	hdr := make([]byte, n)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return bad("truncated header")
	}
	dataStart := int64(len(magic)) + 8 + int64(n)
	if checksums {
		var stored uint32
		if err := binary.Read(r, binary.LittleEndian, &stored); err != nil {
			return bad("header: no checksum after it (truncated)")
		}
		if got := crc32.Checksum(hdr, castagnoli); got != stored {
			return bad("header: CRC-32C %08x, the file records %08x: the checkpoint is damaged", got, stored)
		}
		dataStart += 4
	}
	var h CheckpointHeader
	if err := json.Unmarshal(hdr, &h); err != nil {
		return bad("header: %v", err)
	}
	switch {
	case len(h.Sizes) != len(h.Names):
		return bad("header lists %d tensor names but %d sizes", len(h.Names), len(h.Sizes))
	case h.Step < 0:
		return bad("negative step %d", h.Step)
	case h.Optimizer != e.cfg.Optim.Name:
		return bad("written for optimizer %s, this run uses %s", h.Optimizer, e.cfg.Optim.Name)
	case h.Moments != (e.opt.M != nil):
		return bad("optimizer %s state: moments recorded %v, expected %v", h.Optimizer, h.Moments, e.opt.M != nil)
	case !slices.Equal(h.Names, e.names):
		return bad("written for another model or trainable set (%d tensors, this run trains %d)", len(h.Names), len(e.names))
	}
	var want int64
	for i, p := range e.params {
		if h.Sizes[i] != len(p) {
			return bad("tensor %q has %d values, the model %d", e.names[i], h.Sizes[i], len(p))
		}
		want += int64(len(p))
	}
	if h.Moments {
		want *= 3
	}
	arrays := e.StateArrays(h.Moments)
	want *= 4
	what := "tensor data"
	if checksums {
		want += 4 * int64(len(arrays))
		what = "tensor data and checksums"
	}
	if got := st.Size() - dataStart; got != want {
		return bad("holds %d bytes of %s, its header describes %d (truncated or damaged)", got, what, want)
	}
	if err := compareSettings(h.Settings, settings); err != nil {
		return false, fmt.Errorf("checkpoint %s: %w", path, err)
	}
	if checksums {
		// Every section is checked before any is read into the live buffers, so a
		// damaged file restores nothing.
		if i, got, stored, err := verifySections(f, dataStart, arrays); err != nil {
			return bad("reading tensor data: %v", err)
		} else if i >= 0 {
			return bad("%s: CRC-32C %08x, the file records %08x: the checkpoint is damaged", e.SectionName(i), got, stored)
		}
	}
	// The header and the file's size agree with this engine, so the data is all there:
	// it is read straight into the live buffers (no second copy of the state).
	for _, a := range arrays {
		if err := readFloats(r, a); err != nil {
			return bad("reading tensor data: %v", err)
		}
		if checksums {
			if _, err := r.Discard(4); err != nil { // verified above
				return bad("reading tensor data: %v", err)
			}
		}
	}
	e.opt.Step = h.Step
	e.Totals = map[string]float64{}
	for k, v := range h.Totals {
		e.Totals[k] = v
	}
	return true, nil
}

// verifySections checks the CRC-32C of each state array's section (sized as arrays,
// laid out from offset start of f), several sections at a time. It returns the index
// of the first that fails, with the computed and the recorded checksum, or -1.
func verifySections(f io.ReaderAt, start int64, arrays [][]float32) (int, uint32, uint32, error) {
	type result struct {
		got, stored uint32
		err         error
	}
	results := make([]result, len(arrays))
	offsets := make([]int64, len(arrays))
	for i := range arrays {
		offsets[i] = start
		start += 4*int64(len(arrays[i])) + 4
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), 4, len(arrays)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1<<20)
			for i := int(next.Add(1) - 1); i < len(arrays); i = int(next.Add(1) - 1) {
				r := &results[i]
				sr := io.NewSectionReader(f, offsets[i], 4*int64(len(arrays[i]))+4)
				for left := 4 * len(arrays[i]); left > 0 && r.err == nil; {
					n, err := io.ReadFull(sr, buf[:min(left, len(buf))])
					r.got = crc32.Update(r.got, castagnoli, buf[:n])
					left -= n
					r.err = err
				}
				if r.err == nil {
					r.err = binary.Read(sr, binary.LittleEndian, &r.stored)
				}
			}
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.err != nil {
			return i, 0, 0, r.err
		}
		if r.got != r.stored {
			return i, r.got, r.stored, nil
		}
	}
	return -1, 0, 0, nil
}

// compareSettings names the first setting (in name order) that differs.
func compareSettings(saved, now map[string]string) error {
	keys := make([]string, 0, len(now))
	for k := range now {
		keys = append(keys, k)
	}
	for k := range saved {
		if _, ok := now[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		a, okA := saved[k]
		b, okB := now[k]
		if okA && okB && a == b {
			continue
		}
		if !okA {
			a = "(not recorded)"
		}
		if !okB {
			b = "(not set)"
		}
		return fmt.Errorf("setting %s was %s when the checkpoint was written and is %s now: resume with the same settings, or remove the checkpoint (or use another output directory) to start over", k, a, b)
	}
	return nil
}

// openMetrics opens the metrics log at path for a run starting after step: a fresh run
// truncates it; a resumed run first cuts it back (atomically) to the lines of steps up
// to step, dropping what was logged after the checkpoint. "" logs nowhere.
func openMetrics(path string, step int) (io.WriteCloser, error) {
	if path == "" {
		return nopCloser{io.Discard}, nil
	}
	if step > 0 {
		if err := truncateMetrics(path, step); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, atomicfile.DefaultMode)
		if err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
		return f, nil
	}
	if err := atomicfile.WriteFile(path, func(io.Writer) error { return nil }); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return f, nil
}

// truncateMetrics keeps the lines of path whose "step" is at most step. A line cut
// short by a kill (no newline, not JSON) is dropped too.
func truncateMetrics(path string, step int) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	var keep bytes.Buffer
	for len(data) > 0 {
		line, rest, complete := bytes.Cut(data, []byte("\n"))
		data = rest
		if !complete {
			break
		}
		var v struct {
			Step *float64 `json:"step"`
		}
		if json.Unmarshal(line, &v) != nil || v.Step == nil || *v.Step > float64(step) {
			continue
		}
		keep.Write(line)
		keep.WriteByte('\n')
	}
	return atomicfile.WriteFile(path, func(w io.Writer) error {
		_, err := w.Write(keep.Bytes())
		return err
	})
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// floatBytes is a as little-endian float32 bytes: a's own memory on little-endian
// machines (no copy), a converted copy elsewhere.
func floatBytes(a []float32) []byte {
	if len(a) == 0 {
		return nil
	}
	if littleEndian {
		return unsafe.Slice((*byte)(unsafe.Pointer(&a[0])), 4*len(a))
	}
	b := make([]byte, 4*len(a))
	for i, v := range a {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}

// readFloats fills a from little-endian float32s, in place.
func readFloats(r io.Reader, a []float32) error {
	if !littleEndian || len(a) == 0 {
		return binary.Read(r, binary.LittleEndian, a)
	}
	_, err := io.ReadFull(r, unsafe.Slice((*byte)(unsafe.Pointer(&a[0])), 4*len(a)))
	return err
}

// littleEndian is whether float32s in memory are laid out as the checkpoint stores them.
var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1
