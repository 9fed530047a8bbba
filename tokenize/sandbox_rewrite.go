package tokenize

import (
	"fmt"
	"sort"
	"strings"
	"unicode"
)

// This file rewrites a chat template's source so that the Jinja engine
// (github.com/ardanlabs/jinja, which has no hooks of its own) calls back into the sandbox
// (sandbox.go) wherever a template can spend unbounded time or memory:
//
//   - each loop's iterable is counted ({% for x in (e)|__ortalign_iter %}) and each loop
//     iteration, macro call and call-block body starts with
//     {{ __ortalign_loop(n) }} or {{ __ortalign_call(n) }}, n being the bytes of literal
//     text that body can write;
//   - {{ e }} becomes {{ (e)|__ortalign_out }} (a literal counts as text), and
//     {% set x = e %} becomes {% set x = (e)|__ortalign_set(ns) %};
//   - the operators that build strings or lists (a * b, and a ~ b and a + b unless an
//     operand is a literal) become (a)|__ortalign_mul((b)) and so on; the filters whose output can outgrow their input
//     (join, indent, replace, tojson with arguments) are renamed to guarded versions, and
//     every other built-in filter is preceded by |__ortalign_chk, which measures its input;
//   - the methods that grow a value or tie it to itself (replace, format, append, insert,
//     update) are called through guards.
//
// The rewriter mirrors the engine's scanner and parser so that the rewritten source
// parses to the same tree plus the guards: inserted tags are expression tags without
// trim markers (the engine's whitespace control skips them), and every guard is a filter
// or a call whose arguments are whole expressions. The instrumented template is compiled
// only after the original compiled, so errors in a template read as before.

// sandboxPrefix starts every name the rewriter introduces; a template that uses it is
// refused, so that it cannot replace a guard with a function of its own.
const sandboxPrefix = "__ortalign_"

// Limits on the template source, checked before the engine parses it: its parser
// recurses once per nesting level, and a Go stack that overflows ends the process.
const (
	maxTemplateSource   = 1 << 20 // bytes
	maxTemplateSegments = 20000   // tags and texts (the engine's whitespace pass is quadratic in them)
	maxTemplateNesting  = 500     // nested blocks, or nesting levels within one tag
)

// Segment kinds, as the engine's scanner names them.
type segKind int

const (
	segText segKind = iota
	segComment
	segExpr
	segStmt
)

// tmplSeg is one segment of a template source as the engine's scanner splits it.
type tmplSeg struct {
	kind       segKind
	start, end int // the whole segment, delimiters and trim markers included
	body, bend int // the content between delimiters and trim markers
}

// scanTemplate splits src as the engine's scanner does (jinja scan.go).
func scanTemplate(src string) ([]tmplSeg, error) {
	var segs []tmplSeg
	i, textStart := 0, 0
	for i < len(src) {
		if src[i] != '{' || i+1 >= len(src) {
			i++
			continue
		}
		var kind segKind
		var closer string
		switch src[i+1] {
		case '{':
			kind, closer = segExpr, "}}"
		case '%':
			kind, closer = segStmt, "%}"
		case '#':
			kind, closer = segComment, "#}"
		default:
			i++
			continue
		}
		if i > textStart {
			segs = append(segs, tmplSeg{kind: segText, start: textStart, end: i, body: textStart, bend: i})
		}
		tagStart := i
		i += 2
		if i < len(src) && src[i] == '-' {
			i++
		}
		contentStart := i
		found := false
		for i < len(src) {
			ch := src[i]
			if kind != segComment && (ch == '\'' || ch == '"') {
				i++
				for i < len(src) && src[i] != ch {
					if src[i] == '\\' && i+1 < len(src) {
						i++
					}
					i++
				}
				if i < len(src) {
					i++
				}
				continue
			}
			if ch == '-' && i+2 < len(src) && src[i+1] == closer[0] && src[i+2] == closer[1] {
				segs = append(segs, tmplSeg{kind: kind, start: tagStart, end: i + 3, body: contentStart, bend: i})
				i += 3
				found = true
				break
			}
			if i+1 < len(src) && ch == closer[0] && src[i+1] == closer[1] {
				segs = append(segs, tmplSeg{kind: kind, start: tagStart, end: i + 2, body: contentStart, bend: i})
				i += 2
				found = true
				break
			}
			i++
		}
		if !found {
			return nil, fmt.Errorf("unclosed tag at byte %d", tagStart)
		}
		textStart = i
	}
	if textStart < len(src) {
		segs = append(segs, tmplSeg{kind: segText, start: textStart, end: len(src), body: textStart, bend: len(src)})
	}
	return segs, nil
}

