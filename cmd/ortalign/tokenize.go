package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"ortalign/internal/atomicfile"
	"ortalign/tokenize"
)

// tokenizeOptions are the flags of `ortalign tokenize`.
type tokenizeOptions struct {
	tokenizer, input, output string
	addSpecial, decode       bool
	skipSpecial              bool
}

// newTokenizeCmd builds the command; runF replaces runTokenize in tests of flag parsing.
func newTokenizeCmd(runF func(*tokenizeOptions) error) *cobra.Command {
	o := &tokenizeOptions{}
	cmd := &cobra.Command{
		Use:   "tokenize --tokenizer tokenizer.json [--input texts.jsonl] [--output ids.jsonl]",
		Short: "Encode JSON lines of text to token ids (or decode ids with --decode)",
		Long: `tokenize reads JSON lines with a "text" field and writes JSON lines with "ids", in
the same order; with --decode it reads "ids" and writes "text". Standard input and output
by default. Use it to check a tokenizer against HuggingFace's before training.`,
		Example: `  echo '{"text": "Hello world"}' | ortalign tokenize --tokenizer tokenizer.json
  ortalign tokenize --tokenizer tokenizer.json --input ids.jsonl --decode`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if runF != nil {
				return runF(o)
			}
			return runTokenize(o, cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.tokenizer, "tokenizer", "", "HuggingFace tokenizer.json (or a directory holding one)")
	f.StringVar(&o.input, "input", "", "input JSON lines (default: standard input)")
	f.StringVar(&o.output, "output", "", "output JSON lines (default: standard output)")
	f.BoolVar(&o.addSpecial, "add-special-tokens", false, "let the post-processor add special tokens (e.g. BOS)")
	f.BoolVar(&o.decode, "decode", false, "decode ids to text instead")
	f.BoolVar(&o.skipSpecial, "skip-special-tokens", false, "with --decode: drop special tokens from the text")
	_ = cmd.MarkFlagRequired("tokenizer")
	return cmd
}

func runTokenize(o *tokenizeOptions, stdin io.Reader, stdout io.Writer) (err error) {
	tok, err := tokenize.Load(o.tokenizer)
	if err != nil {
		return err
	}
	in, inName := stdin, "standard input"
	if o.input != "" {
		f, err := os.Open(o.input)
		if err != nil {
			return err
		}
		defer f.Close()
		in, inName = f, o.input
	}
	bw := bufio.NewWriter(stdout)
	var w io.Writer = bw
	var file *atomicfile.File
	if o.output != "" {
		// Written atomically, so a failure leaves no partial file (and keeps an old one).
		if file, err = atomicfile.Create(o.output); err != nil {
			return err
		}
		defer file.Abort()
		w = file // buffered itself
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<30)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	for line := 1; sc.Scan(); line++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var rec struct {
			Text *string `json:"text"`
			IDs  []int   `json:"ids"`
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return fmt.Errorf("%s: line %d: %w", inName, line, err)
		}
		if o.decode {
			if rec.IDs == nil {
				return fmt.Errorf("%s: line %d: no \"ids\" field", inName, line)
			}
			text, err := tok.Decode(rec.IDs, o.skipSpecial)
			if err != nil {
				return fmt.Errorf("%s: line %d: %w", inName, line, err)
			}
			err = enc.Encode(struct {
				Text string `json:"text"`
			}{text})
			if err != nil {
				return err
			}
			continue
		}
		if rec.Text == nil {
			return fmt.Errorf("%s: line %d: no \"text\" field", inName, line)
		}
		ids, err := tok.Encode(*rec.Text, o.addSpecial)
		if err != nil {
			return fmt.Errorf("%s: line %d: %w", inName, line, err)
		}
		if ids == nil {
			ids = []int{}
		}
		if err := enc.Encode(struct {
			IDs []int `json:"ids"`
		}{ids}); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", inName, err)
	}
	if file != nil {
		return file.Commit()
	}
	return bw.Flush()
}
