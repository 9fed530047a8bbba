package tokenize

// postProcessor adds the special tokens of a single sequence (HuggingFace's PostProcessor
// with add_special_tokens=true; with false, no processor changes the ids).
type postProcessor interface {
	process(ids []int) []int
}

// templatePost is TemplateProcessing for one sequence: before and after hold the ids of the
// special tokens on each side of the sequence, in order.
type templatePost struct {
	before, after []int
	// bos and eos are the first token before and the last token after the sequence ("" if none).
	bos, eos string
}

func (p *templatePost) process(ids []int) []int {
	out := make([]int, 0, len(p.before)+len(ids)+len(p.after))
	out = append(out, p.before...)
	out = append(out, ids...)
	return append(out, p.after...)
}

type sequencePost []postProcessor

func (p sequencePost) process(ids []int) []int {
	for _, x := range p {
		ids = x.process(ids)
	}
	return ids
}

// noopPost is the ByteLevel post-processor, which only trims offsets.
type noopPost struct{}

func (noopPost) process(ids []int) []int { return ids }