// textLengths is the length of each text segment after the engine's whitespace control
// (jinja parse.go applyTrimming: "-" markers, then lstrip_blocks and trim_blocks for
// statement and comment tags), indexed like segs; tags get 0.
func textLengths(src string, segs []tmplSeg) []int {
	texts := make([]string, len(segs))
	prev, next := make([]int, len(segs)), make([]int, len(segs))
	last, first := -1, -1
	for i, s := range segs {
		prev[i] = last
		if s.kind == segText {
			texts[i] = src[s.start:s.end]
			last = i
			if first < 0 {
				first = i
			}
		}
	}
	last = -1
	for i := len(segs) - 1; i >= 0; i-- {
		next[i] = last
		if segs[i].kind == segText {
			last = i
		}
	}
	isBlock := func(s tmplSeg) bool { return s.kind == segStmt || s.kind == segComment }
	trimLeft := func(s tmplSeg) bool { return src[s.start+2] == '-' }
	trimRight := func(s tmplSeg) bool { return s.bend < len(src) && src[s.bend] == '-' }
	for i, s := range segs {
		if j := prev[i]; s.kind != segText && j >= 0 {
			switch {
			case trimLeft(s):
				texts[j] = strings.TrimRight(texts[j], " \t\n\r")
			case isBlock(s):
				texts[j] = lstripBlock(texts[j], j == first)
			}
		}
	}
	for i, s := range segs {
		if j := next[i]; s.kind != segText && j >= 0 {
			switch {
			case trimRight(s):
				texts[j] = strings.TrimLeft(texts[j], " \t\n\r")
			case isBlock(s):
				if strings.HasPrefix(texts[j], "\r\n") {
					texts[j] = texts[j][2:]
				} else {
					texts[j] = strings.TrimPrefix(texts[j], "\n")
				}
			}
		}
	}
	n := make([]int, len(segs))
	for i := range texts {
		n[i] = len(texts[i])
	}
	return n
}

// lstripBlock removes the spaces and tabs that end s after its last newline (or from
// the template's start), as lstrip_blocks does (jinja parse.go lstripBlock).
func lstripBlock(s string, atTemplateStart bool) string {
	end := len(s)
	for end > 0 && (s[end-1] == ' ' || s[end-1] == '\t') {
		end--
	}
	switch {
	case end == len(s):
		return s
	case end == 0:
		if atTemplateStart {
			return ""
		}
		return s
	case s[end-1] == '\n':
		return s[:end]
	}
	return s
}

// stmtKeyword is the first word of a statement tag (jinja parse.go stmtKeyword).
func stmtKeyword(text string) string {
	text = strings.TrimSpace(text)
	for i, r := range text {
		if !unicode.IsLetter(r) && r != '_' {
			return text[:i]
		}
	}
	return text
}

// trimSpan is strings.TrimSpace(s[a:b]) as the span it leaves.
func trimSpan(s string, a, b int) (int, int) {
	t := strings.TrimLeftFunc(s[a:b], unicode.IsSpace)
	a = b - len(t)
	t = strings.TrimRightFunc(t, unicode.IsSpace)
	return a, a + len(t)
}

// findKeyword finds kw at bracket depth zero outside quotes (jinja parse.go findKeyword).
func findKeyword(s string, kw string) int {
	depth := 0
	inStr := byte(0)
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if inStr != 0 {
			if ch == '\\' && i+1 < len(s) {
				i++
				continue
			}
			if ch == inStr {
				inStr = 0
			}
			continue
		}
		switch ch {
		case '\'', '"':
			inStr = ch
			continue
		case '(', '[', '{':
			depth++
			continue
		case ')', ']', '}':
			depth--
			continue
		}
		if depth == 0 && i+len(kw) <= len(s) && s[i:i+len(kw)] == kw {
			before := i == 0 || !isIdentChar(s[i-1])
			after := i+len(kw) >= len(s) || !isIdentChar(s[i+len(kw)])
			if before && after {
				return i
			}
		}
	}
	return -1
}

func isIdentChar(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_'
}

func isIdent(s string) bool {
	if s == "" || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isIdentChar(s[i]) {
			return false
		}
	}
	return true
}

// splice is a replacement of src[start:end].
type splice struct {
	start, end int
	text       string
}

// applySplices applies non-overlapping splices to s.
func applySplices(s string, sp []splice) string {
	sort.Slice(sp, func(i, j int) bool { return sp[i].start < sp[j].start })
	var b strings.Builder
	pos := 0
	for _, x := range sp {
		b.WriteString(s[pos:x.start])
		b.WriteString(x.text)
		pos = x.end
	}
	b.WriteString(s[pos:])
	return b.String()
}

// block is an open block tag while instrumenting: for, macro and call bodies own the
// literal text written directly inside them, counted on each run of the body.
type block struct {
	keyword string
	owner   bool
	text    int    // bytes of literal text owned
	tick    int    // index in the splices of the tick inserted after the opening tag
	tickFn  string // the tick's guard: "loop" or "call"
}

// Block statements and what opens them (set opens one only without "=").
var blockEnds = map[string]string{
	"endif": "if", "endfor": "for", "endmacro": "macro", "endcall": "call", "endset": "set",
	"endfilter": "filter", "endgeneration": "generation",
}

