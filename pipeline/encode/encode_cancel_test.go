package encode

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"ortalign/data"
	"ortalign/tokenize"
)

// countdown is a context cancelled by its own Err: the first `left` calls report it
// live, every later one canceled — a Ctrl-C that lands at a chosen point of the work
// (inside a template's rendering, which checks its context as it goes).
type countdown struct {
	context.Context
	mu    sync.Mutex
	left  int
	calls int
	done  chan struct{}
}

func newCountdown(left int) *countdown {
	return &countdown{Context: context.Background(), left: left, done: make(chan struct{})}
}

func (c *countdown) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if c.calls <= c.left {
		return nil
	}
	if c.calls == c.left+1 {
		close(c.done)
	}
	return context.Canceled
}

func (c *countdown) Done() <-chan struct{} { return c.done }

// loopTemplate renders forever, as far as a caller can tell: ten billion iterations
// (the sandbox's step budget would end it; cancellation must end it first).
const loopTemplate = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"

// TestEncodeStopsOnCancel: reading and encoding every kind of dataset stop with the
// context's error once it is cancelled — between row groups, between rows, and inside
// a chat template's rendering (a template that would run for its whole step budget stops
// within the few steps after the cancellation) — for pairs, SFT sequences, messages and
// prompts.
func TestEncodeStopsOnCancel(t *testing.T) {
	tok, err := tokenize.Load(chatTokenizerDir(t, loopTemplate))
	if err != nil {
		t.Fatal(err)
	}
	plain, err := tokenize.Load(chatTokenizerDir(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	dir := "../../data/testdata"
	pairs := func(ctx context.Context, path string, tok *tokenize.Tokenizer) error {
		_, err := LoadPairsContext(ctx, path, DataOptions{Tokenizer: tok})
		return err
	}
	seqs := func(ctx context.Context, path string, tok *tokenize.Tokenizer) error {
		_, err := LoadSequencesContext(ctx, path, DataOptions{Tokenizer: tok})
		return err
	}
	prompts := func(ctx context.Context, path string, tok *tokenize.Tokenizer) error {
		_, err := LoadPromptsContext(ctx, path, DataOptions{Tokenizer: tok})
		return err
	}
	for _, c := range []struct {
		name string
		file string
		load func(context.Context, string, *tokenize.Tokenizer) error
	}{
		{"pairs", "duckdb_ultrafeedback.parquet", pairs},
		{"sft conversations", "duckdb_sft_conv_pc.parquet", seqs},
		{"sft messages", "duckdb_sft_messages.parquet", seqs},
		{"prompts", "duckdb_prompts_conv.jsonl", prompts},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, c.file)
			// Cancelled before: nothing is read.
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			if err := c.load(ctx, path, tok); !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled before loading: got %v, want context.Canceled", err)
			}
			// Cancelled inside the first render: 100 checks in, of millions.
			cd := newCountdown(100)
			if err := c.load(cd, path, tok); !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled while rendering: got %v, want context.Canceled", err)
			}
			if cd.calls > 1000 {
				t.Fatalf("the context was checked %d times: the render went on after it was cancelled", cd.calls)
			}
			// Without the cancellation the template is an error of its own, the sandbox's
			// step budget (so the one above was stopped by the context, not by it).
			if c.name != "pairs" {
				return // seconds of rendering each
			}
			if err := c.load(context.Background(), path, tok); err == nil || errors.Is(err, context.Canceled) || !errors.Is(err, tokenize.ErrTemplateLimit) {
				t.Fatalf("uncancelled: got %v, want the template's step budget", err)
			}
		})
	}
	// Plain text rows stop between rows: the third row's check is the one cancelled.
	cd := newCountdown(3)
	_, err = LoadPairsContext(cd, filepath.Join(dir, "duckdb_standard.jsonl"), DataOptions{Tokenizer: plain})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("text pairs: got %v, want context.Canceled", err)
	}
	l, err := LoadPairsContext(context.Background(), filepath.Join(dir, "duckdb_standard.jsonl"), DataOptions{Tokenizer: plain})
	if err != nil || len(l.Items) < 3 {
		t.Fatalf("uncancelled text pairs: %v (%d pairs), want more than 3", err, len(l.Items))
	}
	if l.Layout != data.Standard {
		t.Fatalf("layout %v", l.Layout)
	}
}
