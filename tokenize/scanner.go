package tokenize

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// Hand-written scanners for the split patterns of the common byte-level tokenizers. Each
// reproduces, at one position, what the backtracking regex engine (Oniguruma, used by
// HuggingFace) matches for the whole alternation, so that the text splits exactly alike.
// Every one of these patterns matches at every position, so a scan partitions the text.
// Unknown patterns fall back to github.com/dlclark/regexp2.

// scanFunc returns the end of the match that starts at i (i < len(s)); always > i.
type scanFunc func(s string, i int) int

const (
	gpt2Pattern   = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
	llama3Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	qwen2Pattern  = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	o200kPattern  = `[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`
)

// foldLongS tells whether (?i) lets 's match U+017F, as Oniguruma's case folding does.
var foldLongS = true

// knownScanners maps a split pattern to its scanner.
var knownScanners = map[string]scanFunc{
	gpt2Pattern:   scanGPT2,
	llama3Pattern: func(s string, i int) int { return scanLlama3(s, i, 3) },
	qwen2Pattern:  func(s string, i int) int { return scanLlama3(s, i, 1) },
	o200kPattern:  scanO200k,
}

const (
	clsL = 1 << iota
	clsN
	clsS
	clsUpper // [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]
	clsLower // [\p{Ll}\p{Lm}\p{Lo}\p{M}]
)

var asciiCls [128]uint8

func init() {
	for r := rune(0); r < 128; r++ {
		asciiCls[r] = runeClassSlow(r)
	}
}

func runeClassSlow(r rune) uint8 {
	var c uint8
	if unicode.IsLetter(r) {
		c |= clsL
	}
	if unicode.IsNumber(r) {
		c |= clsN
	}
	if unicode.IsSpace(r) {
		c |= clsS
	}
	if unicode.In(r, unicode.Lu, unicode.Lt, unicode.Lm, unicode.Lo, unicode.M) {
		c |= clsUpper
	}
	if unicode.In(r, unicode.Ll, unicode.Lm, unicode.Lo, unicode.M) {
		c |= clsLower
	}
	return c
}

// runeAt decodes the rune at i with its class and size.
func runeAt(s string, i int) (rune, uint8, int) {
	b := s[i]
	if b < utf8.RuneSelf {
		return rune(b), asciiCls[b], 1
	}
	r, n := utf8.DecodeRuneInString(s[i:])
	return r, runeClassSlow(r), n
}

// span returns the end of the run of runes starting at i whose class has any bit of mask.
func span(s string, i int, mask uint8) int {
	for i < len(s) {
		_, c, n := runeAt(s, i)
		if c&mask == 0 {
			break
		}
		i += n
	}
	return i
}

// spanOther returns the end of the run of runes that are neither space, letter nor number.
func spanOther(s string, i int) int {
	for i < len(s) {
		_, c, n := runeAt(s, i)
		if c&(clsL|clsN|clsS) != 0 {
			break
		}
		i += n
	}
	return i
}

// contraction matches 's|'t|'re|'ve|'m|'ll|'d at i (s[i] == '\”), case-insensitively when
// fold is set; it returns the length matched or 0.
func contraction(s string, i int, fold bool) int {
	if i+1 >= len(s) || s[i] != '\'' {
		return 0
	}
	low := func(b byte) byte {
		if fold && b >= 'A' && b <= 'Z' {
			return b + 'a' - 'A'
		}
		return b
	}
	c := low(s[i+1])
	switch c {
	case 's', 't', 'm', 'd':
		return 2
	case 'r', 'v', 'l':
		if i+2 < len(s) {
			want := byte('e')
			if c == 'l' {
				want = 'l'
			}
			if low(s[i+2]) == want {
				return 3
			}
		}
	}
	if fold && foldLongS && strings.HasPrefix(s[i+1:], "\u017f") {
		return 3 // U+017F LATIN SMALL LETTER LONG S folds to 's'
	}
	return 0
}

// wsEnd matches `\s+(?!\S)|\s+` at i, where s[i] is whitespace.
func wsEnd(s string, i int) int {
	e, last, count := i, i, 0
	for e < len(s) {
		_, c, n := runeAt(s, e)
		if c&clsS == 0 {
			break
		}
		last = e
		e += n
		count++
	}
	if e == len(s) || count < 2 {
		return e
	}
	return last
}