// opensBlock tells whether a statement with keyword kw and text opens a block.
func opensBlock(kw, text string) bool {
	switch kw {
	case "if", "for", "macro", "call", "filter", "generation":
		return true
	case "set":
		return !strings.Contains(text, "=")
	}
	return false
}

// preflightTemplate refuses, before the engine parses src, a template whose parsing
// would take the engine too deep or too long: too large, too many tags, blocks nested
// too deep, or a tag nesting too many levels.
func preflightTemplate(src string) error {
	if len(src) > maxTemplateSource {
		return fmt.Errorf("the template is %d bytes; the sandbox accepts at most %d", len(src), maxTemplateSource)
	}
	segs, err := scanTemplate(src)
	if err != nil {
		return nil // the engine reports it
	}
	if len(segs) > maxTemplateSegments {
		return fmt.Errorf("the template has %d tags and texts; the sandbox accepts at most %d", len(segs), maxTemplateSegments)
	}
	depth := 0
	for k := 0; k < len(segs); k++ {
		s := segs[k]
		if s.kind != segExpr && s.kind != segStmt {
			continue
		}
		text := src[s.body:s.bend]
		if err := checkNesting(text); err != nil {
			return err
		}
		if s.kind != segStmt {
			continue
		}
		switch kw := stmtKeyword(text); {
		case kw == "raw":
			for k+1 < len(segs) && !(segs[k+1].kind == segStmt && stmtKeyword(src[segs[k+1].body:segs[k+1].bend]) == "endraw") {
				k++
			}
			k++
		case opensBlock(kw, text):
			if depth++; depth > maxTemplateNesting {
				return fmt.Errorf("blocks nested more than %d deep", maxTemplateNesting)
			}
		case blockEnds[kw] != "":
			depth--
		}
	}
	return nil
}

// instrumentTemplate returns src with the sandbox's guards (see the top of this file).
// src must already compile with the engine and pass preflightTemplate.
func instrumentTemplate(src string) (string, error) {
	if strings.Contains(src, sandboxPrefix) {
		return "", fmt.Errorf("the template uses the name prefix %s, which the sandbox reserves", sandboxPrefix)
	}
	segs, err := scanTemplate(src)
	if err != nil {
		return "", err
	}
	var out []splice
	var stack, owners []*block
	owner := func() *block {
		for i := len(stack) - 1; i >= 0; i-- {
			if stack[i].owner {
				return stack[i]
			}
		}
		return nil
	}
	open := func(kw string, s tmplSeg, tickFn string) {
		b := &block{keyword: kw}
		if tickFn != "" {
			b.owner, b.tickFn, b.tick = true, tickFn, len(out)
			out = append(out, splice{start: s.end, end: s.end}) // its text is set at the end
			owners = append(owners, b)
		}
		stack = append(stack, b)
	}
	exprAt := func(s string, a, b int) (string, bool, error) { // rewrites s[a:b] as one expression
		a, b = trimSpan(s, a, b)
		if a == b {
			return "", false, nil
		}
		r, err := rewriteExpr(s[a:b])
		if err != nil {
			return "", false, err
		}
		return r, r != s[a:b], nil
	}
	written := textLengths(src, segs)
	for k := 0; k < len(segs); k++ {
		s := segs[k]
		switch s.kind {
		case segText:
			if o := owner(); o != nil {
				o.text += written[k]
			}
			continue
		case segComment:
			continue
		case segExpr:
			a, b := trimSpan(src, s.body, s.bend)
			if a == b {
				continue
			}
			if n, ok := literalWrites(src[a:b]); ok { // writes what the source holds: count it as text
				if o := owner(); o != nil {
					o.text += n
				}
				continue
			}
			r, err := rewriteExpr(src[a:b])
			if err != nil {
				return "", err
			}
			out = append(out, splice{a, b, "(" + r + ")|" + sandboxPrefix + "out"})
			continue
		}
		text := src[s.body:s.bend]
		kw := stmtKeyword(text)
		ta, tb := trimSpan(text, 0, len(text))
		var sp []splice // splices within text
		rewrite := func(a, b int, wrap func(string) string) error {
			r, changed, err := exprAt(text, a, b)
			if err != nil {
				return err
			}
			a, b = trimSpan(text, a, b)
			if wrap != nil && a < b {
				r, changed = wrap(r), true
			}
			if changed {
				sp = append(sp, splice{a, b, r})
			}
			return nil
		}
		var err error
		switch kw {
		case "raw":
			for k+1 < len(segs) && !(segs[k+1].kind == segStmt && stmtKeyword(src[segs[k+1].body:segs[k+1].bend]) == "endraw") {
				k++
				if o := owner(); o != nil && segs[k].kind != segComment {
					o.text += segs[k].end - segs[k].start
				}
			}
			k++
			continue
		case "if", "elif":
			err = rewrite(ta+len(kw), tb, nil)
		case "for":
			err = rewriteFor(text, ta+len(kw), tb, rewrite)
		case "macro":
			err = rewriteMacro(text, ta+len(kw), tb, rewrite)
		case "call":
			a, b := trimSpan(text, ta+len(kw), tb)
			if strings.HasPrefix(text[a:b], "(") {
				if c := strings.Index(text[a:b], ")"); c >= 0 {
					a = a + c + 1
				}
			}
			err = rewrite(a, b, nil)
		case "set":
			a, b := trimSpan(text, ta+len(kw), tb)
			eq := strings.Index(text[a:b], "=")
			if eq < 0 {
				break // {% set x %}...{% endset %}
			}
			ns := ""
			target := strings.TrimSpace(text[a : a+eq])
			if before, _, ok := strings.Cut(target, "."); ok && isIdent(strings.TrimSpace(before)) {
				ns = strings.TrimSpace(before)
			}
			err = rewrite(a+eq+1, b, func(r string) string {
				if ns != "" {
					return "(" + r + ")|" + sandboxPrefix + "set(" + ns + ")"
				}
				return "(" + r + ")|" + sandboxPrefix + "set"
			})
		}
		if err != nil {
			return "", err
		}
		if len(sp) > 0 {
			out = append(out, splice{s.body, s.bend, applySplices(text, sp)})
		}
		switch {
		case opensBlock(kw, text):
			tickFn := ""
			switch kw {
			case "for":
				tickFn = "loop"
			case "macro", "call":
				tickFn = "call"
			}
			open(kw, s, tickFn)
		case blockEnds[kw] != "":
			if len(stack) > 0 && stack[len(stack)-1].keyword == blockEnds[kw] {
				stack = stack[:len(stack)-1]
			}
		}
	}
	for _, b := range owners {
		out[b.tick].text = fmt.Sprintf("{{ %s%s(%d) }}", sandboxPrefix, b.tickFn, b.text)
	}
	return applySplices(src, out), nil
}

