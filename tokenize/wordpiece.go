package tokenize

import (
	"fmt"
	"unicode/utf8"
)

// wordPieceModel is HuggingFace's WordPiece model (BERT): greedy longest-match-first.
type wordPieceModel struct {
	*vocabulary
	unk      int32
	prefix   string
	maxChars int
}

func parseWordPiece(o obj) (model, error) {
	var vocab map[string]int
	if err := o.get("vocab", &vocab); err != nil {
		return nil, err
	}
	v, err := newVocabulary(vocab)
	if err != nil {
		return nil, fmt.Errorf("%s.vocab: %v", o.path, err)
	}
	m := &wordPieceModel{vocabulary: v, prefix: "##", maxChars: 100}
	unk := "[UNK]"
	if err := o.get("unk_token", &unk); err != nil {
		return nil, err
	}
	if err := o.get("continuing_subword_prefix", &m.prefix); err != nil {
		return nil, err
	}
	if err := o.get("max_input_chars_per_word", &m.maxChars); err != nil {
		return nil, err
	}
	id, ok := v.ids[unk]
	if !ok {
		return nil, fmt.Errorf("%s.unk_token: %q is not in the vocabulary", o.path, unk)
	}
	m.unk = id
	return m, nil
}

func (m *wordPieceModel) vocabLen() int { return len(m.ids) }
func (m *wordPieceModel) maxID() int    { return m.vocabulary.maxID }

func (m *wordPieceModel) appendIDs(dst []int, word string, raw bool) []int {
	if raw {
		word = byteLevelMap(word)
	}
	if word == "" {
		return dst
	}
	if utf8.RuneCountInString(word) > m.maxChars {
		return append(dst, int(m.unk))
	}
	start := len(dst)
	buf := make([]byte, 0, len(m.prefix)+len(word))
	for pos := 0; pos < len(word); {
		end := len(word)
		found := int32(-1)
		for pos < end {
			sub := word[pos:end]
			var id int32
			var ok bool
			if pos > 0 {
				buf = append(append(buf[:0], m.prefix...), sub...)
				id, ok = m.ids[string(buf)]
			} else {
				id, ok = m.ids[sub]
			}
			if ok {
				found = id
				break
			}
			_, n := utf8.DecodeLastRuneInString(sub)
			end -= n
		}
		if found < 0 {
			return append(dst[:start], int(m.unk))
		}
		dst = append(dst, int(found))
		pos = end
	}
	return dst
}

// wordLevelModel maps each word to its id, or to the unk token.
type wordLevelModel struct {
	*vocabulary
	unk int32
}

func parseWordLevel(o obj) (model, error) {
	var vocab map[string]int
	if err := o.get("vocab", &vocab); err != nil {
		return nil, err
	}
	v, err := newVocabulary(vocab)
	if err != nil {
		return nil, fmt.Errorf("%s.vocab: %v", o.path, err)
	}
	m := &wordLevelModel{vocabulary: v, unk: -1}
	var unk *string
	if err := o.get("unk_token", &unk); err != nil {
		return nil, err
	}
	if unk != nil {
		id, ok := v.ids[*unk]
		if !ok {
			return nil, fmt.Errorf("%s.unk_token: %q is not in the vocabulary", o.path, *unk)
		}
		m.unk = id
	}
	return m, nil
}

func (m *wordLevelModel) vocabLen() int { return len(m.ids) }
func (m *wordLevelModel) maxID() int    { return m.vocabulary.maxID }

func (m *wordLevelModel) appendIDs(dst []int, word string, raw bool) []int {
	if raw {
		word = byteLevelMap(word)
	}
	if id, ok := m.ids[word]; ok {
		return append(dst, int(id))
	}
	if m.unk >= 0 {
		return append(dst, int(m.unk))
	}
	return dst
}