// wsNewlineEnd matches `\s*[\r\n]+|\s+(?!\S)|\s+` at i, where s[i] is whitespace.
func wsNewlineEnd(s string, i int) int {
	e, nl := i, -1
	for e < len(s) {
		_, c, n := runeAt(s, e)
		if c&clsS == 0 {
			break
		}
		if s[e] == '\r' || s[e] == '\n' {
			nl = e
		}
		e += n
	}
	if nl >= 0 {
		return nl + 1
	}
	return wsEnd(s, i)
}

func scanGPT2(s string, i int) int {
	if s[i] == '\'' {
		if n := contraction(s, i, false); n > 0 {
			return i + n
		}
	}
	j := i
	if s[j] == ' ' && j+1 < len(s) {
		j++
	}
	_, c, n := runeAt(s, j)
	switch {
	case c&clsL != 0:
		return span(s, j+n, clsL)
	case c&clsN != 0:
		return span(s, j+n, clsN)
	case c&clsS == 0:
		return spanOther(s, j+n)
	}
	return wsEnd(s, i)
}

func scanLlama3(s string, i int, maxDigits int) int {
	if s[i] == '\'' {
		if n := contraction(s, i, true); n > 0 {
			return i + n
		}
	}
	r, c, n := runeAt(s, i)
	if c&(clsL|clsN) == 0 && r != '\r' && r != '\n' && i+n < len(s) {
		if _, c2, n2 := runeAt(s, i+n); c2&clsL != 0 {
			return span(s, i+n+n2, clsL)
		}
	}
	if c&clsL != 0 {
		return span(s, i+n, clsL)
	}
	if c&clsN != 0 {
		return spanDigits(s, i+n, maxDigits)
	}
	j := i
	if s[j] == ' ' && j+1 < len(s) {
		j++
	}
	if _, c2, n2 := runeAt(s, j); c2&(clsL|clsN|clsS) == 0 {
		e := spanOther(s, j+n2)
		for e < len(s) && (s[e] == '\r' || s[e] == '\n') {
			e++
		}
		return e
	}
	return wsNewlineEnd(s, i)
}

// o200kLetters matches [U]*[L]+C? (upperFirst false) or [U]+[L]*C? (upperFirst true) at j,
// returning the end or -1. U and L are the o200k upper/lower classes, C the contractions.
func o200kLetters(s string, j int, upperFirst bool) int {
	var stack [32]int
	pos := stack[:0]
	e := j
	for e < len(s) {
		_, c, n := runeAt(s, e)
		if c&clsUpper == 0 {
			break
		}
		pos = append(pos, e)
		e += n
	}
	if upperFirst {
		if len(pos) == 0 {
			return -1
		}
		return o200kTail(s, span(s, e, clsLower))
	}
	pos = append(pos, e)
	for k := len(pos) - 1; k >= 0; k-- {
		p := pos[k]
		if p >= len(s) {
			continue
		}
		if _, c, n := runeAt(s, p); c&clsLower != 0 {
			return o200kTail(s, span(s, p+n, clsLower))
		}
	}
	return -1
}

func o200kTail(s string, e int) int {
	if e < len(s) && s[e] == '\'' {
		e += contraction(s, e, true)
	}
	return e
}

func scanO200k(s string, i int) int {
	r, c, n := runeAt(s, i)
	prefix := c&(clsL|clsN) == 0 && r != '\r' && r != '\n' && i+n < len(s)
	for _, upperFirst := range [2]bool{false, true} {
		if prefix {
			if e := o200kLetters(s, i+n, upperFirst); e >= 0 {
				return e
			}
		}
		if e := o200kLetters(s, i, upperFirst); e >= 0 {
			return e
		}
	}
	if c&clsN != 0 {
		return spanDigits(s, i+n, 3)
	}
	j := i
	if s[j] == ' ' && j+1 < len(s) {
		j++
	}
	if _, c2, n2 := runeAt(s, j); c2&(clsL|clsN|clsS) == 0 {
		e := spanOther(s, j+n2)
		for e < len(s) && (s[e] == '\r' || s[e] == '\n' || s[e] == '/') {
			e++
		}
		return e
	}
	return wsNewlineEnd(s, i)
}

// spanDigits returns the end of a run of at most limit digits (\p{N}) whose first digit
// ends at e: the pre-tokenizers split numbers into groups of 1–3 digits.
func spanDigits(s string, e, limit int) int {
	for k := 1; k < limit && e < len(s); k++ {
		_, c, n := runeAt(s, e)
		if c&clsN == 0 {
			break
		}
		e += n
	}
	return e
}
