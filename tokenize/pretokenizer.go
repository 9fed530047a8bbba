package tokenize

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
)

// preTokenizer splits a normalized piece of text into words (HuggingFace's PreTokenizer).
type preTokenizer interface {
	// appendSplits appends the non-empty words of seg to dst.
	appendSplits(dst []segment, seg segment) []segment
}

// Split behaviors (HuggingFace's SplitDelimiterBehavior).
const (
	behRemoved = iota
	behIsolated
	behMergedWithPrevious
	behMergedWithNext
	behContiguous
)

var behaviorNames = map[string]int{
	"Removed": behRemoved, "Isolated": behIsolated, "MergedWithPrevious": behMergedWithPrevious,
	"MergedWithNext": behMergedWithNext, "Contiguous": behContiguous,
}

// matcher finds the non-overlapping matches of a pattern, as byte offsets.
type matcher interface {
	findAll(dst [][2]int, s string) [][2]int
}

type literalMatcher string

func (m literalMatcher) findAll(dst [][2]int, s string) [][2]int {
	if m == "" {
		return dst
	}
	for i := 0; i <= len(s); {
		k := strings.Index(s[i:], string(m))
		if k < 0 {
			break
		}
		dst = append(dst, [2]int{i + k, i + k + len(m)})
		i += k + len(m)
	}
	return dst
}

// runeMatcher makes every rune for which f is true a match of its own.
type runeMatcher func(rune) bool

func (m runeMatcher) findAll(dst [][2]int, s string) [][2]int {
	for i, r := range s {
		if m(r) {
			dst = append(dst, [2]int{i, i + utf8.RuneLen(r)})
		}
	}
	return dst
}

type scanMatcher scanFunc

func (m scanMatcher) findAll(dst [][2]int, s string) [][2]int {
	for i := 0; i < len(s); {
		e := m(s, i)
		dst = append(dst, [2]int{i, e})
		i = e
	}
	return dst
}

type regexMatcher struct{ re *regexp2.Regexp }

func (m regexMatcher) findAll(dst [][2]int, s string) [][2]int {
	return append(dst, regexFindAll(m.re, s)...)
}

// regexFindAll returns the byte offsets of the non-overlapping matches of re in s.
func regexFindAll(re *regexp2.Regexp, s string) [][2]int {
	runes := []rune(s)
	var offs []int // byte offset of each rune index, built lazily
	byteOff := func(ri int) int {
		if offs == nil {
			offs = make([]int, len(runes)+1)
			b := 0
			for k, r := range runes {
				offs[k] = b
				b += utf8.RuneLen(r)
			}
			offs[len(runes)] = b
		}
		return offs[ri]
	}
	var out [][2]int
	m, err := re.FindRunesMatch(runes)
	for err == nil && m != nil {
		if m.Length > 0 {
			out = append(out, [2]int{byteOff(m.Index), byteOff(m.Index + m.Length)})
		}
		m, err = re.FindNextMatch(m)
	}
	return out
}

// splitPre is HuggingFace's Split pre-tokenizer (also used for Punctuation, Digits,
// WhitespaceSplit, CharDelimiterSplit and Whitespace).
type splitPre struct {
	m        matcher
	behavior int
	invert   bool
	// partition is set when every match of m is adjacent to the next and they cover the
	// text, and the behavior keeps exactly the matches: the words are then the matches.
	partition scanFunc
}

func (p *splitPre) appendSplits(dst []segment, seg segment) []segment {
	s := seg.s
	if p.partition != nil {
		for i := 0; i < len(s); {
			e := p.partition(s, i)
			dst = append(dst, segment{s: s[i:e], id: -1, first: seg.first && i == 0})
			i = e
		}
		return dst
	}
	var buf [16][2]int
	ms := p.m.findAll(buf[:0], s)
	return splitByMatches(dst, seg, ms, p.behavior, p.invert)
}

