package tokenize

import (
	"unicode"
	"unicode/utf8"
)

// AddedToken is one entry of tokenizer.json's "added_tokens" list: a string that is matched
// as a whole before pre-tokenization and always maps to one id.
type AddedToken struct {
	ID         int    `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

// addedVocab holds the added tokens and matches them in text the way HuggingFace's
// AddedVocabulary does: leftmost-longest, first the tokens flagged normalized=false on the
// raw text, then the others on the normalized pieces.
type addedVocab struct {
	byContent map[string]int
	byID      map[int]*AddedToken
	special   map[string]bool
	raw       *trie // tokens with normalized=false
	norm      *trie // tokens with normalized=true, keyed by their normalized content
	// Tokens in the order HuggingFace registers them (special first, then the others).
	ordered []*AddedToken
}

// buildAddedVocab assigns ids the way HuggingFace's AddedVocabulary.add_tokens does: a token
// already in the model's vocabulary keeps that id; any other token gets the next id after the
// largest added id, or the model's vocabulary size. The ids written in the file are not used
// (HuggingFace warns when they differ and uses its own); for consistent files they agree.
func buildAddedVocab(tokens []AddedToken, m model, norm normalizer) *addedVocab {
	av := &addedVocab{byContent: map[string]int{}, byID: map[int]*AddedToken{}, special: map[string]bool{}}
	var specials, others []*AddedToken
	for i := range tokens {
		tk := &tokens[i]
		if tk.Special && tk.Content != "" && !av.special[tk.Content] {
			av.special[tk.Content] = true
			specials = append(specials, tk)
		}
	}
	maxAdded := -1
	seen := map[AddedToken]bool{}
	vsize := m.vocabLen()
	for i := range tokens {
		tk := tokens[i]
		if tk.Content == "" {
			continue
		}
		key := tk
		key.ID = 0
		if seen[key] {
			continue
		}
		seen[key] = true
		id, ok := av.byContent[tk.Content]
		if !ok {
			id, ok = m.tokenToID(tk.Content)
		}
		if !ok {
			switch {
			case maxAdded < 0:
				id = vsize
			case maxAdded >= vsize || vsize == 0:
				id = maxAdded + 1
			default:
				id = vsize
			}
		}
		av.byContent[tk.Content] = id
		if id > maxAdded {
			maxAdded = id
		}
		tk.ID = id
		cp := tk
		av.byID[id] = &cp
		if !av.special[tk.Content] {
			others = append(others, &cp)
		}
	}
	av.raw, av.norm = newTrie(), newTrie()
	for _, tk := range append(specials, others...) {
		id := av.byContent[tk.Content]
		av.ordered = append(av.ordered, av.byID[id])
		if tk.Normalized {
			c := tk.Content
			if norm != nil {
				c = norm.normalize(c)
			}
			av.norm.add(c, id)
		} else {
			av.raw.add(tk.Content, id)
		}
	}
	return av
}

// segment is a piece of text that is either an added token (id >= 0) or text still to be
// tokenized (id < 0). first tells whether the piece starts at offset 0 of the original text.
type segment struct {
	s     string
	id    int
	first bool
}

// split appends to dst the segments of s cut by the tokens of tr, following HuggingFace's
// find_matches (single_word, lstrip and rstrip included). first tells whether s starts the
// original text.
func (av *addedVocab) split(dst []segment, tr *trie, s string, first bool) []segment {
	if tr.empty() {
		return append(dst, segment{s: s, id: -1, first: first})
	}
	startOffset := 0
	pos := 0
	for pos < len(s) {
		start, end, id := tr.findLeftmostLongest(s, pos)
		if id < 0 {
			break
		}
		pos = end
		tk := av.byID[id]
		if tk.SingleWord {
			startSpace := start == 0 || !endsWithWord(s[:start])
			stopSpace := end == len(s) || !startsWithWord(s[end:])
			if !startSpace || !stopSpace {
				continue
			}
		}
		if tk.LStrip {
			ns := spaceLeftmostAtEnd(s[:start])
			start = max(ns, startOffset)
		}
		if tk.RStrip {
			end += spaceRightmostAtStart(s[end:])
			pos = max(pos, end)
		}
		if startOffset < start {
			dst = append(dst, segment{s: s[startOffset:start], id: -1, first: first && startOffset == 0})
		}
		dst = append(dst, segment{s: s[start:end], id: id, first: first && start == 0})
		startOffset = end
	}
	if startOffset != len(s) {
		dst = append(dst, segment{s: s[startOffset:], id: -1, first: first && startOffset == 0})
	}
	return dst
}

func isWordChar(r rune) bool {
	return r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.Is(unicode.M, r) ||
		unicode.Is(unicode.Pc, r) || unicode.Is(unicode.Nl, r) || r == 0x200C || r == 0x200D
}

func endsWithWord(s string) bool {
	r, n := utf8.DecodeLastRuneInString(s)
	return n > 0 && isWordChar(r)
}

func startsWithWord(s string) bool {
	r, n := utf8.DecodeRuneInString(s)
	return n > 0 && isWordChar(r)
}

func spaceLeftmostAtEnd(s string) int {
	left := len(s)
	for left > 0 {
		r, n := utf8.DecodeLastRuneInString(s[:left])
		if !unicode.IsSpace(r) {
			break
		}
		left -= n
	}
	return left
}

func spaceRightmostAtStart(s string) int {
	right := 0
	for right < len(s) {
		r, n := utf8.DecodeRuneInString(s[right:])
		if !unicode.IsSpace(r) {
			break
		}
		right += n
	}
	return right
}

// trie is a byte trie for leftmost-longest matching of many literal strings.
type trie struct {
	nodes []trieNode
	first [256]bool // bytes that start some pattern
	n     int
}

type trieNode struct {
	next map[byte]int32
	id   int // pattern id ending here, or -1
}

func newTrie() *trie { return &trie{nodes: []trieNode{{id: -1}}} }

func (t *trie) empty() bool { return t.n == 0 }

func (t *trie) add(s string, id int) {
	if s == "" {
		return
	}
	cur := int32(0)
	for i := 0; i < len(s); i++ {
		nx, ok := t.nodes[cur].next[s[i]]
		if !ok {
			if t.nodes[cur].next == nil {
				t.nodes[cur].next = map[byte]int32{}
			}
			t.nodes = append(t.nodes, trieNode{id: -1})
			nx = int32(len(t.nodes) - 1)
			t.nodes[cur].next[s[i]] = nx
		}
		cur = nx
	}
	if t.nodes[cur].id < 0 { // the first pattern with this content wins, as in Aho-Corasick
		t.nodes[cur].id = id
	}
	t.first[s[0]] = true
	t.n++
}

// findLeftmostLongest returns the leftmost match at or after from, the longest among those
// that start there; id is -1 when there is none.
func (t *trie) findLeftmostLongest(s string, from int) (start, end, id int) {
	for i := from; i < len(s); i++ {
		if !t.first[s[i]] {
			continue
		}
		cur := int32(0)
		best, bestID := -1, -1
		for j := i; j < len(s); j++ {
			nx, ok := t.nodes[cur].next[s[j]]
			if !ok {
				break
			}
			cur = nx
			if t.nodes[cur].id >= 0 {
				best, bestID = j+1, t.nodes[cur].id
			}
		}
		if bestID >= 0 {
			return i, best, bestID
		}
	}
	return -1, -1, -1
}