// literalWrites tells whether expression s is one string or number literal, and the most
// bytes printing it writes (escapes only shorten a string; %g can lengthen a number).
func literalWrites(s string) (int, bool) {
	t := lexExpr(s)
	if len(t) != 2 {
		return 0, false
	}
	switch t[0].kind {
	case tkString:
		return max(len(t[0].val)-2, 0), true
	case tkInt, tkFloat:
		return len(t[0].val) + 24, true
	}
	return 0, false
}

// guardsUsed lists the guards an instrumented source calls (the original has none of
// the prefix), so that a render installs only those.
func guardsUsed(instrumented string) map[string]bool {
	used := map[string]bool{}
	for rest := instrumented; ; {
		i := strings.Index(rest, sandboxPrefix)
		if i < 0 {
			return used
		}
		rest = rest[i+len(sandboxPrefix):]
		n := 0
		for n < len(rest) && isIdentChar(rest[n]) {
			n++
		}
		used[rest[:n]] = true
	}
}

// rewriteFor rewrites the iterable and the filter of "for x in iter [if cond]
// [recursive]" in text[a:b], split as the engine splits it (jinja parse.go parseFor).
func rewriteFor(text string, a, b int, rewrite func(a, b int, wrap func(string) string) error) error {
	a, b = trimSpan(text, a, b)
	in := findKeyword(text[a:b], "in")
	if in < 0 {
		return nil
	}
	ia, ib := trimSpan(text, a+in+2, b)
	if rec := findKeyword(text[ia:ib], "recursive"); rec >= 0 {
		ia, ib = trimSpan(text, ia, ia+rec)
	}
	if ifk := findKeyword(text[ia:ib], "if"); ifk >= 0 {
		if err := rewrite(ia+ifk+2, ib, nil); err != nil {
			return err
		}
		ib = ia + ifk
	}
	return rewrite(ia, ib, func(r string) string { return "(" + r + ")|" + sandboxPrefix + "iter" })
}

// rewriteMacro rewrites the default values of "macro name(p, q=default)" in text[a:b],
// split as the engine splits it (jinja parse.go parseMacro).
func rewriteMacro(text string, a, b int, rewrite func(a, b int, wrap func(string) string) error) error {
	a, b = trimSpan(text, a, b)
	open := strings.Index(text[a:b], "(")
	if open < 0 {
		return nil
	}
	pa, pb := a+open+1, b
	if strings.HasSuffix(text[pa:pb], ")") {
		pb--
	}
	for pa <= pb {
		end := strings.Index(text[pa:pb], ",")
		if end < 0 {
			end = pb - pa
		}
		if eq := strings.Index(text[pa:pa+end], "="); eq >= 0 {
			if err := rewrite(pa+eq+1, pa+end, nil); err != nil {
				return err
			}
		}
		pa += end + 1
	}
	return nil
}

