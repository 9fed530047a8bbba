package tokenize

import (
	"fmt"
	"hash/maphash"
	"math"
	"strings"
	"sync"
	"unicode/utf8"
)

// model turns one pre-tokenized word into ids (HuggingFace's Model).
type model interface {
	// appendIDs appends the ids of word to dst. raw tells that word has not been mapped to
	// the byte-level alphabet yet (the ByteLevel pre-tokenizer left that to the model).
	appendIDs(dst []int, word string, raw bool) []int
	tokenToID(tok string) (int, bool)
	idToToken(id int) (string, bool)
	// vocabLen is the number of vocabulary entries (HuggingFace's get_vocab_size).
	vocabLen() int
	// maxID is the largest id of the vocabulary, -1 when it is empty.
	maxID() int
}

// vocabulary is the string<->id table shared by the models.
type vocabulary struct {
	ids    map[string]int32
	tokens []string // by id; "" where hasTok is false
	hasTok []bool
	maxID  int
}

func newVocabulary(m map[string]int) (*vocabulary, error) {
	v := &vocabulary{ids: make(map[string]int32, len(m)), maxID: -1}
	for s, id := range m {
		if id < 0 || id > math.MaxInt32-1 {
			return nil, fmt.Errorf("token %q has id %d out of range", s, id)
		}
		v.ids[s] = int32(id)
		v.maxID = max(v.maxID, id)
	}
	v.tokens = make([]string, v.maxID+1)
	v.hasTok = make([]bool, v.maxID+1)
	for s, id := range m {
		// With duplicate ids, keep the lexically smallest token so loading is deterministic.
		if !v.hasTok[id] || s < v.tokens[id] {
			v.tokens[id], v.hasTok[id] = s, true
		}
	}
	return v, nil
}

func (v *vocabulary) tokenToID(tok string) (int, bool) {
	id, ok := v.ids[tok]
	return int(id), ok
}

func (v *vocabulary) idToToken(id int) (string, bool) {
	if id < 0 || id >= len(v.tokens) || !v.hasTok[id] {
		return "", false
	}
	return v.tokens[id], true
}

// bpeModel is HuggingFace's BPE model (dropout unsupported: it must be null or 0).
type bpeModel struct {
	*vocabulary
	merges       map[uint64]uint64 // (left<<32 | right) -> (rank<<32 | new id)
	unk          int32             // -1 when there is no unk token
	fuseUnk      bool
	byteFallback bool
	ignoreMerges bool
	prefix       *string // continuing_subword_prefix
	suffix       *string // end_of_word_suffix
	byteIDs      [256]int32
	fallbackIDs  [256]int32
	fastRaw      bool // raw words can start from byteIDs
	cache        *wordCache
	scratch      sync.Pool
}

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

type bpeScratch struct {
	ids   []int32
	ranks []uint32
	next  []int32
	prev  []int32
	dead  []bool
	heap  mergeHeap
	buf   []byte
}

func (m *bpeModel) vocabLen() int { return len(m.ids) }
func (m *bpeModel) maxID() int    { return m.vocabulary.maxID }

func (m *bpeModel) init() {
	for b := 0; b < 256; b++ {
		m.byteIDs[b], m.fallbackIDs[b] = -1, -1
		if id, ok := m.ids[byteToStr[b]]; ok {
			m.byteIDs[b] = id
		}
		if id, ok := m.ids[fmt.Sprintf("<0x%02X>", b)]; ok {
			m.fallbackIDs[b] = id
		}
	}
	m.fastRaw = (m.prefix == nil || *m.prefix == "") && (m.suffix == nil || *m.suffix == "")
	for b := 0; b < 256; b++ {
		if m.byteIDs[b] < 0 {
			m.fastRaw = false
		}
	}
	m.cache = newWordCache(1 << 17)
	m.scratch.New = func() any { return &bpeScratch{} }
}

const maxCachedWord = 64

func (m *bpeModel) appendIDs(dst []int, word string, raw bool) []int {
	if word == "" {
		return dst
	}
	if ids, ok := m.cache.get(word); ok {
		for _, id := range ids {
			dst = append(dst, int(id))
		}
		return dst
	}
	sc := m.scratch.Get().(*bpeScratch)
	defer m.scratch.Put(sc)
	mapped := word
	if raw && (m.ignoreMerges || !m.fastRaw) {
		sc.buf = appendByteLevelMap(sc.buf[:0], word)
		mapped = string(sc.buf)
	}
	if m.ignoreMerges {
		if id, ok := m.ids[mapped]; ok {
			m.cache.put(word, []int32{id})
			return append(dst, int(id))
		}
	}
	ids := sc.ids[:0]
	if raw && m.fastRaw {
		for i := 0; i < len(word); i++ {
			ids = append(ids, m.byteIDs[word[i]])
		}
	} else {
		ids = m.initialSymbols(ids, mapped)
	}
	ids = m.mergeAll(ids, sc)
	sc.ids = ids
	if len(word) <= maxCachedWord {
		m.cache.put(word, append([]int32(nil), ids...))
	}
	for _, id := range ids {
		dst = append(dst, int(id))
	}
	return dst
}