// splitByMatches applies a split behavior to the matches ms of seg.s, following
// HuggingFace's NormalizedString::split.
func splitByMatches(dst []segment, seg segment, ms [][2]int, behavior int, invert bool) []segment {
	s := seg.s
	type part struct {
		a, b    int
		isMatch bool
	}
	var pbuf [32]part
	parts := pbuf[:0]
	prev := 0
	for _, m := range ms {
		if prev != m[0] {
			parts = append(parts, part{prev, m[0], false})
		}
		parts = append(parts, part{m[0], m[1], true})
		prev = m[1]
	}
	if prev != len(s) {
		parts = append(parts, part{prev, len(s), false})
	}
	if invert {
		for i := range parts {
			parts[i].isMatch = !parts[i].isMatch
		}
	}
	type keep struct {
		a, b   int
		remove bool
	}
	var kbuf [32]keep
	out := kbuf[:0]
	switch behavior {
	case behIsolated:
		for _, p := range parts {
			out = append(out, keep{p.a, p.b, false})
		}
	case behRemoved:
		for _, p := range parts {
			out = append(out, keep{p.a, p.b, p.isMatch})
		}
	case behContiguous:
		prevMatch := false
		for _, p := range parts {
			if p.isMatch == prevMatch && len(out) > 0 {
				out[len(out)-1].b = p.b
			} else {
				out = append(out, keep{p.a, p.b, false})
			}
			prevMatch = p.isMatch
		}
	case behMergedWithPrevious:
		prevMatch := false
		for _, p := range parts {
			if p.isMatch && !prevMatch && len(out) > 0 {
				out[len(out)-1].b = p.b
			} else {
				out = append(out, keep{p.a, p.b, false})
			}
			prevMatch = p.isMatch
		}
	case behMergedWithNext:
		prevMatch := false
		for i := len(parts) - 1; i >= 0; i-- {
			p := parts[i]
			if p.isMatch && !prevMatch && len(out) > 0 {
				out[len(out)-1].a = p.a
			} else {
				out = append(out, keep{p.a, p.b, false})
			}
			prevMatch = p.isMatch
		}
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
	}
	for _, k := range out {
		if !k.remove && k.b > k.a {
			dst = append(dst, segment{s: s[k.a:k.b], id: -1, first: seg.first && k.a == 0})
		}
	}
	return dst
}

// byteLevelPre is HuggingFace's ByteLevel pre-tokenizer. The mapping of bytes to the GPT-2
// alphabet is done here only when mapNow is set; when ByteLevel is the last pre-tokenizer
// the model receives the raw word and maps it itself (its cache is keyed on raw words).
type byteLevelPre struct {
	addPrefixSpace bool
	useRegex       bool
	mapNow         bool
}

func (p *byteLevelPre) appendSplits(dst []segment, seg segment) []segment {
	s := seg.s
	if p.addPrefixSpace && !strings.HasPrefix(s, " ") {
		s = " " + s
	}
	start := len(dst)
	if p.useRegex {
		for i := 0; i < len(s); {
			e := scanGPT2(s, i)
			dst = append(dst, segment{s: s[i:e], id: -1, first: seg.first && i == 0})
			i = e
		}
	} else if s != "" {
		dst = append(dst, segment{s: s, id: -1, first: seg.first})
	}
	if p.mapNow {
		for i := start; i < len(dst); i++ {
			dst[i].s = byteLevelMap(dst[i].s)
		}
	}
	return dst
}

// metaspacePre is HuggingFace's Metaspace pre-tokenizer.
type metaspacePre struct {
	repl   string
	scheme int // prependAlways, prependFirst, prependNever
	split  bool
}

const (
	prependAlways = iota
	prependFirst
	prependNever
)

func (p *metaspacePre) appendSplits(dst []segment, seg segment) []segment {
	s := strings.ReplaceAll(seg.s, " ", p.repl)
	switch p.scheme {
	case prependAlways:
		if !strings.HasPrefix(s, p.repl) {
			s = p.repl + s
		}
	case prependFirst:
		if !strings.HasPrefix(s, p.repl) && seg.first {
			s = p.repl + s
		}
	}
	if !p.split {
		if s != "" {
			dst = append(dst, segment{s: s, id: -1, first: seg.first})
		}
		return dst
	}
	var buf [16][2]int
	ms := literalMatcher(p.repl).findAll(buf[:0], s)
	return splitByMatches(dst, segment{s: s, id: -1, first: seg.first}, ms, behMergedWithNext, false)
}

type sequencePre []preTokenizer

func (p sequencePre) appendSplits(dst []segment, seg segment) []segment {
	cur := []segment{seg}
	var next []segment
	for _, x := range p {
		next = next[:0]
		for _, c := range cur {
			next = x.appendSplits(next, c)
		}
		cur, next = next, cur
	}
	return append(dst, cur...)
}

func isBertPunct(r rune) bool {
	if r < utf8.RuneSelf {
		return (r >= 33 && r <= 47) || (r >= 58 && r <= 64) || (r >= 91 && r <= 96) || (r >= 123 && r <= 126)
	}
	return unicode.IsPunct(r)
}

// whitespaceWord matches `\w+|[^\w\s]+` (HuggingFace's Whitespace pre-tokenizer).
func whitespaceWord(s string, i int) int {
	r, n := utf8.DecodeRuneInString(s[i:])
	if unicode.IsSpace(r) {
		return -1
	}
	w := isWordChar(r)
	e := i + n
	for e < len(s) {
		r, n = utf8.DecodeRuneInString(s[e:])
		if unicode.IsSpace(r) || isWordChar(r) != w {
			break
		}
		e += n
	}
	return e
}

type whitespacePre struct{}

func (whitespacePre) appendSplits(dst []segment, seg segment) []segment {
	s := seg.s
	for i := 0; i < len(s); {
		e := whitespaceWord(s, i)
		if e < 0 {
			_, n := utf8.DecodeRuneInString(s[i:])
			i += n
			continue
		}
		dst = append(dst, segment{s: s[i:e], id: -1, first: seg.first && i == 0})
		i = e
	}
	return dst
}