// checkNesting refuses a tag whose expression would make the engine's parser recurse
// more than maxTemplateNesting levels: brackets, and the prefix operators and
// else-chains that it parses by recursion.
func checkNesting(text string) error {
	depth, maxDepth, prefix := 0, 0, 0
	for _, t := range lexExpr(text) {
		switch t.kind {
		case tkLParen, tkLBracket, tkLBrace:
			depth++
			maxDepth = max(maxDepth, depth)
		case tkRParen, tkRBracket, tkRBrace:
			depth--
		case tkOp:
			if t.val == "-" || t.val == "+" {
				prefix++
			}
		case tkName:
			if t.val == "not" || t.val == "else" {
				prefix++
			}
		}
	}
	if maxDepth+prefix > maxTemplateNesting {
		return fmt.Errorf("a tag nests more than %d levels", maxTemplateNesting)
	}
	return nil
}

// ---------------------------------------------------------------------------
// Expressions: a mirror of the engine's tokenizer and recursive-descent parser that
// keeps source spans, so that sub-expressions can be rewritten in place.

type tkKind int

const (
	tkName tkKind = iota
	tkInt
	tkFloat
	tkString
	tkOp
	tkComma
	tkDot
	tkColon
	tkLParen
	tkRParen
	tkLBracket
	tkRBracket
	tkLBrace
	tkRBrace
	tkPipe
	tkTilde
	tkPower
	tkFloorDiv
	tkEOF
)

type tk struct {
	kind       tkKind
	val        string
	start, end int
}

// lexExpr tokenizes an expression as the engine does (jinja parse.go tokenizeExpr).
func lexExpr(s string) []tk {
	var toks []tk
	i := 0
	for i < len(s) {
		ch := s[i]
		start := i
		switch {
		case ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r':
			i++
			continue
		case ch == '\'' || ch == '"':
			i++
			for i < len(s) && s[i] != ch {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				i++
			}
			if i < len(s) {
				i++
			}
			toks = append(toks, tk{tkString, s[start:i], start, i})
			continue
		case ch >= '0' && ch <= '9':
			for i < len(s) && s[i] >= '0' && s[i] <= '9' {
				i++
			}
			kind := tkInt
			if i < len(s) && s[i] == '.' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9' {
				kind = tkFloat
				i++
				for i < len(s) && s[i] >= '0' && s[i] <= '9' {
					i++
				}
				if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
					i++
					if i < len(s) && (s[i] == '+' || s[i] == '-') {
						i++
					}
					for i < len(s) && s[i] >= '0' && s[i] <= '9' {
						i++
					}
				}
			}
			toks = append(toks, tk{kind, s[start:i], start, i})
			continue
		case ch == '_' || ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z':
			for i < len(s) && isIdentChar(s[i]) {
				i++
			}
			toks = append(toks, tk{tkName, s[start:i], start, i})
			continue
		}
		if i+1 < len(s) {
			two := s[i : i+2]
			kind := tkEOF
			switch two {
			case "**":
				kind = tkPower
			case "//":
				kind = tkFloorDiv
			case "==", "!=", "<=", ">=":
				kind = tkOp
			}
			if kind != tkEOF {
				toks = append(toks, tk{kind, two, i, i + 2})
				i += 2
				continue
			}
		}
		kind := tkEOF
		switch ch {
		case ',':
			kind = tkComma
		case '.':
			kind = tkDot
		case ':':
			kind = tkColon
		case '(':
			kind = tkLParen
		case ')':
			kind = tkRParen
		case '[':
			kind = tkLBracket
		case ']':
			kind = tkRBracket
		case '{':
			kind = tkLBrace
		case '}':
			kind = tkRBrace
		case '|':
			kind = tkPipe
		case '~':
			kind = tkTilde
		case '+', '-', '*', '/', '%', '<', '>', '=':
			kind = tkOp
		}
		if kind != tkEOF {
			toks = append(toks, tk{kind, s[i : i+1], i, i + 1})
		}
		i++
	}
	return append(toks, tk{kind: tkEOF, start: len(s), end: len(s)})
}

// Node kinds of the mirrored parse tree.
type xKind int

const (
	xOther  xKind = iota
	xBin          // binary operator, op
	xFilter       // filter op; name at [nameStart, nameEnd), its "|" at pipe
	xAttr         // attribute op of kids[0]
	xCall         // call of kids[0]; its "(" at paren
)

// xnode is a node of the mirrored parse tree with its source span [start, end) and its
// sub-expressions in source order.
type xnode struct {
	kind               xKind
	op                 string
	start, end         int
	kids               []*xnode
	pipe               int
	nameStart, nameEnd int
	paren              int
	hasArgs            bool
	literal            bool // a string or number literal
}

type xparser struct {
	src   string
	toks  []tk
	pos   int
	depth int
}

func (p *xparser) peek() tk {
	if p.pos >= len(p.toks) {
		return tk{kind: tkEOF, start: len(p.src), end: len(p.src)}
	}
	return p.toks[p.pos]
}

func (p *xparser) advance() tk { t := p.peek(); p.pos++; return t }

