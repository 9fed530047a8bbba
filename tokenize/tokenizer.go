package tokenize

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"unicode/utf8"
)

// Tokenizer encodes text to ids and decodes ids to text as described by a HuggingFace
// tokenizer.json file. It is safe for concurrent use.
type Tokenizer struct {
	name     string
	norm     normalizer
	pre      preTokenizer
	rawWords bool // the model maps words to the byte-level alphabet itself
	model    model
	post     postProcessor
	dec      decoder
	added    *addedVocab
	maxID    int

	bos, eos, pad, unk string
	chat               *chatTemplate // nil without a chat template (see chat.go)
}

// Load reads a tokenizer.json file. path may also name a directory holding tokenizer.json.
// tokenizer_config.json and special_tokens_map.json beside the file, when present, give the
// special tokens (see BOS, EOS, PAD); chat_template.jinja or tokenizer_config.json's
// chat_template gives the chat template (see ApplyChatTemplate).
func Load(path string) (*Tokenizer, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, "tokenizer.json")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenize: %w", err)
	}
	t, err := loadBytes(data, path)
	if err != nil {
		return nil, err
	}
	if err := t.readSpecialConfig(filepath.Dir(path)); err != nil {
		return nil, err
	}
	if err := t.readChatTemplate(filepath.Dir(path)); err != nil {
		return nil, err
	}
	return t, nil
}

// LoadBytes parses the contents of a tokenizer.json file. Special tokens are inferred from
// the file alone (post-processor template and added tokens).
func LoadBytes(data []byte) (*Tokenizer, error) {
	t, err := loadBytes(data, "tokenizer.json")
	if err != nil {
		return nil, err
	}
	t.inferSpecial()
	return t, nil
}

func loadBytes(data []byte, name string) (t *Tokenizer, err error) {
	defer func() {
		if r := recover(); r != nil { // defensive: a bug must not crash the caller
			t, err = nil, fmt.Errorf("%s: internal error while loading: %v", name, r)
		}
	}()
	var f fileJSON
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%s: malformed JSON: %s", name, jsonErr(err))
	}
	wrap := func(err error) error { return fmt.Errorf("%s: %w", name, err) }
	t = &Tokenizer{name: name}
	if t.model, err = parseModel(f.Model, "model"); err != nil {
		return nil, wrap(err)
	}
	if t.norm, err = parseNormalizer(f.Normalizer, "normalizer"); err != nil {
		return nil, wrap(err)
	}
	if t.pre, err = parsePreTokenizer(f.PreTokenizer, "pre_tokenizer", true); err != nil {
		return nil, wrap(err)
	}
	t.rawWords = endsWithDeferredByteLevel(t.pre)
	if t.dec, err = parseDecoder(f.Decoder, "decoder"); err != nil {
		return nil, wrap(err)
	}
	for i, a := range f.AddedTokens {
		if a.Content == "" {
			return nil, wrap(fmt.Errorf("added_tokens[%d]: empty content", i))
		}
	}
	t.added = buildAddedVocab(f.AddedTokens, t.model, t.norm)
	if t.post, err = parsePost(f.PostProcessor, "post_processor", t.TokenToID); err != nil {
		return nil, wrap(err)
	}
	t.maxID = t.model.maxID()
	for id := range t.added.byID {
		t.maxID = max(t.maxID, id)
	}
	return t, nil
}

func endsWithDeferredByteLevel(p preTokenizer) bool {
	switch p := p.(type) {
	case *byteLevelPre:
		return !p.mapNow
	case sequencePre:
		return len(p) > 0 && endsWithDeferredByteLevel(p[len(p)-1])
	}
	return false
}

// Encode returns the ids of text. With addSpecialTokens the post-processor adds its special
// tokens (e.g. BOS), as HuggingFace's encode(text, add_special_tokens=True). Invalid UTF-8
// bytes are read as U+FFFD.
func (t *Tokenizer) Encode(text string, addSpecialTokens bool) ([]int, error) {
	ids := t.encode(nil, text)
	if addSpecialTokens && t.post != nil {
		ids = t.post.process(ids)
	}
	return ids, nil
}

