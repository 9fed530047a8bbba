package objective

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"ortalign/internal/atomicfile"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
)

// TestCheckpointFlippedByteIsAnError: a checkpoint with any one byte flipped — in its
// prefix, its header, the header's checksum, or anywhere in a tensor section (first,
// middle and last byte, and each byte of the section's checksum) — is an error naming the
// checkpoint file and the section the byte is in; the engine keeps its state (no
// parameter, moment or step restored). The undamaged file resumes.
func TestCheckpointFlippedByteIsAnError(t *testing.T) {
	pairs, pad := enginePairs(t)
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW}, LR: 1e-3, BatchSize: 4, MaxSteps: 2, Seed: 3, Shuffle: true, PadID: pad}
	dir, trained := trainCheckpoint(t, cfg, 0.1, pairs)
	file, err := os.ReadFile(filepath.Join(dir, "checkpoint.bin"))
	if err != nil {
		t.Fatal(err)
	}
	ck := readCheckpointFile(t, filepath.Join(dir, "checkpoint.bin"))
	headerEnd := len(file) - len(ck.data) // magic, length, header and its CRC-32C

	e := newEngine(t, cfg, 0.1)
	src, err := e.Items(pairs)
	if err != nil {
		t.Fatal(err)
	}
	settings := e.RunSettings(src)
	beforeP, beforeM, beforeV := cloneBuffers(e.Params()), cloneBuffers(e.Optimizer().M), cloneBuffers(e.Optimizer().V)
	path := filepath.Join(t.TempDir(), "checkpoint.bin")
	load := func(pos int) error {
		t.Helper()
		b := slices.Clone(file)
		b[pos] ^= 0xff
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		ok, err := e.LoadCheckpoint(path, settings)
		if ok || err == nil {
			t.Fatalf("byte %d of %d flipped: the checkpoint loaded", pos, len(file))
		}
		if !strings.Contains(err.Error(), path) {
			t.Fatalf("byte %d flipped: the error does not name the file: %v", pos, err)
		}
		return err
	}

	// The prefix and the header: the magic is checked exactly; every later byte is in
	// the header, its length or its checksum, and the error says "header".
	for pos := 0; pos < headerEnd; pos++ {
		err := load(pos)
		if pos >= len(ck.magic) && !strings.Contains(err.Error(), "header") {
			t.Fatalf("byte %d (header) flipped: the error does not name the header: %v", pos, err)
		}
	}
	// The tensor sections: parameters, then AdamW's two moments, each a section with
	// its CRC-32C after it.
	arrays := e.StateArrays(true)
	if len(arrays) != 3*len(e.Trainable()) {
		t.Fatalf("%d state arrays for %d tensors", len(arrays), len(e.Trainable()))
	}
	start := headerEnd
	for i, a := range arrays {
		size := 4 * len(a)
		section := e.SectionName(i)
		for _, pos := range []int{start, start + size/2, start + size - 1, start + size, start + size + 1, start + size + 2, start + size + 3} {
			if err := load(pos); !strings.Contains(err.Error(), section) || !strings.Contains(err.Error(), "CRC-32C") {
				t.Fatalf("byte %d (section %s) flipped: want an error naming the section's checksum, got %v", pos, section, err)
			}
		}
		start += size + 4
	}
	if start != len(file) {
		t.Fatalf("sections end at byte %d, the file at %d", start, len(file))
	}
	for i := range e.Params() {
		if !slices.Equal(e.Params()[i], beforeP[i]) || !slices.Equal(e.Optimizer().M[i], beforeM[i]) || !slices.Equal(e.Optimizer().V[i], beforeV[i]) {
			t.Fatalf("a failed load changed the state of %s", e.Trainable()[i])
		}
	}
	if e.Step() != 0 {
		t.Fatalf("a failed load set the step to %d", e.Step())
	}
	// The sections named above are the parameters of the trained model: a flip in the
	// first parameter section is reported as such.
	if want := fmt.Sprintf("parameters of %q", e.Trainable()[0]); !strings.Contains(load(headerEnd+5).Error(), want) {
		t.Fatalf("a flip in the first tensor's weights is not reported as %s", want)
	}

	if err := os.WriteFile(path, file, 0o644); err != nil {
		t.Fatal(err)
	}
	if ok, err := e.LoadCheckpoint(path, settings); !ok || err != nil {
		t.Fatalf("the undamaged checkpoint: loaded %v, %v", ok, err)
	}
	for i := range e.Params() {
		if !slices.Equal(e.Params()[i], trained.Params()[i]) || !slices.Equal(e.Optimizer().V[i], trained.Optimizer().V[i]) {
			t.Fatalf("resumed %s differs from the trained one", e.Trainable()[i])
		}
	}
}