func (p *xparser) isName(v string) bool { t := p.peek(); return t.kind == tkName && t.val == v }

func (p *xparser) expect(kind tkKind) error {
	if t := p.advance(); t.kind != kind {
		return fmt.Errorf("unexpected %q", t.val)
	}
	return nil
}

// node makes a node spanning from token `from` to the last consumed token.
func (p *xparser) node(kind xKind, op string, from int, kids ...*xnode) *xnode {
	from = min(from, len(p.toks)-1)
	end := max(from, min(p.pos-1, len(p.toks)-1))
	return &xnode{kind: kind, op: op, start: p.toks[from].start, end: p.toks[end].end, kids: kids}
}

func (p *xparser) enter() error {
	p.depth++
	if p.depth > 4*maxTemplateNesting {
		return fmt.Errorf("an expression nests more than %d levels", maxTemplateNesting)
	}
	return nil
}

// rewriteExpr returns the expression s with the sandbox's guards, parsed as the engine
// parses it (jinja parse.go parseExpr).
func rewriteExpr(s string) (string, error) {
	a, b := trimSpan(s, 0, len(s))
	if a == b {
		return s, nil
	}
	p := &xparser{src: s, toks: lexExpr(s)}
	n, err := p.expression()
	if err != nil {
		return "", err
	}
	if p.peek().kind != tkEOF {
		return "", fmt.Errorf("unexpected %q after expression", p.peek().val)
	}
	return s[:n.start] + emit(s, n) + s[n.end:], nil
}

func (p *xparser) expression() (*xnode, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer func() { p.depth-- }()
	from := p.pos
	e, err := p.or()
	if err != nil {
		return nil, err
	}
	if p.isName("if") {
		p.advance()
		cond, err := p.or()
		if err != nil {
			return nil, err
		}
		kids := []*xnode{e, cond}
		if p.isName("else") {
			p.advance()
			f, err := p.expression()
			if err != nil {
				return nil, err
			}
			kids = append(kids, f)
		}
		return p.node(xOther, "", from, kids...), nil
	}
	return e, nil
}

// chain parses left-associative operators: next (op next)*.
func (p *xparser) chain(next func() (*xnode, error), match func(tk) bool) (*xnode, error) {
	from := p.pos
	left, err := next()
	if err != nil {
		return nil, err
	}
	for match(p.peek()) {
		op := p.advance().val
		right, err := next()
		if err != nil {
			return nil, err
		}
		left = p.node(xBin, op, from, left, right)
	}
	return left, nil
}

func (p *xparser) or() (*xnode, error) {
	return p.chain(p.and, func(t tk) bool { return t.kind == tkName && t.val == "or" })
}

func (p *xparser) and() (*xnode, error) {
	return p.chain(p.not, func(t tk) bool { return t.kind == tkName && t.val == "and" })
}

func (p *xparser) not() (*xnode, error) {
	if p.isName("not") {
		if err := p.enter(); err != nil {
			return nil, err
		}
		defer func() { p.depth-- }()
		from := p.pos
		p.advance()
		operand, err := p.not()
		if err != nil {
			return nil, err
		}
		return p.node(xOther, "", from, operand), nil
	}
	return p.comparison()
}

func (p *xparser) comparison() (*xnode, error) {
	from := p.pos
	left, err := p.concat()
	if err != nil {
		return nil, err
	}
	for {
		t := p.peek()
		switch {
		case t.kind == tkOp && (t.val == "==" || t.val == "!=" || t.val == "<" || t.val == ">" || t.val == "<=" || t.val == ">="),
			t.kind == tkName && t.val == "in":
			p.advance()
		case t.kind == tkName && t.val == "not" && p.pos+1 < len(p.toks) && p.toks[p.pos+1].kind == tkName && p.toks[p.pos+1].val == "in":
			p.advance()
			p.advance()
		case t.kind == tkName && t.val == "is":
			p.advance()
			if p.isName("not") {
				p.advance()
			}
			p.advance() // the test's name
			kids := []*xnode{left}
			if p.peek().kind == tkLParen {
				p.advance()
				for p.peek().kind != tkRParen && p.peek().kind != tkEOF {
					arg, err := p.expression()
					if err != nil {
						return nil, err
					}
					kids = append(kids, arg)
					if p.peek().kind == tkComma {
						p.advance()
					}
				}
				if err := p.expect(tkRParen); err != nil {
					return nil, err
				}
			}
			left = p.node(xOther, "", from, kids...)
			continue
		default:
			return left, nil
		}
		right, err := p.concat()
		if err != nil {
			return nil, err
		}
		left = p.node(xBin, t.val, from, left, right)
	}
}

func (p *xparser) concat() (*xnode, error) {
	return p.chain(p.addSub, func(t tk) bool { return t.kind == tkTilde })
}

func (p *xparser) addSub() (*xnode, error) {
	return p.chain(p.mulDiv, func(t tk) bool { return t.kind == tkOp && (t.val == "+" || t.val == "-") })
}