func (t *Tokenizer) encode(dst []int, text string) []int {
	if !utf8.ValidString(text) {
		text = validUTF8(text)
	}
	var buf1, buf2, buf3 [16]segment
	segs := t.added.split(buf1[:0], t.added.raw, text, true)
	words := buf3[:0]
	for _, sg := range segs {
		if sg.id >= 0 {
			dst = append(dst, sg.id)
			continue
		}
		s := sg.s
		if t.norm != nil {
			s = t.norm.normalize(s)
		}
		if s == "" {
			continue
		}
		sub := t.added.split(buf2[:0], t.added.norm, s, sg.first)
		for _, x := range sub {
			if x.id >= 0 {
				dst = append(dst, x.id)
				continue
			}
			if t.pre == nil {
				dst = t.model.appendIDs(dst, x.s, false)
				continue
			}
			words = t.pre.appendSplits(words[:0], x)
			for _, w := range words {
				dst = t.model.appendIDs(dst, w.s, t.rawWords)
			}
		}
	}
	return dst
}

// validUTF8 replaces every invalid byte of s by U+FFFD.
func validUTF8(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		b.WriteRune(r)
		i += n
	}
	return b.String()
}

// EncodeBatch encodes texts in parallel (one worker per CPU); the result is in input order.
func (t *Tokenizer) EncodeBatch(texts []string, addSpecialTokens bool) ([][]int, error) {
	out := make([][]int, len(texts))
	workers := min(runtime.GOMAXPROCS(0), len(texts))
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	next := 0
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= len(texts) {
					return
				}
				ids, err := t.Encode(texts[i], addSpecialTokens)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("text %d: %w", i, err)
					}
					mu.Unlock()
				}
				out[i] = ids
			}
		}()
	}
	wg.Wait()
	return out, firstErr
}

// Decode turns ids back into text with the file's decoder. With skipSpecialTokens the
// special added tokens are left out. Ids unknown to the tokenizer are skipped, as
// HuggingFace does.
func (t *Tokenizer) Decode(ids []int, skipSpecialTokens bool) (string, error) {
	tokens := make([]string, 0, len(ids))
	for _, id := range ids {
		tok, ok := t.IDToToken(id)
		if !ok {
			continue
		}
		if skipSpecialTokens && t.added.special[tok] {
			continue
		}
		tokens = append(tokens, tok)
	}
	if t.dec == nil {
		return strings.Join(tokens, " "), nil
	}
	return strings.Join(t.dec.decodeChain(tokens), ""), nil
}

// VocabSize is the largest id of the vocabulary and the added tokens, plus one: the size an
// embedding matrix needs.
func (t *Tokenizer) VocabSize() int { return t.maxID + 1 }

// TokenToID returns the id of a token (an added token or a vocabulary entry).
func (t *Tokenizer) TokenToID(tok string) (int, bool) {
	if id, ok := t.added.byContent[tok]; ok {
		return id, true
	}
	return t.model.tokenToID(tok)
}

// IDToToken returns the token string of an id.
func (t *Tokenizer) IDToToken(id int) (string, bool) {
	if a, ok := t.added.byID[id]; ok {
		return a.Content, true
	}
	return t.model.idToToken(id)
}

// AddedTokens returns the added tokens with the ids the tokenizer uses.
func (t *Tokenizer) AddedTokens() []AddedToken {
	out := make([]AddedToken, 0, len(t.added.ordered))
	for _, a := range t.added.ordered {
		out = append(out, *a)
	}
	return out
}

// IsSpecial tells whether tok is a special added token (those Decode can skip).
func (t *Tokenizer) IsSpecial(tok string) bool { return t.added.special[tok] }

func (t *Tokenizer) specialID(tok string) (int, bool) {
	if tok == "" {
		return 0, false
	}
	return t.TokenToID(tok)
}