// initialSymbols splits w into characters (with the subword prefix and word suffix), with
// byte fallback and unk handling as HuggingFace's BPE::merge_word.
func (m *bpeModel) initialSymbols(ids []int32, w string) []int32 {
	unkPending := false
	for i := 0; i < len(w); {
		_, n := utf8.DecodeRuneInString(w[i:])
		end := i + n
		s := w[i:end]
		if m.prefix != nil && i > 0 && *m.prefix != "" {
			s = *m.prefix + s
		}
		if m.suffix != nil && end == len(w) && *m.suffix != "" {
			s += *m.suffix
		}
		i = end
		if id, ok := m.ids[s]; ok {
			if unkPending {
				ids = append(ids, m.unk)
				unkPending = false
			}
			ids = append(ids, id)
			continue
		}
		if m.byteFallback {
			if out, ok := appendByteFallback(ids, &m.fallbackIDs, s); ok {
				ids = out
				continue
			}
		}
		if m.unk >= 0 {
			if unkPending && !m.fuseUnk {
				ids = append(ids, m.unk)
			}
			unkPending = true
		}
	}
	if unkPending {
		ids = append(ids, m.unk)
	}
	return ids
}

const linearMergeMax = 128

// mergeAll applies the merges by rank, equal ranks left to right, as HuggingFace's
// Word::merge_all (a min-heap on (rank, position)).
func (m *bpeModel) mergeAll(ids []int32, sc *bpeScratch) []int32 {
	if len(ids) < 2 {
		return ids
	}
	if len(ids) > linearMergeMax {
		return m.mergeHeap(ids, sc)
	}
	const none = math.MaxUint32
	ranks := sc.ranks[:0]
	newIDs := sc.next[:0]
	for i := 0; i+1 < len(ids); i++ {
		r, nid := uint32(none), int32(-1)
		if v, ok := m.merges[pairKey(ids[i], ids[i+1])]; ok {
			r, nid = uint32(v>>32), int32(uint32(v))
		}
		ranks = append(ranks, r)
		newIDs = append(newIDs, nid)
	}
	for {
		best, bi := uint32(none), -1
		for i, r := range ranks {
			if r < best {
				best, bi = r, i
			}
		}
		if bi < 0 {
			break
		}
		ids[bi] = newIDs[bi]
		ids = append(ids[:bi+1], ids[bi+2:]...)
		ranks = append(ranks[:bi], ranks[bi+1:]...)
		newIDs = append(newIDs[:bi], newIDs[bi+1:]...)
		for _, k := range [2]int{bi - 1, bi} {
			if k < 0 || k >= len(ranks) {
				continue
			}
			r, nid := uint32(none), int32(-1)
			if v, ok := m.merges[pairKey(ids[k], ids[k+1])]; ok {
				r, nid = uint32(v>>32), int32(uint32(v))
			}
			ranks[k], newIDs[k] = r, nid
		}
	}
	sc.ranks, sc.next = ranks, newIDs
	return ids
}

type mergeItem struct {
	rank  uint32
	pos   int32
	newID int32
}

func (a mergeItem) less(b mergeItem) bool {
	return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos)
}

type mergeHeap []mergeItem

func (h *mergeHeap) push(x mergeItem) {
	*h = append(*h, x)
	s := *h
	i := len(s) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !s[i].less(s[p]) {
			break
		}
		s[i], s[p] = s[p], s[i]
		i = p
	}
}

func (h *mergeHeap) pop() mergeItem {
	s := *h
	top := s[0]
	n := len(s) - 1
	s[0] = s[n]
	s = s[:n]
	i := 0
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		c := l
		if r := l + 1; r < n && s[r].less(s[l]) {
			c = r
		}
		if !s[c].less(s[i]) {
			break
		}
		s[i], s[c] = s[c], s[i]
		i = c
	}
	*h = s
	return top
}