func (p *xparser) mulDiv() (*xnode, error) {
	return p.chain(p.power, func(t tk) bool {
		return t.kind == tkOp && (t.val == "*" || t.val == "/" || t.val == "%") || t.kind == tkFloorDiv
	})
}

func (p *xparser) power() (*xnode, error) {
	from := p.pos
	base, err := p.unary()
	if err != nil {
		return nil, err
	}
	if p.peek().kind == tkPower {
		p.advance()
		exp, err := p.unary()
		if err != nil {
			return nil, err
		}
		return p.node(xBin, "**", from, base, exp), nil
	}
	return base, nil
}

func (p *xparser) unary() (*xnode, error) {
	if t := p.peek(); t.kind == tkOp && (t.val == "-" || t.val == "+") {
		if err := p.enter(); err != nil {
			return nil, err
		}
		defer func() { p.depth-- }()
		from := p.pos
		p.advance()
		operand, err := p.unary()
		if err != nil {
			return nil, err
		}
		return p.node(xOther, "", from, operand), nil
	}
	return p.postfix()
}

func (p *xparser) postfix() (*xnode, error) {
	from := p.pos
	e, err := p.atom()
	if err != nil {
		return nil, err
	}
	for {
		t := p.peek()
		switch t.kind {
		case tkDot:
			p.advance()
			attr := p.advance()
			if attr.kind != tkName && attr.kind != tkInt {
				return nil, fmt.Errorf("expected attribute name after '.', got %q", attr.val)
			}
			e = p.node(xAttr, attr.val, from, e)
			if p.peek().kind == tkLParen {
				paren := p.peek().start
				p.advance()
				args, err := p.callArgs()
				if err != nil {
					return nil, err
				}
				e = p.node(xCall, "", from, append([]*xnode{e}, args...)...)
				e.paren = paren
			}
		case tkLBracket:
			p.advance()
			kids := []*xnode{e}
			isSlice := p.peek().kind == tkColon
			if !isSlice {
				k, err := p.expression()
				if err != nil {
					return nil, err
				}
				kids = append(kids, k)
				isSlice = p.peek().kind == tkColon
			}
			if isSlice {
				if p.peek().kind == tkColon {
					p.advance()
				}
				if p.peek().kind != tkRBracket && p.peek().kind != tkColon {
					k, err := p.expression()
					if err != nil {
						return nil, err
					}
					kids = append(kids, k)
				}
				if p.peek().kind == tkColon {
					p.advance()
					if p.peek().kind != tkRBracket {
						k, err := p.expression()
						if err != nil {
							return nil, err
						}
						kids = append(kids, k)
					}
				}
			}
			if err := p.expect(tkRBracket); err != nil {
				return nil, err
			}
			e = p.node(xOther, "", from, kids...)
		case tkLParen:
			paren := t.start
			p.advance()
			args, err := p.callArgs()
			if err != nil {
				return nil, err
			}
			e = p.node(xCall, "", from, append([]*xnode{e}, args...)...)
			e.paren = paren
		case tkPipe:
			pipe := t.start
			p.advance()
			name := p.advance()
			if name.kind != tkName {
				return nil, fmt.Errorf("expected filter name after '|', got %q", name.val)
			}
			kids := []*xnode{e}
			hasArgs := false
			if p.peek().kind == tkLParen {
				hasArgs = true
				p.advance()
				args, err := p.callArgs()
				if err != nil {
					return nil, err
				}
				kids = append(kids, args...)
			}
			e = p.node(xFilter, name.val, from, kids...)
			e.pipe, e.nameStart, e.nameEnd, e.hasArgs = pipe, name.start, name.end, hasArgs
		default:
			return e, nil
		}
	}
}

func (p *xparser) atom() (*xnode, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer func() { p.depth-- }()
	from := p.pos
	t := p.peek()
	switch t.kind {
	case tkName, tkInt, tkFloat, tkString:
		p.advance()
		n := p.node(xOther, "", from)
		n.literal = t.kind != tkName
		return n, nil
	case tkLParen:
		p.advance()
		if p.peek().kind == tkRParen {
			p.advance()
			return p.node(xOther, "", from), nil
		}
		e, err := p.expression()
		if err != nil {
			return nil, err
		}
		if p.peek().kind == tkComma {
			kids := []*xnode{e}
			for p.peek().kind == tkComma {
				p.advance()
				if p.peek().kind == tkRParen {
					break
				}
				item, err := p.expression()
				if err != nil {
					return nil, err
				}
				kids = append(kids, item)
			}
			if err := p.expect(tkRParen); err != nil {
				return nil, err
			}
			return p.node(xOther, "", from, kids...), nil
		}
		if err := p.expect(tkRParen); err != nil {
			return nil, err
		}
		return e, nil
	case tkLBracket, tkLBrace:
		closer := tkRBracket
		if t.kind == tkLBrace {
			closer = tkRBrace
		}
		p.advance()
		var kids []*xnode
		for p.peek().kind != closer && p.peek().kind != tkEOF {
			item, err := p.expression()
			if err != nil {
				return nil, err
			}
			kids = append(kids, item)
			if t.kind == tkLBrace {
				if err := p.expect(tkColon); err != nil {
					return nil, err
				}
				v, err := p.expression()
				if err != nil {
					return nil, err
				}
				kids = append(kids, v)
			}
			if p.peek().kind == tkComma {
				p.advance()
			}
		}
		if err := p.expect(closer); err != nil {
			return nil, err
		}
		return p.node(xOther, "", from, kids...), nil
	case tkOp:
		if t.val == "-" {
			p.advance()
			operand, err := p.atom()
			if err != nil {
				return nil, err
			}
			return p.node(xOther, "", from, operand), nil
		}
	}
	return nil, fmt.Errorf("unexpected token %q", t.val)
}