// BOS returns the id of the beginning-of-sequence token, if the tokenizer has one.
func (t *Tokenizer) BOS() (int, bool) { return t.specialID(t.bos) }

// EOS returns the id of the end-of-sequence token, if the tokenizer has one.
func (t *Tokenizer) EOS() (int, bool) { return t.specialID(t.eos) }

// PAD returns the id of the padding token, if the tokenizer has one.
func (t *Tokenizer) PAD() (int, bool) { return t.specialID(t.pad) }

// BOSToken returns the text of the beginning-of-sequence token ("" if none).
func (t *Tokenizer) BOSToken() string { return t.bos }

// EOSToken returns the text of the end-of-sequence token ("" if none).
func (t *Tokenizer) EOSToken() string { return t.eos }

// PADToken returns the text of the padding token ("" if none).
func (t *Tokenizer) PADToken() string { return t.pad }

// UNKToken returns the text of the unknown token named by tokenizer_config.json or
// special_tokens_map.json ("" if none).
func (t *Tokenizer) UNKToken() string { return t.unk }

// readSpecialConfig reads the special tokens from tokenizer_config.json, then
// special_tokens_map.json, in dir; what neither names is inferred from tokenizer.json.
func (t *Tokenizer) readSpecialConfig(dir string) error {
	for _, name := range []string{"tokenizer_config.json", "special_tokens_map.json"} {
		p := filepath.Join(dir, name)
		data, err := os.ReadFile(p)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("tokenize: %w", err)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(data, &m); err != nil {
			return fmt.Errorf("%s: malformed JSON: %s", p, jsonErr(err))
		}
		for _, f := range []struct {
			key string
			dst *string
		}{{"bos_token", &t.bos}, {"eos_token", &t.eos}, {"pad_token", &t.pad}, {"unk_token", &t.unk}} {
			raw, ok := m[f.key]
			if !ok || *f.dst != "" {
				continue
			}
			s, err := specialTokenText(raw)
			if err != nil {
				return fmt.Errorf("%s: %s: %v", p, f.key, err)
			}
			*f.dst = s
		}
	}
	t.inferSpecial()
	return nil
}

// specialTokenText reads "tok", null, or {"content": "tok", ...}.
func specialTokenText(raw json.RawMessage) (string, error) {
	if isNull(raw) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var o struct {
		Content *string `json:"content"`
	}
	if err := json.Unmarshal(raw, &o); err != nil || o.Content == nil {
		return "", fmt.Errorf("want a string or an object with \"content\"")
	}
	return *o.Content, nil
}

// Common names of special tokens, tried in order when no config file names them.
var (
	bosNames = []string{"<|begin_of_text|>", "<|bos|>", "<bos>", "<s>", "<|startoftext|>", "[CLS]"}
	eosNames = []string{"<|end_of_text|>", "<|eos|>", "<eos>", "</s>", "<|endoftext|>", "[SEP]"}
	padNames = []string{"<pad>", "[PAD]", "<|pad|>", "<|finetune_right_pad_id|>"}
)

// inferSpecial fills in the special tokens that no config file named: from the
// post-processor's template, then from well-known names among the special added tokens.
func (t *Tokenizer) inferSpecial() {
	if tp := findTemplate(t.post); tp != nil {
		if t.bos == "" {
			t.bos = tp.bos
		}
		if t.eos == "" {
			t.eos = tp.eos
		}
	}
	pick := func(dst *string, names []string) {
		if *dst != "" {
			return
		}
		for _, n := range names {
			if t.added.special[n] {
				*dst = n
				return
			}
		}
	}
	pick(&t.bos, bosNames)
	pick(&t.eos, eosNames)
	pick(&t.pad, padNames)
}

func findTemplate(p postProcessor) *templatePost {
	switch p := p.(type) {
	case *templatePost:
		return p
	case sequencePost:
		for _, x := range p {
			if tp := findTemplate(x); tp != nil {
				return tp
			}
		}
	}
	return nil
}
