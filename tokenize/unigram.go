package tokenize

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"

	"github.com/rivo/uniseg"
)

// unigramModel is HuggingFace's Unigram model (T5, SentencePiece unigram): the Viterbi path
// of highest total score, unknown characters scored min_score - 10 and fused into one unk.
type unigramModel struct {
	ids          map[string]int32
	tokens       []string
	scores       []float64
	unk          int32 // -1 when unk_id is null
	byteFallback bool
	minScore     float64
	maxLen       int // longest piece in bytes
	fallbackIDs  [256]int32
	cache        *wordCache
}

const unkPenalty = 10.0

type scoredPiece struct {
	tok   string
	score float64
}

func (p *scoredPiece) UnmarshalJSON(b []byte) error {
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil || len(raw) != 2 {
		return fmt.Errorf("want [token, score], got %.40s", b)
	}
	if err := json.Unmarshal(raw[0], &p.tok); err != nil {
		return fmt.Errorf("want [token, score], got %.40s", b)
	}
	return json.Unmarshal(raw[1], &p.score)
}

func parseUnigram(o obj) (model, error) {
	var vocab []scoredPiece
	if err := o.get("vocab", &vocab); err != nil {
		return nil, err
	}
	m := &unigramModel{ids: make(map[string]int32, len(vocab)), unk: -1, minScore: math.Inf(1)}
	var unk *int
	if err := o.get("unk_id", &unk); err != nil {
		return nil, err
	}
	if err := o.get("byte_fallback", &m.byteFallback); err != nil {
		return nil, err
	}
	if len(vocab) > math.MaxInt32 {
		return nil, fmt.Errorf("%s.vocab: too large", o.path)
	}
	for i, p := range vocab {
		m.ids[p.tok] = int32(i)
		m.tokens = append(m.tokens, p.tok)
		m.scores = append(m.scores, p.score)
		m.minScore = min(m.minScore, p.score)
		m.maxLen = max(m.maxLen, len(p.tok))
	}
	if unk != nil {
		if *unk < 0 || *unk >= len(vocab) {
			return nil, fmt.Errorf("%s.unk_id: %d is outside the vocabulary (%d pieces)", o.path, *unk, len(vocab))
		}
		m.unk = int32(*unk)
	}
	for b := 0; b < 256; b++ {
		m.fallbackIDs[b] = -1
		if id, ok := m.ids[fmt.Sprintf("<0x%02X>", b)]; ok {
			m.fallbackIDs[b] = id
		}
	}
	m.cache = newWordCache(1 << 16)
	return m, nil
}

func (m *unigramModel) vocabLen() int { return len(m.tokens) }
func (m *unigramModel) maxID() int    { return len(m.tokens) - 1 }

func (m *unigramModel) tokenToID(tok string) (int, bool) {
	id, ok := m.ids[tok]
	return int(id), ok
}

func (m *unigramModel) idToToken(id int) (string, bool) {
	if id < 0 || id >= len(m.tokens) {
		return "", false
	}
	return m.tokens[id], true
}

type viterbiNode struct {
	score  float64
	start  int
	id     int32
	filled bool
}