func (m *bpeModel) mergeHeap(ids []int32, sc *bpeScratch) []int32 {
	n := int32(len(ids))
	next := grow(sc.next, int(n))
	prev := grow(sc.prev, int(n))
	dead := growBool(sc.dead, int(n))
	for i := int32(0); i < n; i++ {
		next[i], prev[i], dead[i] = i+1, i-1, false
	}
	h := sc.heap[:0]
	for i := int32(0); i+1 < n; i++ {
		if v, ok := m.merges[pairKey(ids[i], ids[i+1])]; ok {
			h.push(mergeItem{uint32(v >> 32), i, int32(uint32(v))})
		}
	}
	for len(h) > 0 {
		top := h.pop()
		p := top.pos
		if dead[p] {
			continue
		}
		nx := next[p]
		if nx >= n {
			continue
		}
		v, ok := m.merges[pairKey(ids[p], ids[nx])]
		if !ok || int32(uint32(v)) != top.newID {
			continue
		}
		ids[p] = top.newID
		dead[nx] = true
		nn := next[nx]
		next[p] = nn
		if nn < n {
			prev[nn] = p
		}
		if pp := prev[p]; pp >= 0 {
			if v, ok := m.merges[pairKey(ids[pp], ids[p])]; ok {
				h.push(mergeItem{uint32(v >> 32), pp, int32(uint32(v))})
			}
		}
		if nn < n {
			if v, ok := m.merges[pairKey(ids[p], ids[nn])]; ok {
				h.push(mergeItem{uint32(v >> 32), p, int32(uint32(v))})
			}
		}
	}
	out := ids[:0]
	for i := int32(0); i < n; i = next[i] {
		out = append(out, ids[i])
	}
	sc.next, sc.prev, sc.dead, sc.heap = next, prev, dead, h
	return out
}

func grow(s []int32, n int) []int32 {
	if cap(s) < n {
		return make([]int32, n)
	}
	return s[:n]
}

func growBool(s []bool, n int) []bool {
	if cap(s) < n {
		return make([]bool, n)
	}
	return s[:n]
}

// buildMerges turns the merges into the rank table, checking every token against vocab.
func (m *bpeModel) buildMerges(merges [][2]string) error {
	m.merges = make(map[uint64]uint64, len(merges))
	plen := 0
	if m.prefix != nil {
		plen = len(*m.prefix)
	}
	for i, mg := range merges {
		a, ok := m.ids[mg[0]]
		if !ok {
			return fmt.Errorf("merges[%d]: token %q is not in the vocabulary", i, mg[0])
		}
		b, ok := m.ids[mg[1]]
		if !ok {
			return fmt.Errorf("merges[%d]: token %q is not in the vocabulary", i, mg[1])
		}
		right := mg[1]
		if plen > 0 && len(right) >= plen {
			right = right[plen:]
		}
		nid, ok := m.ids[mg[0]+right]
		if !ok {
			return fmt.Errorf("merges[%d]: merged token %q is not in the vocabulary", i, mg[0]+right)
		}
		m.merges[pairKey(a, b)] = uint64(i)<<32 | uint64(uint32(nid))
	}
	return nil
}

// wordCache maps words to their ids; safe for concurrent use. It stops growing when full.
type wordCache struct {
	seed   maphash.Seed
	shards [32]cacheShard
	limit  int
}

type cacheShard struct {
	mu sync.RWMutex
	m  map[string][]int32
}

func newWordCache(capacity int) *wordCache {
	c := &wordCache{seed: maphash.MakeSeed(), limit: capacity / 32}
	for i := range c.shards {
		c.shards[i].m = map[string][]int32{}
	}
	return c
}

func (c *wordCache) shard(k string) *cacheShard {
	return &c.shards[maphash.String(c.seed, k)%uint64(len(c.shards))]
}

func (c *wordCache) get(k string) ([]int32, bool) {
	if len(k) > maxCachedWord {
		return nil, false
	}
	s := c.shard(k)
	s.mu.RLock()
	v, ok := s.m[k]
	s.mu.RUnlock()
	return v, ok
}

func (c *wordCache) put(k string, v []int32) {
	s := c.shard(k)
	s.mu.Lock()
	if len(s.m) < c.limit {
		s.m[strings.Clone(k)] = v
	}
	s.mu.Unlock()
}

// appendByteFallback appends the <0xNN> token of every byte of s (byte_fallback), or
// reports false, appending nothing, when some byte has no such token.
func appendByteFallback[T int | int32](ids []T, fallback *[256]int32, s string) ([]T, bool) {
	for k := 0; k < len(s); k++ {
		if fallback[s[k]] < 0 {
			return ids, false
		}
	}
	for k := 0; k < len(s); k++ {
		ids = append(ids, T(fallback[s[k]]))
	}
	return ids, true
}
