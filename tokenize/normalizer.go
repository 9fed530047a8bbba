package tokenize

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
	"golang.org/x/text/unicode/norm"
)

// normalizer rewrites text before pre-tokenization (HuggingFace's Normalizer).
type normalizer interface {
	normalize(s string) string
}

type unicodeNorm struct{ f norm.Form }

func (n unicodeNorm) normalize(s string) string {
	if isASCII(s) {
		return s
	}
	return n.f.String(s)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

type lowercaseNorm struct{}

func (lowercaseNorm) normalize(s string) string { return lowercase(s) }

// lowercase lowercases rune by rune like Rust's char::to_lowercase (no final-sigma rule;
// U+0130 becomes "i\u0307").
func lowercase(s string) string {
	if isASCII(s) {
		return strings.ToLower(s)
	}
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		if r == 0x130 {
			b.WriteString("i\u0307")
			continue
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}

type stripNorm struct{ left, right bool }

func (n stripNorm) normalize(s string) string {
	if n.left {
		s = strings.TrimLeftFunc(s, unicode.IsSpace)
	}
	if n.right {
		s = strings.TrimRightFunc(s, unicode.IsSpace)
	}
	return s
}

// stripAccentsNorm removes nonspacing marks (HuggingFace's StripAccents; it is meant to
// follow an NFD normalizer).
type stripAccentsNorm struct{}

func (stripAccentsNorm) normalize(s string) string { return removeMn(s) }

func removeMn(s string) string {
	if isASCII(s) {
		return s
	}
	return strings.Map(func(r rune) rune {
		if unicode.Is(unicode.Mn, r) {
			return -1
		}
		return r
	}, s)
}

type prependNorm struct{ p string }

func (n prependNorm) normalize(s string) string {
	if s == "" {
		return s
	}
	return n.p + s
}

type replaceNorm struct {
	lit     string
	re      *regexp2.Regexp
	content string
}

func (n replaceNorm) normalize(s string) string {
	if n.re == nil {
		if n.lit == "" {
			return s
		}
		return strings.ReplaceAll(s, n.lit, n.content)
	}
	return regexReplace(n.re, s, n.content)
}

// regexReplace replaces every match of re in s by the literal content.
func regexReplace(re *regexp2.Regexp, s, content string) string {
	ms := regexFindAll(re, s)
	if len(ms) == 0 {
		return s
	}
	var b strings.Builder
	prev := 0
	for _, m := range ms {
		b.WriteString(s[prev:m[0]])
		b.WriteString(content)
		prev = m[1]
	}
	b.WriteString(s[prev:])
	return b.String()
}

type sequenceNorm []normalizer

func (n sequenceNorm) normalize(s string) string {
	for _, x := range n {
		s = x.normalize(s)
	}
	return s
}

// nmtNorm is HuggingFace's Nmt normalizer: drops some control characters and maps others
// to a space.
type nmtNorm struct{}

func (nmtNorm) normalize(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 0x0001 && r <= 0x0008, r == 0x000B, r >= 0x000E && r <= 0x001F, r == 0x007F, r == 0x008F, r == 0x009F:
			return -1
		case r == 0x0009, r == 0x000A, r == 0x000C, r == 0x000D, r == 0x1680,
			r >= 0x200B && r <= 0x200F, r == 0x2028, r == 0x2029, r == 0x2581, r == 0xFEFF, r == 0xFFFD:
			return ' '
		}
		return r
	}, s)
}

// bertNorm is HuggingFace's BertNormalizer.
type bertNorm struct {
	cleanText, chinese, stripAccents, lowercase bool
}

func bertIsWhitespace(r rune) bool {
	return r == '\t' || r == '\n' || r == '\r' || unicode.IsSpace(r)
}

func bertIsControl(r rune) bool {
	if r == '\t' || r == '\n' || r == '\r' {
		return false
	}
	return unicode.In(r, unicode.Cc, unicode.Cf, unicode.Co, unicode.Cs) || isUnassigned(r)
}

func isUnassigned(r rune) bool {
	return !unicode.In(r, unicode.L, unicode.M, unicode.N, unicode.P, unicode.S, unicode.Z, unicode.C)
}

func isChineseChar(r rune) bool {
	return (r >= 0x4E00 && r <= 0x9FFF) || (r >= 0x3400 && r <= 0x4DBF) || (r >= 0x20000 && r <= 0x2A6DF) ||
		(r >= 0x2A700 && r <= 0x2B73F) || (r >= 0x2B740 && r <= 0x2B81F) || (r >= 0x2B920 && r <= 0x2CEAF) ||
		(r >= 0xF900 && r <= 0xFAFF) || (r >= 0x2F800 && r <= 0x2FA1F)
}

func (n bertNorm) normalize(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		if n.cleanText {
			if r == 0 || r == 0xFFFD || bertIsControl(r) {
				continue
			}
			if bertIsWhitespace(r) {
				r = ' '
			}
		}
		if n.chinese && isChineseChar(r) {
			b.WriteByte(' ')
			b.WriteRune(r)
			b.WriteByte(' ')
			continue
		}
		b.WriteRune(r)
	}
	s = b.String()
	if n.stripAccents {
		s = removeMn(norm.NFD.String(s))
	}
	if n.lowercase {
		s = lowercase(s)
	}
	return s
}