func (m *unigramModel) appendIDs(dst []int, word string, raw bool) []int {
	if raw {
		word = byteLevelMap(word)
	}
	if word == "" {
		return dst
	}
	if ids, ok := m.cache.get(word); ok {
		for _, id := range ids {
			dst = append(dst, int(id))
		}
		return dst
	}
	n := len(word)
	nodes := make([]viterbiNode, n+1)
	nodes[0].filled = true
	unkScore := m.minScore - unkPenalty
	for start := 0; start < n; {
		base := nodes[start].score
		_, mblen := utf8.DecodeRuneInString(word[start:])
		single := false
		for end := start + 1; end <= n && end-start <= m.maxLen; end++ {
			if end < n && !utf8.RuneStart(word[end]) {
				continue
			}
			id, ok := m.ids[word[start:end]]
			if !ok {
				continue
			}
			cand := m.scores[id] + base
			if t := &nodes[end]; !t.filled || cand > t.score {
				*t = viterbiNode{score: cand, start: start, id: id, filled: true}
			}
			if end-start == mblen {
				single = true
			}
		}
		if !single {
			if t := &nodes[start+mblen]; !t.filled || unkScore+base > t.score {
				*t = viterbiNode{score: unkScore + base, start: start, id: m.unk, filled: true}
			}
		}
		start += mblen
	}
	// Walk back; consecutive unknowns are fused into one piece.
	var pieces []string
	pendingUnk := ""
	for end := n; end > 0; {
		nd := nodes[end]
		if m.unk >= 0 && nd.id == m.unk {
			pendingUnk = word[nd.start:end] + pendingUnk
		} else {
			if pendingUnk != "" {
				pieces = append(pieces, pendingUnk)
				pendingUnk = ""
			}
			pieces = append(pieces, word[nd.start:end])
		}
		end = nd.start
	}
	if pendingUnk != "" {
		pieces = append(pieces, pendingUnk)
	}
	var ids []int32
	for i := len(pieces) - 1; i >= 0; i-- {
		p := pieces[i]
		if id, ok := m.ids[p]; ok {
			ids = append(ids, id)
			continue
		}
		if m.byteFallback {
			if out, ok := appendByteFallback(ids, &m.fallbackIDs, p); ok {
				ids = out
				continue
			}
		}
		if m.unk >= 0 {
			ids = append(ids, m.unk)
		}
	}
	if len(word) <= maxCachedWord {
		m.cache.put(word, ids)
	}
	for _, id := range ids {
		dst = append(dst, int(id))
	}
	return dst
}

// precompiledNorm is SentencePiece's precompiled character map (HuggingFace's Precompiled
// normalizer): a double-array trie from byte strings to replacement strings, applied grapheme
// by grapheme exactly as HuggingFace's spm_precompiled does.
type precompiledNorm struct {
	units      []uint32
	normalized []byte
}

func parsePrecompiled(o obj) (normalizer, error) {
	var b64 string
	if err := o.get("precompiled_charsmap", &b64); err != nil {
		return nil, err
	}
	data, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("%s.precompiled_charsmap: bad base64: %v", o.path, err)
	}
	if len(data) == 0 {
		return sequenceNorm{}, nil
	}
	if len(data) < 4 {
		return nil, fmt.Errorf("%s.precompiled_charsmap: too short", o.path)
	}
	size := int(binary.LittleEndian.Uint32(data))
	if size%4 != 0 || 4+size > len(data) || size == 0 {
		return nil, fmt.Errorf("%s.precompiled_charsmap: bad trie size %d", o.path, size)
	}
	n := &precompiledNorm{units: make([]uint32, size/4), normalized: data[4+size:]}
	for i := range n.units {
		n.units[i] = binary.LittleEndian.Uint32(data[4+4*i:])
	}
	return n, nil
}

// firstPrefixValue returns the value of the shortest key of the trie that prefixes key.
func (n *precompiledNorm) firstPrefixValue(key string) (int, bool) {
	u := n.units
	offset := func(x uint32) int { return int((x >> 10) << ((x & (1 << 9)) >> 6)) }
	pos := 0
	unit := u[0]
	pos ^= offset(unit)
	for i := 0; i < len(key); i++ {
		c := key[i]
		if c == 0 {
			break
		}
		pos ^= int(c)
		if pos < 0 || pos >= len(u) {
			return 0, false
		}
		unit = u[pos]
		if int(unit&((1<<31)|0xFF)) != int(c) {
			return 0, false
		}
		pos ^= offset(unit)
		if pos < 0 || pos >= len(u) {
			return 0, false
		}
		if (unit>>8)&1 == 1 {
			return int(u[pos] & ((1 << 31) - 1)), true
		}
	}
	return 0, false
}

func (n *precompiledNorm) transform(chunk string) (string, bool) {
	idx, ok := n.firstPrefixValue(chunk)
	if !ok || idx > len(n.normalized) {
		return "", false
	}
	end := idx
	for end < len(n.normalized) && n.normalized[end] != 0 {
		end++
	}
	return string(n.normalized[idx:end]), true
}

func (n *precompiledNorm) normalize(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	g := uniseg.NewGraphemes(s)
	for g.Next() {
		gr := g.Str()
		if len(gr) < 6 {
			if r, ok := n.transform(gr); ok {
				b.WriteString(r)
				continue
			}
		}
		for i, c := range gr {
			part := gr[i : i+utf8.RuneLen(c)]
			if r, ok := n.transform(part); ok {
				b.WriteString(r)
			} else {
				b.WriteString(part)
			}
		}
	}
	return b.String()
}