// saveCheckpointV2 is saveCheckpoint as it was before checksums (format version 2),
// kept to test that such checkpoints still load.
func saveCheckpointV2[T any](e *engine.Engine[T], path string, settings map[string]string) error {
	h := engine.CheckpointHeader{Step: e.Optimizer().Step, Optimizer: e.Config().Optim.Name, Names: e.Trainable(), Moments: e.Optimizer().M != nil, Settings: settings, Totals: e.Totals}
	for _, p := range e.Params() {
		h.Sizes = append(h.Sizes, len(p))
	}
	hdr, err := json.Marshal(h)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, func(w io.Writer) error {
		if _, err := io.WriteString(w, "ORTALIGN-CHECKPOINT-2\n"); err != nil {
			return err
		}
		if err := binary.Write(w, binary.LittleEndian, uint64(len(hdr))); err != nil {
			return err
		}
		if _, err := w.Write(hdr); err != nil {
			return err
		}
		for _, a := range e.StateArrays(h.Moments) {
			if err := binary.Write(w, binary.LittleEndian, a); err != nil {
				return err
			}
		}
		return nil
	})
}

// TestCheckpointVersion2StillLoads: a checkpoint in the format before checksums resumes
// as the current one does: the same step and state, and one more step from either gives
// bit-identical parameters. A damaged one is still an error where its size shows it.
func TestCheckpointVersion2StillLoads(t *testing.T) {
	pairs, pad := enginePairs(t)
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW}, LR: 1e-3, BatchSize: 4, MaxSteps: 2, Seed: 3, Shuffle: true, PadID: pad}
	dir, trained := trainCheckpoint(t, cfg, 0.1, pairs)
	src, err := trained.Items(pairs)
	if err != nil {
		t.Fatal(err)
	}
	v2 := filepath.Join(t.TempDir(), "checkpoint.bin")
	if err := saveCheckpointV2(trained, v2, trained.RunSettings(src)); err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile(v2)
	if err != nil {
		t.Fatal(err)
	}
	current, err := os.ReadFile(filepath.Join(dir, "checkpoint.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(old, []byte("ORTALIGN-CHECKPOINT-2\n")) || !bytes.HasPrefix(current, []byte(engine.CheckpointMagic)) || len(current) != len(old)+4*(1+len(trained.StateArrays(true))) {
		t.Fatalf("version 2 file of %d bytes, version 3 of %d: want 4 bytes more per section", len(old), len(current))
	}

	resume := func(t *testing.T, file []byte) *engine.Engine[encode.EncodedPair] {
		t.Helper()
		path := filepath.Join(t.TempDir(), "checkpoint.bin")
		if err := os.WriteFile(path, file, 0o644); err != nil {
			t.Fatal(err)
		}
		e := newEngine(t, cfg, 0.1)
		if err := trainNoPanic(e, pairs, engine.RunConfig[encode.EncodedPair]{Checkpoint: path}); err != nil {
			t.Fatal(err)
		}
		if e.Step() != 2 {
			t.Fatalf("resumed at step %d, want 2", e.Step())
		}
		for i := range e.Params() {
			if !slices.Equal(e.Params()[i], trained.Params()[i]) || !slices.Equal(e.Optimizer().M[i], trained.Optimizer().M[i]) || !slices.Equal(e.Optimizer().V[i], trained.Optimizer().V[i]) {
				t.Fatalf("resumed %s differs from the trained one", e.Trainable()[i])
			}
		}
		return e
	}
	a, b := resume(t, old), resume(t, current)
	for _, e := range []*engine.Engine[encode.EncodedPair]{a, b} {
		if _, err := e.StepOn([][]encode.EncodedPair{pairs[:4]}, cfg.LR); err != nil {
			t.Fatal(err)
		}
	}
	for i := range a.Params() {
		if !slices.Equal(a.Params()[i], b.Params()[i]) {
			t.Fatalf("a step after resuming from version 2 and from version 3 differs in %s", a.Trainable()[i])
		}
	}

	e := newEngine(t, cfg, 0.1)
	path := filepath.Join(t.TempDir(), "checkpoint.bin")
	if err := os.WriteFile(path, old[:len(old)-1], 0o644); err != nil {
		t.Fatal(err)
	}
	if err := trainNoPanic(e, pairs, engine.RunConfig[encode.EncodedPair]{Checkpoint: path}); err == nil || !strings.Contains(err.Error(), "holds") || !strings.Contains(err.Error(), path) {
		t.Fatalf("truncated version 2 checkpoint: %v", err)
	}
}