// callArgs parses "args)" after "(" (jinja parse.go parseCallArgs).
func (p *xparser) callArgs() ([]*xnode, error) {
	var args []*xnode
	for p.peek().kind != tkRParen && p.peek().kind != tkEOF {
		if p.peek().kind == tkName && p.pos+1 < len(p.toks) && p.toks[p.pos+1].kind == tkOp && p.toks[p.pos+1].val == "=" {
			p.advance()
			p.advance()
		}
		a, err := p.expression()
		if err != nil {
			return nil, err
		}
		args = append(args, a)
		if p.peek().kind == tkComma {
			p.advance()
		}
	}
	return args, p.expect(tkRParen)
}

// Built-in filters of the engine (jinja builtins.go registerFilters).
var builtinFilters = map[string]bool{
	"tojson": true, "from_json": true, "fromjson": true, "items": true, "join": true, "default": true,
	"d": true, "trim": true, "lower": true, "upper": true, "title": true, "capitalize": true, "first": true,
	"last": true, "length": true, "count": true, "reverse": true, "sort": true, "unique": true, "list": true,
	"int": true, "float": true, "string": true, "safe": true, "replace": true, "round": true, "abs": true,
	"map": true, "select": true, "reject": true, "selectattr": true, "rejectattr": true, "indent": true,
	"wordcount": true, "escape": true, "e": true, "dictsort": true, "max": true, "min": true, "sum": true,
	"batch": true,
}

// guardedFilters are the filters whose output can outgrow their input through their
// arguments; called with arguments they run through a guard of the same name.
var guardedFilters = map[string]bool{"join": true, "indent": true, "replace": true, "tojson": true}

// guardedMethods are the methods that can grow a value past its inputs (replace,
// format) or tie a list or dict to itself (append, insert, update).
var guardedMethods = map[string]bool{"replace": true, "format": true, "append": true, "insert": true, "update": true}

// binaryGuards are the operators that build strings or lists, and their guards.
var binaryGuards = map[string]string{"*": "mul", "~": "cat", "+": "add"}

// emit prints node n of expression src with its guards.
func emit(src string, n *xnode) string {
	switch n.kind {
	case xBin:
		// A literal operand of ~ or + adds what the source holds: only * multiplies.
		if g, ok := binaryGuards[n.op]; ok && (n.op == "*" || !n.kids[0].literal && !n.kids[1].literal) {
			return "(" + emit(src, n.kids[0]) + ")|" + sandboxPrefix + g + "((" + emit(src, n.kids[1]) + "))"
		}
	case xCall:
		if fn := n.kids[0]; fn.kind == xAttr && guardedMethods[fn.op] {
			return "(" + emit(src, fn.kids[0]) + ")|" + sandboxPrefix + "m_" + fn.op + emitRange(src, n.paren, n.end, n.kids[1:])
		}
	case xAttr:
		if guardedMethods[n.op] {
			return "(" + emit(src, n.kids[0]) + ")|" + sandboxPrefix + "a_" + n.op
		}
	case xFilter:
		if builtinFilters[n.op] {
			head := emitRange(src, n.start, n.pipe, n.kids[:1])
			tail := emitRange(src, n.nameEnd, n.end, n.kids[1:])
			if n.hasArgs && guardedFilters[n.op] {
				return head + "|" + sandboxPrefix + "f_" + n.op + tail
			}
			return head + "|" + sandboxPrefix + "chk|" + n.op + tail
		}
	}
	return emitRange(src, n.start, n.end, n.kids)
}

// emitRange prints src[a:b] with the given nodes in it replaced by their guarded form.
func emitRange(src string, a, b int, kids []*xnode) string {
	var sb strings.Builder
	pos := a
	for _, k := range kids {
		if k.start < pos || k.end > b { // cannot happen for a tree the parser built
			continue
		}
		sb.WriteString(src[pos:k.start])
		sb.WriteString(emit(src, k))
		pos = k.end
	}
	sb.WriteString(src[pos:b])
	return sb.String()
}
