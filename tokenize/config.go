package tokenize

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
	"golang.org/x/text/unicode/norm"
)

// fileJSON is the top level of a tokenizer.json file.
type fileJSON struct {
	Version       string          `json:"version"`
	AddedTokens   []AddedToken    `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Decoder       json.RawMessage `json:"decoder"`
	Model         json.RawMessage `json:"model"`
}

// obj is one JSON object of a component, with the path used in error messages.
type obj struct {
	path string
	m    map[string]json.RawMessage
}

func isNull(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || bytes.Equal(t, []byte("null"))
}

func parseObj(raw json.RawMessage, path string) (obj, error) {
	o := obj{path: path}
	if err := json.Unmarshal(raw, &o.m); err != nil {
		return o, fmt.Errorf("%s: not a JSON object: %v", path, jsonErr(err))
	}
	return o, nil
}

func jsonErr(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("%v (at byte %d)", se, se.Offset)
	}
	return err.Error()
}

func (o obj) typ() (string, error) {
	var t string
	raw, ok := o.m["type"]
	if !ok {
		return "", fmt.Errorf("%s: missing \"type\"", o.path)
	}
	if err := json.Unmarshal(raw, &t); err != nil {
		return "", fmt.Errorf("%s.type: %v", o.path, err)
	}
	return t, nil
}

func (o obj) has(key string) bool { raw, ok := o.m[key]; return ok && !isNull(raw) }

// get decodes key into v when present and not null; missing keys leave v unchanged.
func (o obj) get(key string, v any) error {
	raw, ok := o.m[key]
	if !ok || isNull(raw) {
		return nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("%s.%s: %v", o.path, key, err)
	}
	return nil
}

func (o obj) unsupported(t string) error {
	return fmt.Errorf("%s: unsupported type %q", o.path, t)
}

// pattern is HuggingFace's {"String": s} or {"Regex": r}.
type patternJSON struct {
	String *string `json:"String"`
	Regex  *string `json:"Regex"`
}

func (o obj) pattern(key string) (lit string, re *regexp2.Regexp, src string, err error) {
	var p patternJSON
	if err := o.get(key, &p); err != nil {
		return "", nil, "", err
	}
	switch {
	case p.String != nil:
		return *p.String, nil, "", nil
	case p.Regex != nil:
		re, err := compileRegex(*p.Regex)
		if err != nil {
			return "", nil, "", fmt.Errorf("%s.%s: bad regex %q: %v", o.path, key, *p.Regex, err)
		}
		return "", re, *p.Regex, nil
	}
	return "", nil, "", fmt.Errorf("%s.%s: want {\"String\": ...} or {\"Regex\": ...}", o.path, key)
}

func compileRegex(src string) (*regexp2.Regexp, error) {
	re, err := regexp2.Compile(src, regexp2.None)
	if err != nil {
		return nil, err
	}
	re.MatchTimeout = math.MaxInt64
	return re, nil
}

func parseNormalizer(raw json.RawMessage, path string) (normalizer, error) {
	if isNull(raw) {
		return nil, nil
	}
	o, err := parseObj(raw, path)
	if err != nil {
		return nil, err
	}
	t, err := o.typ()
	if err != nil {
		return nil, err
	}
	switch t {
	case "NFC":
		return unicodeNorm{norm.NFC}, nil
	case "NFD":
		return unicodeNorm{norm.NFD}, nil
	case "NFKC":
		return unicodeNorm{norm.NFKC}, nil
	case "NFKD":
		return unicodeNorm{norm.NFKD}, nil
	case "Lowercase":
		return lowercaseNorm{}, nil
	case "StripAccents":
		return stripAccentsNorm{}, nil
	case "Nmt":
		return nmtNorm{}, nil
	case "Strip":
		n := stripNorm{left: true, right: true}
		if err := o.get("strip_left", &n.left); err != nil {
			return nil, err
		}
		if err := o.get("strip_right", &n.right); err != nil {
			return nil, err
		}
		return n, nil
	case "Prepend":
		var p string
		if err := o.get("prepend", &p); err != nil {
			return nil, err
		}
		return prependNorm{p}, nil
	case "Replace":
		lit, re, _, err := o.pattern("pattern")
		if err != nil {
			return nil, err
		}
		var content string
		if err := o.get("content", &content); err != nil {
			return nil, err
		}
		return replaceNorm{lit: lit, re: re, content: content}, nil
	case "BertNormalizer":
		n := bertNorm{cleanText: true, chinese: true, lowercase: true}
		var strip *bool
		for _, kv := range []struct {
			k string
			v any
		}{{"clean_text", &n.cleanText}, {"handle_chinese_chars", &n.chinese}, {"lowercase", &n.lowercase}, {"strip_accents", &strip}} {
			if err := o.get(kv.k, kv.v); err != nil {
				return nil, err
			}
		}
		n.stripAccents = n.lowercase
		if strip != nil {
			n.stripAccents = *strip
		}
		return n, nil
	case "Precompiled":
		return parsePrecompiled(o)
	case "Sequence":
		var list []json.RawMessage
		if err := o.get("normalizers", &list); err != nil {
			return nil, err
		}
		seq := sequenceNorm{}
		for i, r := range list {
			n, err := parseNormalizer(r, fmt.Sprintf("%s.normalizers[%d]", path, i))
			if err != nil {
				return nil, err
			}
			if n != nil {
				seq = append(seq, n)
			}
		}
		return seq, nil
	}
	return nil, o.unsupported(t)
}

// parsePreTokenizer parses a pre-tokenizer; last tells that nothing follows it, so a
// ByteLevel pre-tokenizer may leave the byte mapping to the model.
func parsePreTokenizer(raw json.RawMessage, path string, last bool) (preTokenizer, error) {
	if isNull(raw) {
		return nil, nil
	}
	o, err := parseObj(raw, path)
	if err != nil {
		return nil, err
	}
	t, err := o.typ()
	if err != nil {
		return nil, err
	}
	switch t {
	case "ByteLevel":
		p := &byteLevelPre{addPrefixSpace: true, useRegex: true, mapNow: !last}
		if err := o.get("add_prefix_space", &p.addPrefixSpace); err != nil {
			return nil, err
		}
		if err := o.get("use_regex", &p.useRegex); err != nil {
			return nil, err
		}
		return p, nil
	case "Split":
		lit, re, src, err := o.pattern("pattern")
		if err != nil {
			return nil, err
		}
		p := &splitPre{}
		var beh string
		if err := o.get("behavior", &beh); err != nil {
			return nil, err
		}
		b, ok := behaviorNames[beh]
		if !ok {
			return nil, fmt.Errorf("%s.behavior: unsupported %q", path, beh)
		}
		p.behavior = b
		if err := o.get("invert", &p.invert); err != nil {
			return nil, err
		}
		if re == nil {
			p.m = literalMatcher(lit)
		} else if sc, ok := knownScanners[src]; ok {
			p.m = scanMatcher(sc)
			if (p.behavior == behIsolated && !p.invert) || (p.behavior == behRemoved && p.invert) {
				p.partition = sc
			}
		} else {
			p.m = regexMatcher{re}
		}
		return p, nil
	case "Punctuation":
		beh := "Isolated"
		if err := o.get("behavior", &beh); err != nil {
			return nil, err
		}
		b, ok := behaviorNames[beh]
		if !ok {
			return nil, fmt.Errorf("%s.behavior: unsupported %q", path, beh)
		}
		return &splitPre{m: runeMatcher(isBertPunct), behavior: b}, nil
	case "Digits":
		individual := false
		if err := o.get("individual_digits", &individual); err != nil {
			return nil, err
		}
		b := behContiguous
		if individual {
			b = behIsolated
		}
		return &splitPre{m: runeMatcher(isNumeric), behavior: b}, nil
	case "WhitespaceSplit":
		return &splitPre{m: runeMatcher(isSpace), behavior: behRemoved}, nil
	case "Whitespace":
		return whitespacePre{}, nil
	case "BertPreTokenizer":
		return sequencePre{
			&splitPre{m: runeMatcher(isSpace), behavior: behRemoved},
			&splitPre{m: runeMatcher(isBertPunct), behavior: behIsolated},
		}, nil
	case "CharDelimiterSplit":
		var d string
		if err := o.get("delimiter", &d); err != nil {
			return nil, err
		}
		if utf8.RuneCountInString(d) != 1 {
			return nil, fmt.Errorf("%s.delimiter: want one character, got %q", path, d)
		}
		dr, _ := utf8.DecodeRuneInString(d)
		return &splitPre{m: runeMatcher(func(r rune) bool { return r == dr }), behavior: behRemoved}, nil
	case "Metaspace":
		return parseMetaspacePre(o)
	case "Sequence":
		var list []json.RawMessage
		if err := o.get("pretokenizers", &list); err != nil {
			return nil, err
		}
		seq := sequencePre{}
		for i, r := range list {
			p, err := parsePreTokenizer(r, fmt.Sprintf("%s.pretokenizers[%d]", path, i), last && i == len(list)-1)
			if err != nil {
				return nil, err
			}
			if p != nil {
				seq = append(seq, p)
			}
		}
		return seq, nil
	}
	return nil, o.unsupported(t)
}

func isSpace(r rune) bool { return unicode.IsSpace(r) }

func isNumeric(r rune) bool { return unicode.IsNumber(r) }

func metaspaceCommon(o obj) (repl string, scheme int, err error) {
	repl = "▁"
	if err := o.get("replacement", &repl); err != nil {
		return "", 0, err
	}
	if utf8.RuneCountInString(repl) != 1 {
		return "", 0, fmt.Errorf("%s.replacement: want one character, got %q", o.path, repl)
	}
	scheme = prependAlways
	if o.has("prepend_scheme") {
		var s string
		if err := o.get("prepend_scheme", &s); err != nil {
			return "", 0, err
		}
		switch s {
		case "always":
			scheme = prependAlways
		case "first":
			scheme = prependFirst
		case "never":
			scheme = prependNever
		default:
			return "", 0, fmt.Errorf("%s.prepend_scheme: unsupported %q", o.path, s)
		}
	} else if o.has("add_prefix_space") {
		add := true
		if err := o.get("add_prefix_space", &add); err != nil {
			return "", 0, err
		}
		if !add {
			scheme = prependNever
		}
	}
	return repl, scheme, nil
}

func parseMetaspacePre(o obj) (preTokenizer, error) {
	repl, scheme, err := metaspaceCommon(o)
	if err != nil {
		return nil, err
	}
	p := &metaspacePre{repl: repl, scheme: scheme, split: true}
	if err := o.get("split", &p.split); err != nil {
		return nil, err
	}
	return p, nil
}

func parseDecoder(raw json.RawMessage, path string) (decoder, error) {
	if isNull(raw) {
		return nil, nil
	}
	o, err := parseObj(raw, path)
	if err != nil {
		return nil, err
	}
	t, err := o.typ()
	if err != nil {
		return nil, err
	}
	switch t {
	case "ByteLevel":
		return byteLevelDec{}, nil
	case "ByteFallback":
		return byteFallbackDec{}, nil
	case "Fuse":
		return fuseDec{}, nil
	case "Metaspace":
		repl, scheme, err := metaspaceCommon(o)
		if err != nil {
			return nil, err
		}
		r, _ := utf8.DecodeRuneInString(repl)
		return metaspaceDec{repl: r, scheme: scheme}, nil
	case "Strip":
		var c string
		var d stripDec
		if err := o.get("content", &c); err != nil {
			return nil, err
		}
		if utf8.RuneCountInString(c) != 1 {
			return nil, fmt.Errorf("%s.content: want one character, got %q", path, c)
		}
		d.content, _ = utf8.DecodeRuneInString(c)
		if err := o.get("start", &d.start); err != nil {
			return nil, err
		}
		if err := o.get("stop", &d.stop); err != nil {
			return nil, err
		}
		return d, nil
	case "Replace":
		lit, re, _, err := o.pattern("pattern")
		if err != nil {
			return nil, err
		}
		var content string
		if err := o.get("content", &content); err != nil {
			return nil, err
		}
		return replaceDec{lit: lit, re: re, content: content}, nil
	case "WordPiece":
		d := wordPieceDec{prefix: "##", cleanup: true}
		if err := o.get("prefix", &d.prefix); err != nil {
			return nil, err
		}
		if err := o.get("cleanup", &d.cleanup); err != nil {
			return nil, err
		}
		return d, nil
	case "BPEDecoder":
		d := bpeDec{suffix: "</w>"}
		if err := o.get("suffix", &d.suffix); err != nil {
			return nil, err
		}
		return d, nil
	case "Sequence":
		var list []json.RawMessage
		if err := o.get("decoders", &list); err != nil {
			return nil, err
		}
		seq := sequenceDec{}
		for i, r := range list {
			d, err := parseDecoder(r, fmt.Sprintf("%s.decoders[%d]", path, i))
			if err != nil {
				return nil, err
			}
			if d != nil {
				seq = append(seq, d)
			}
		}
		return seq, nil
	}
	return nil, o.unsupported(t)
}

// specialJSON is {"id": "<s>", "ids": [1], "tokens": ["<s>"]} of TemplateProcessing.
type specialJSON struct {
	ID     string   `json:"id"`
	IDs    []int    `json:"ids"`
	Tokens []string `json:"tokens"`
}

type templatePieceJSON struct {
	SpecialToken *struct {
		ID string `json:"id"`
	} `json:"SpecialToken"`
	Sequence *struct {
		ID string `json:"id"`
	} `json:"Sequence"`
}

func parsePost(raw json.RawMessage, path string, tokenID func(string) (int, bool)) (postProcessor, error) {
	if isNull(raw) {
		return nil, nil
	}
	o, err := parseObj(raw, path)
	if err != nil {
		return nil, err
	}
	t, err := o.typ()
	if err != nil {
		return nil, err
	}
	switch t {
	case "ByteLevel":
		return noopPost{}, nil
	case "TemplateProcessing":
		var single []templatePieceJSON
		var specials map[string]specialJSON
		if err := o.get("single", &single); err != nil {
			return nil, err
		}
		if err := o.get("special_tokens", &specials); err != nil {
			return nil, err
		}
		p := &templatePost{}
		seen := false
		for i, pc := range single {
			switch {
			case pc.Sequence != nil:
				seen = true
			case pc.SpecialToken != nil:
				sp, ok := specials[pc.SpecialToken.ID]
				if !ok {
					return nil, fmt.Errorf("%s.single[%d]: special token %q is missing from special_tokens", path, i, pc.SpecialToken.ID)
				}
				if seen {
					p.after = append(p.after, sp.IDs...)
					p.eos = pc.SpecialToken.ID
				} else {
					p.before = append(p.before, sp.IDs...)
					if p.bos == "" {
						p.bos = pc.SpecialToken.ID
					}
				}
			default:
				return nil, fmt.Errorf("%s.single[%d]: want SpecialToken or Sequence", path, i)
			}
		}
		return p, nil
	case "BertProcessing", "RobertaProcessing":
		var sep, cls [2]json.RawMessage
		if err := o.get("sep", &sep); err != nil {
			return nil, err
		}
		if err := o.get("cls", &cls); err != nil {
			return nil, err
		}
		var sepTok, clsTok string
		var sepID, clsID int
		if json.Unmarshal(sep[0], &sepTok) != nil || json.Unmarshal(sep[1], &sepID) != nil ||
			json.Unmarshal(cls[0], &clsTok) != nil || json.Unmarshal(cls[1], &clsID) != nil {
			return nil, fmt.Errorf("%s: sep and cls must be [token, id]", path)
		}
		return &templatePost{before: []int{clsID}, after: []int{sepID}, bos: clsTok, eos: sepTok}, nil
	case "Sequence":
		var list []json.RawMessage
		if err := o.get("processors", &list); err != nil {
			return nil, err
		}
		seq := sequencePost{}
		for i, r := range list {
			p, err := parsePost(r, fmt.Sprintf("%s.processors[%d]", path, i), tokenID)
			if err != nil {
				return nil, err
			}
			if p != nil {
				seq = append(seq, p)
			}
		}
		return seq, nil
	}
	return nil, o.unsupported(t)
}

func parseModel(raw json.RawMessage, path string) (model, error) {
	if isNull(raw) {
		return nil, fmt.Errorf("%s: missing", path)
	}
	o, err := parseObj(raw, path)
	if err != nil {
		return nil, err
	}
	t := ""
	if o.has("type") {
		if t, err = o.typ(); err != nil {
			return nil, err
		}
	} else {
		// Old files have no type: infer it like HuggingFace's untagged deserializer.
		switch {
		case o.has("merges"):
			t = "BPE"
		case bytes.HasPrefix(bytes.TrimSpace(o.m["vocab"]), []byte("[")):
			t = "Unigram"
		case o.has("max_input_chars_per_word"):
			t = "WordPiece"
		default:
			t = "WordLevel"
		}
	}
	switch t {
	case "BPE":
		return parseBPE(o)
	case "WordPiece":
		return parseWordPiece(o)
	case "WordLevel":
		return parseWordLevel(o)
	case "Unigram":
		return parseUnigram(o)
	}
	return nil, o.unsupported(t)
}

func parseBPE(o obj) (model, error) {
	var dropout *float64
	if err := o.get("dropout", &dropout); err != nil {
		return nil, err
	}
	if dropout != nil && *dropout != 0 {
		return nil, fmt.Errorf("%s.dropout: %v is not supported (BPE dropout is random; set it to null)", o.path, *dropout)
	}
	var vocab map[string]int
	if err := o.get("vocab", &vocab); err != nil {
		return nil, err
	}
	v, err := newVocabulary(vocab)
	if err != nil {
		return nil, fmt.Errorf("%s.vocab: %v", o.path, err)
	}
	m := &bpeModel{vocabulary: v, unk: -1}
	var unk *string
	for _, kv := range []struct {
		k string
		v any
	}{{"unk_token", &unk}, {"fuse_unk", &m.fuseUnk}, {"byte_fallback", &m.byteFallback}, {"ignore_merges", &m.ignoreMerges},
		{"continuing_subword_prefix", &m.prefix}, {"end_of_word_suffix", &m.suffix}} {
		if err := o.get(kv.k, kv.v); err != nil {
			return nil, err
		}
	}
	if unk != nil {
		id, ok := v.ids[*unk]
		if !ok {
			return nil, fmt.Errorf("%s.unk_token: %q is not in the vocabulary", o.path, *unk)
		}
		m.unk = id
	}
	merges, err := parseMerges(o)
	if err != nil {
		return nil, err
	}
	if err := m.buildMerges(merges); err != nil {
		return nil, fmt.Errorf("%s.%v", o.path, err)
	}
	m.init()
	return m, nil
}

// parseMerges reads merges written as "a b" strings or as [a, b] pairs.
func parseMerges(o obj) ([][2]string, error) {
	raw := o.m["merges"]
	if isNull(raw) {
		return nil, nil
	}
	var asStrings []string
	if err := json.Unmarshal(raw, &asStrings); err == nil {
		out := make([][2]string, len(asStrings))
		for i, s := range asStrings {
			a, b, ok := strings.Cut(s, " ")
			if !ok {
				return nil, fmt.Errorf("%s.merges[%d]: %q is not two tokens separated by a space", o.path, i, s)
			}
			out[i] = [2]string{a, b}
		}
		return out, nil
	}
	var pairs [][]string
	if err := json.Unmarshal(raw, &pairs); err != nil {
		return nil, fmt.Errorf("%s.merges: want a list of \"a b\" strings or [a, b] pairs", o.path)
	}
	out := make([][2]string, len(pairs))
	for i, p := range pairs {
		if len(p) != 2 {
			return nil, fmt.Errorf("%s.merges[%d]: want 2 tokens, got %d", o.path, i, len(p))
		}
		out[i] = [2]string{p[0], p[1]}
	}
	return out, nil
}
