package pipeline

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"ortalign/internal/atomicfile"
)

// checkpointMagic starts every checkpoint file.
const checkpointMagic = "ORTALIGN-CHECKPOINT-1\n"

// checkpointHeader describes the float32 arrays that follow it: the parameters, then
// (AdamW) the first and second moments, each in Names order.
type checkpointHeader struct {
	Step      int      `json:"step"`
	Optimizer string   `json:"optimizer"`
	Names     []string `json:"names"`
	Sizes     []int    `json:"sizes"`
	Moments   bool     `json:"moments"`
}

// saveCheckpoint writes parameters and optimizer state atomically (see
// internal/atomicfile), so an interruption leaves the previous checkpoint intact.
func (t *Trainer) saveCheckpoint(path string) error {
	h := checkpointHeader{Step: t.opt.Step, Optimizer: t.cfg.Optim.Name, Names: t.names, Moments: t.opt.M != nil}
	for _, p := range t.params {
		h.Sizes = append(h.Sizes, len(p))
	}
	hdr, err := json.Marshal(h)
	if err != nil {
		return err
	}
	arrays := slices.Clone(t.params)
	if h.Moments {
		arrays = append(append(arrays, t.opt.M...), t.opt.V...)
	}
	err = atomicfile.WriteFile(path, func(w io.Writer) error {
		if _, err := io.WriteString(w, checkpointMagic); err != nil {
			return err
		}
		if err := binary.Write(w, binary.LittleEndian, uint64(len(hdr))); err != nil {
			return err
		}
		if _, err := w.Write(hdr); err != nil {
			return err
		}
		for _, a := range arrays {
			if err := binary.Write(w, binary.LittleEndian, a); err != nil {
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

// loadCheckpoint restores state from path; it reports false when there is none. A
// checkpoint of another model or optimizer is an error, not silently ignored.
func (t *Trainer) loadCheckpoint(path string) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("checkpoint %s: %w", path, err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	magic := make([]byte, len(checkpointMagic))
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != checkpointMagic {
		return false, fmt.Errorf("checkpoint %s: not an ortalign checkpoint", path)
	}
	var n uint64
	if err := binary.Read(r, binary.LittleEndian, &n); err != nil || n > 1<<30 {
		return false, fmt.Errorf("checkpoint %s: bad header", path)
	}
	hdr := make([]byte, n)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return false, fmt.Errorf("checkpoint %s: truncated header", path)
	}
	var h checkpointHeader
	if err := json.Unmarshal(hdr, &h); err != nil {
		return false, fmt.Errorf("checkpoint %s: %w", path, err)
	}
	if h.Optimizer != t.cfg.Optim.Name || !slices.Equal(h.Names, t.names) || h.Moments != (t.opt.M != nil) {
		return false, fmt.Errorf("checkpoint %s was written for another model or optimizer (%s, %d tensors); remove it or use another --out", path, h.Optimizer, len(h.Names))
	}
	for i, p := range t.params {
		if h.Sizes[i] != len(p) {
			return false, fmt.Errorf("checkpoint %s: tensor %q has %d values, the model %d", path, t.names[i], h.Sizes[i], len(p))
		}
	}
	arrays := slices.Clone(t.params)
	if h.Moments {
		arrays = append(append(arrays, t.opt.M...), t.opt.V...)
	}
	for _, a := range arrays {
		if err := binary.Read(r, binary.LittleEndian, a); err != nil {
			return false, fmt.Errorf("checkpoint %s: truncated data: %w", path, err)
		}
	}
	t.opt.Step = h.Step
	return true, nil
}
