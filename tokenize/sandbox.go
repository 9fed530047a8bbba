package tokenize

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ardanlabs/jinja"
)

// Chat templates come with downloaded models and are untrusted: they render in a sandbox
// (the guards that sandbox_rewrite.go puts into the template call the methods below).
// A template that goes past one of these limits is an error wrapping ErrTemplateLimit
// that names the template; so is a cancelled context (wrapping the context's error).
const (
	// MaxTemplateRange is the most items range() may give, as in jinja2's
	// SandboxedEnvironment (MAX_RANGE), which transformers renders templates in.
	MaxTemplateRange = 100_000

	// MaxTemplateOutput bounds, together with four times the size of the conversation,
	// both the text one render writes (counting text that macros, call blocks and
	// {% set %} blocks write as often as they write it) and the size of any one string,
	// list or dict that the template builds (as printed).
	MaxTemplateOutput = 4 << 20

	// MaxTemplateSteps bounds the work of one render: the items of each loop and its
	// iterations, macro calls, range() items, the items the sandbox measures, and one step
	// for every 256 bytes of the strings the template builds (about a second of work).
	MaxTemplateSteps = 5_000_000

	// MaxTemplateTime bounds one render's wall time (a backstop: the step budget ends any
	// template first unless the machine is starved).
	MaxTemplateTime = 10 * time.Second
)

// Limits of the sandbox that are not part of the API.
const (
	maxValueDepth  = 200   // nesting of lists and dicts (Python's repr stops near 1000 frames)
	maxCallFrames  = 20000 // Go frames of nested macro calls, several hundred levels
	callCheckEvery = 16    // macro calls between two checks of the stack's depth
	callSteps      = 16    // steps a macro call counts for (it costs as much as about 16 loop iterations)
)

// ErrTemplateLimit is wrapped by the error of a chat template that the sandbox stopped.
var ErrTemplateLimit = errors.New("chat template stopped by the sandbox")

// sandbox is the state of one render.
type sandbox struct {
	ctx     context.Context
	start   time.Time
	limit   int64 // bytes of output, and of any one value
	steps   int64
	calls   int64 // charges, for checking the clock now and then
	macros  int64 // macro and caller calls, for checking the stack now and then
	emitted int64
	err     error // the first limit crossed, or the context's error; every guard returns it after

	input map[any]measured // sizes of the conversation's lists and dicts, kept across guards
	memo  map[any]measured // sizes within one measurement
	busy  map[any]bool     // containers being measured (a container met again is a cycle)
}

// measured is the printed size of a value and the depth of its nesting.
type measured struct {
	size  int64
	depth int
}

// newSandbox starts the sandbox of a render of vars.
func newSandbox(ctx context.Context, vars map[string]jinja.Value) *sandbox {
	s := &sandbox{ctx: ctx, start: time.Now(), input: map[any]measured{}}
	var in int64
	for _, v := range vars {
		m := s.measureInto(v, s.input, 0)
		in = satAdd(in, m.size)
	}
	s.steps = 0 // measuring the input is not the template's work
	s.limit = satAdd(MaxTemplateOutput, satMul(4, in))
	return s
}

// fail records that the template crossed a limit.
func (s *sandbox) fail(format string, args ...any) error {
	if s.err == nil {
		s.err = fmt.Errorf("%w: "+format, append([]any{ErrTemplateLimit}, args...)...)
	}
	return s.err
}

// charge counts n steps of work and checks the context and the clock.
func (s *sandbox) charge(n int64) error {
	if s.err != nil {
		return s.err
	}
	s.steps += n
	if s.steps > MaxTemplateSteps {
		return s.fail("more than %d steps (loop iterations, calls, items)", MaxTemplateSteps)
	}
	if err := s.ctx.Err(); err != nil {
		s.err = err
		return err
	}
	if s.calls++; s.calls&255 == 0 && time.Since(s.start) > MaxTemplateTime {
		return s.fail("rendering took more than %v", MaxTemplateTime)
	}
	return nil
}

// emit counts n bytes of output.
func (s *sandbox) emit(n int64) error {
	if s.emitted = satAdd(s.emitted, n); s.emitted > s.limit {
		return s.fail("writes more than %d bytes", s.limit)
	}
	return s.charge(1)
}

// built checks a string or value of n bytes that the template builds, and charges for it.
func (s *sandbox) built(what string, n int64) error {
	if n > s.limit {
		return s.fail("%s of %d bytes; the limit is %d", what, n, s.limit)
	}
	return s.charge(1 + n/256)
}

// measure is the printed size of v (an upper bound of what {{ v }} and the string
// filters write) and its nesting depth. A value that contains itself, or nests more than
// maxValueDepth levels, fails the sandbox.
func (s *sandbox) measure(v jinja.Value) measured {
	s.memo, s.busy = nil, nil
	return s.measureInto(v, nil, 0)
}

func (s *sandbox) measureInto(v jinja.Value, keep map[any]measured, depth int) measured {
	switch {
	case v.IsString():
		return measured{size: int64(len(v.AsString())) + 2}
	case v.IsList(), v.IsDict():
	case v.IsCallable():
		return measured{size: int64(len(v.AsCallable().Name)) + 12}
	default:
		return measured{size: 24}
	}
	var key any
	if v.IsList() {
		key = v.AsList()
	} else {
		key = v.AsDict()
	}
	if m, ok := s.input[key]; ok {
		return m
	}
	if m, ok := s.memo[key]; ok {
		return m
	}
	if s.busy[key] {
		s.fail("a list or dict contains itself")
		return measured{size: math.MaxInt64 / 4}
	}
	if depth >= maxValueDepth {
		s.fail("lists or dicts nested more than %d deep", maxValueDepth)
		return measured{size: math.MaxInt64 / 4}
	}
	if s.busy == nil {
		s.busy = map[any]bool{}
	}
	s.busy[key] = true
	m := measured{size: 2}
	volatile := false
	add := func(item jinja.Value, extra int64) {
		im := s.measureInto(item, keep, depth+1)
		m.size = satAdd(m.size, satAdd(im.size, extra))
		m.depth = max(m.depth, im.depth+1)
		s.steps++
	}
	if v.IsList() {
		for _, item := range v.AsList().Items {
			add(item, 2)
		}
	} else {
		d := v.AsDict()
		for _, k := range d.Keys {
			add(d.Data[k], int64(len(k))+6)
		}
		// A for loop's "loop" dict changes on every iteration: never remember its size.
		if c, ok := d.Data["cycle"]; ok && c.IsCallable() && c.AsCallable().Name == "loop.cycle" {
			volatile = true
		}
	}
	delete(s.busy, key)
	if !volatile {
		if keep == nil {
			if s.memo == nil {
				s.memo = map[any]measured{}
			}
			keep = s.memo
		}
		keep[key] = m
	}
	return m
}

// check measures v and fails when it is larger than the limit.
func (s *sandbox) check(what string, v jinja.Value) (measured, error) {
	m := s.measure(v)
	if s.err != nil {
		return m, s.err
	}
	return m, s.built(what, m.size)
}

// reaches tells whether target (a list or dict) can be reached from v.
func reaches(v jinja.Value, target any, seen map[any]bool) bool {
	var key any
	switch {
	case v.IsList():
		key = v.AsList()
	case v.IsDict():
		key = v.AsDict()
	default:
		return false
	}
	if key == target {
		return true
	}
	if seen[key] {
		return false
	}
	seen[key] = true
	if v.IsList() {
		for _, item := range v.AsList().Items {
			if reaches(item, target, seen) {
				return true
			}
		}
		return false
	}
	for _, item := range v.AsDict().Data {
		if reaches(item, target, seen) {
			return true
		}
	}
	return false
}

// container is the *List or *Dict that v holds, or nil.
func container(v jinja.Value) any {
	switch {
	case v.IsList():
		return v.AsList()
	case v.IsDict():
		return v.AsDict()
	}
	return nil
}

// mutated forgets the remembered sizes of the conversation when c is one of its parts.
func (s *sandbox) mutated(c any) {
	if _, ok := s.input[c]; ok {
		s.input = nil
	}
}

// install adds the guards in used (all when nil) and the sandbox's range to the
// variables of a render.
func (s *sandbox) install(vars map[string]jinja.Value, used map[string]bool) {
	guard := func(name string, fn func(args []jinja.Value, kwargs map[string]jinja.Value) (jinja.Value, error)) {
		if used != nil && !used[name] {
			return
		}
		vars[sandboxPrefix+name] = jinja.NewCallable(name, func(args []jinja.Value, kwargs map[string]jinja.Value) (jinja.Value, error) {
			if s.err != nil {
				return jinja.Undefined(), s.err
			}
			if len(args) == 0 {
				return jinja.Undefined(), nil
			}
			return fn(args, kwargs)
		})
	}
	guard("loop", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
		return jinja.NewString(""), s.emit(jinjaInt(args[0]))
	})
	guard("call", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
		// Walking the stack costs its depth, so it is walked every callCheckEvery calls:
		// a recursion is stopped at most that many levels past the limit.
		if s.macros++; s.macros%callCheckEvery == 0 {
			pcs := framesPool.Get().(*[]uintptr)
			n := runtime.Callers(0, *pcs)
			framesPool.Put(pcs)
			if n == len(*pcs) {
				return jinja.Undefined(), s.fail("macro calls nested more than %d Go frames deep (recursion)", maxCallFrames)
			}
		}
		if err := s.charge(callSteps - 1); err != nil {
			return jinja.Undefined(), err
		}
		return jinja.NewString(""), s.emit(jinjaInt(args[0]))
	})
	guard("iter", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
		v, n := args[0], 0
		switch {
		case v.IsList():
			n = v.AsList().Len()
		case v.IsDict():
			n = v.AsDict().Len()
		case v.IsString():
			n = len(v.AsString())
		}
		return v, s.charge(int64(n))
	})
	guard("out", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
		m := s.measure(args[0])
		if s.err != nil {
			return jinja.Undefined(), s.err
		}
		return args[0], s.emit(m.size)
	})
	guard("chk", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
		_, err := s.check("a filter's input", args[0])
		return args[0], err
	})
	guard("set", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
		if _, err := s.check("a value", args[0]); err != nil {
			return jinja.Undefined(), err
		}
		if len(args) > 1 {
			if ns := container(args[1]); ns != nil {
				if reaches(args[0], ns, map[any]bool{}) {
					return jinja.Undefined(), s.fail("{%% set %%} puts a namespace inside itself")
				}
				s.mutated(ns)
			}
		}
		return args[0], nil
	})
	guard("mul", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
		a, b := args[0], arg(args, 1)
		switch {
		case a.IsString() && b.IsInt() && b.AsInt() >= 0:
			n, k := int64(len(a.AsString())), b.AsInt()
			if n > 0 && k > s.limit/n {
				return jinja.Undefined(), s.fail("a string of %d bytes repeated %d times; the limit is %d bytes", n, k, s.limit)
			}
			if err := s.built("a string", n*k); err != nil {
				return jinja.Undefined(), err
			}
			return jinja.NewString(strings.Repeat(a.AsString(), int(k))), nil
		case a.IsInt() && b.IsInt():
			return jinja.NewInt(a.AsInt() * b.AsInt()), nil
		}
		return engineBinary("*", a, b)
	})
	guard("cat", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
		a, b := args[0], arg(args, 1)
		if a.IsString() && b.IsString() {
			if err := s.built("a string", int64(len(a.AsString())+len(b.AsString()))); err != nil {
				return jinja.Undefined(), err
			}
			return jinja.NewString(a.AsString() + b.AsString()), nil
		}
		if err := s.sum("a string", a, b); err != nil {
			return jinja.Undefined(), err
		}
		return engineBinary("~", a, b)
	})
	guard("add", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
		a, b := args[0], arg(args, 1)
		switch {
		case a.IsString() && b.IsString():
			if err := s.built("a string", int64(len(a.AsString())+len(b.AsString()))); err != nil {
				return jinja.Undefined(), err
			}
			return jinja.NewString(a.AsString() + b.AsString()), nil
		case a.IsInt() && b.IsInt():
			return jinja.NewInt(a.AsInt() + b.AsInt()), nil
		case a.IsNumber() && b.IsNumber():
			return jinja.NewFloat(jinjaFloat(a) + jinjaFloat(b)), nil
		}
		if err := s.sum("a value", a, b); err != nil {
			return jinja.Undefined(), err
		}
		return engineBinary("+", a, b)
	})
	for name, bound := range map[string]func(args []jinja.Value, kwargs map[string]jinja.Value) error{
		"join": s.joinBound, "indent": s.indentBound, "replace": s.replaceFilterBound, "tojson": s.tojsonBound,
	} {
		guard("f_"+name, func(args []jinja.Value, kwargs map[string]jinja.Value) (jinja.Value, error) {
			if err := bound(args, kwargs); err != nil {
				return jinja.Undefined(), err
			}
			return engineFilter(name, args[0], args[1:], kwargs)
		})
	}
	for name := range guardedMethods {
		guard("m_"+name, func(args []jinja.Value, kwargs map[string]jinja.Value) (jinja.Value, error) {
			fn, err := s.method(args[0], name)
			if err != nil || !fn.IsCallable() {
				if err == nil {
					err = fmt.Errorf(".%s is not callable: %s", name, fn.String())
				}
				return jinja.Undefined(), err
			}
			return fn.AsCallable().Fn(args[1:], kwargs)
		})
		guard("a_"+name, func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
			return s.method(args[0], name)
		})
	}
	vars["range"] = jinja.NewCallable("range", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
		if s.err != nil {
			return jinja.Undefined(), s.err
		}
		return s.rangeList(args)
	})
}

var framesPool = sync.Pool{New: func() any { b := make([]uintptr, maxCallFrames); return &b }}

// sum checks the printed size of a and b together (what ~ and + build from them).
func (s *sandbox) sum(what string, a, b jinja.Value) error {
	ma := s.measure(a)
	mb := s.measure(b)
	if s.err != nil {
		return s.err
	}
	return s.built(what, satAdd(ma.size, mb.size))
}

// rangeList is range() with jinja2's sandbox limit (and the engine's range otherwise).
func (s *sandbox) rangeList(args []jinja.Value) (jinja.Value, error) {
	var start, stop, step int64 = 0, 0, 1
	switch len(args) {
	case 1:
		stop = jinjaInt(args[0])
	case 2:
		start, stop = jinjaInt(args[0]), jinjaInt(args[1])
	case 3:
		start, stop, step = jinjaInt(args[0]), jinjaInt(args[1]), jinjaInt(args[2])
	default:
		return jinja.Undefined(), fmt.Errorf("range: expected 1-3 arguments, got %d", len(args))
	}
	if step == 0 {
		return jinja.Undefined(), errors.New("range: step must not be zero")
	}
	var n uint64 // the number of items, without overflow
	switch {
	case step > 0 && start < stop:
		d, k := uint64(stop)-uint64(start), uint64(step)
		n = d / k
		if d%k != 0 {
			n++
		}
	case step < 0 && start > stop:
		d, k := uint64(start)-uint64(stop), -uint64(step)
		n = d / k
		if d%k != 0 {
			n++
		}
	}
	if n > MaxTemplateRange {
		return jinja.Undefined(), s.fail("range() of %d items; the sandbox allows %d (jinja2's MAX_RANGE)", n, MaxTemplateRange)
	}
	if err := s.charge(int64(n)); err != nil {
		return jinja.Undefined(), err
	}
	if n == 0 {
		return jinja.NewList(nil), nil
	}
	items := make([]jinja.Value, n)
	for i := range items {
		items[i] = jinja.NewInt(start + int64(i)*step)
	}
	return jinja.NewList(items), nil
}

// joinBound bounds x|join(sep, d=, attribute=).
func (s *sandbox) joinBound(args []jinja.Value, kwargs map[string]jinja.Value) error {
	x := args[0]
	if !x.IsList() {
		_, err := s.check("a joined string", x)
		return err
	}
	sep := arg(args, 1)
	if d, ok := kwargs["d"]; ok {
		sep = d
	}
	mx, ms := s.measure(x), s.measure(sep)
	if s.err != nil {
		return s.err
	}
	return s.built("a joined string", satAdd(mx.size, satMul(int64(x.AsList().Len()), ms.size)))
}

// indentBound bounds x|indent(width, first).
func (s *sandbox) indentBound(args []jinja.Value, kwargs map[string]jinja.Value) error {
	width := int64(4)
	if len(args) > 1 {
		width = jinjaInt(args[1])
	}
	if w, ok := kwargs["width"]; ok {
		width = jinjaInt(w)
	}
	m, err := s.check("an indented string", args[0])
	if err != nil {
		return err
	}
	lines := m.size + 1
	if args[0].IsString() {
		lines = int64(strings.Count(args[0].AsString(), "\n")) + 1
	}
	return s.built("an indented string", satAdd(m.size, satMul(lines, max(width, 0))))
}

// replaceFilterBound bounds x|replace(old, new, count).
func (s *sandbox) replaceFilterBound(args []jinja.Value, kwargs map[string]jinja.Value) error {
	count := int64(-1)
	if len(args) > 3 {
		count = jinjaInt(args[3])
	}
	if c, ok := kwargs["count"]; ok {
		count = jinjaInt(c)
	}
	return s.replaceBound(args[0], arg(args, 1), arg(args, 2), count)
}

// replaceBound bounds replacing old by new in x at most count times (all if negative).
func (s *sandbox) replaceBound(x, old, new jinja.Value, count int64) error {
	mx, mn := s.measure(x), s.measure(new)
	if s.err != nil {
		return s.err
	}
	if err := s.built("a string", mx.size); err != nil {
		return err
	}
	n := mx.size + 1
	if x.IsString() && old.IsString() {
		if o := old.AsString(); o == "" {
			n = int64(len(x.AsString())) + 1
		} else {
			n = int64(strings.Count(x.AsString(), o))
		}
	}
	if count >= 0 {
		n = min(n, count)
	}
	return s.built("a replaced string", satAdd(mx.size, satMul(n, mn.size)))
}

// tojsonBound bounds x|tojson(indent=, separators=).
func (s *sandbox) tojsonBound(args []jinja.Value, kwargs map[string]jinja.Value) error {
	m, err := s.check("tojson's input", args[0])
	if err != nil {
		return err
	}
	per := int64(1) // bytes written around each item beyond its printed size
	if ind, ok := kwargs["indent"]; ok && !ind.IsNone() && !ind.IsUndefined() {
		per = satAdd(per, satMul(int64(m.depth+1), max(jinjaInt(ind), 0)))
	}
	if sep, ok := kwargs["separators"]; ok && sep.IsList() {
		ms := s.measure(sep)
		per = satAdd(per, ms.size)
	}
	// Escaping writes at most 6 bytes for one; every item takes at least 2 printed bytes.
	return s.built("a JSON string", satAdd(satMul(6, m.size), satMul(m.size/2+1, per)))
}

// method is obj's attribute name as the engine gives it, with the guard of the engine's
// string, list and dict methods of that name around it.
func (s *sandbox) method(obj jinja.Value, name string) (jinja.Value, error) {
	fn, err := engineAttribute(obj, name)
	if err != nil || !fn.IsCallable() {
		return fn, err
	}
	isMethod := obj.IsString() || obj.IsList() || obj.IsDict() && !obj.AsDict().Has(name)
	if !isMethod {
		return fn, nil
	}
	inner := fn.AsCallable().Fn
	return jinja.NewCallable(fn.AsCallable().Name, func(args []jinja.Value, kwargs map[string]jinja.Value) (jinja.Value, error) {
		if s.err != nil {
			return jinja.Undefined(), s.err
		}
		if err := s.methodBound(obj, name, args); err != nil {
			return jinja.Undefined(), err
		}
		return inner(args, kwargs)
	}), nil
}

// methodBound checks a call of obj's method name with args before it runs.
func (s *sandbox) methodBound(obj jinja.Value, name string, args []jinja.Value) error {
	switch {
	case obj.IsString() && name == "replace":
		count := int64(-1)
		if len(args) > 2 {
			count = jinjaInt(args[2])
		}
		return s.replaceBound(obj, arg(args, 0), arg(args, 1), count)
	case obj.IsString() && name == "format":
		// The engine replaces "{i}" by args[i] everywhere and then the first "{}", in turn.
		out := obj.AsString()
		for i, a := range args {
			if _, err := s.check("a format argument", a); err != nil {
				return err
			}
			p := printValue(a)
			ph := fmt.Sprintf("{%d}", i)
			n := satAdd(int64(len(out)), satMul(int64(strings.Count(out, ph)), int64(len(p))))
			if err := s.built("a formatted string", n); err != nil {
				return err
			}
			out = strings.ReplaceAll(out, ph, p)
			out = strings.Replace(out, "{}", p, 1)
		}
		return s.built("a formatted string", int64(len(out)))
	case obj.IsList() && (name == "append" || name == "insert"):
		v := arg(args, 0)
		if name == "insert" {
			v = arg(args, 1)
		}
		if (name == "append" && len(args) > 0 || name == "insert" && len(args) > 1) && reaches(v, obj.AsList(), map[any]bool{}) {
			return s.fail("list.%s puts a list inside itself", name)
		}
		s.mutated(obj.AsList())
		return s.sum("a list", obj, v)
	case obj.IsDict() && name == "update":
		v := arg(args, 0)
		if v.IsDict() {
			seen := map[any]bool{}
			for _, item := range v.AsDict().Data {
				if reaches(item, obj.AsDict(), seen) {
					return s.fail("dict.update puts a dict inside itself")
				}
			}
		}
		s.mutated(obj.AsDict())
		return s.sum("a dict", obj, v)
	}
	return s.charge(1)
}

// sinks holds the compiled templates that hand an operation to the engine.
var sinks sync.Map // expression -> *jinja.Template

// delegate evaluates expr with the engine, its names bound by vars: the sandbox checks
// an operation and the engine does it, so that it does exactly what it did unguarded.
func delegate(expr string, vars map[string]jinja.Value) (jinja.Value, error) {
	t, ok := sinks.Load(expr)
	if !ok {
		c, err := jinja.Compile("{{ sink(" + expr + ") }}")
		if err != nil {
			return jinja.Undefined(), fmt.Errorf("sandbox: %w", err)
		}
		t, _ = sinks.LoadOrStore(expr, c)
	}
	got := jinja.Undefined()
	vars["sink"] = jinja.NewCallable("sink", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
		if len(args) > 0 {
			got = args[0]
		}
		return jinja.Undefined(), nil
	})
	if _, err := t.(*jinja.Template).RenderValues(vars); err != nil {
		return jinja.Undefined(), err
	}
	return got, nil
}

// engineBinary is a op b, done by the engine.
func engineBinary(op string, a, b jinja.Value) (jinja.Value, error) {
	return delegate("a "+op+" b", map[string]jinja.Value{"a": a, "b": b})
}

// engineAttribute is x.name, done by the engine.
func engineAttribute(x jinja.Value, name string) (jinja.Value, error) {
	return delegate("x."+name, map[string]jinja.Value{"x": x})
}

// engineFilter is x|name(args, kwargs), done by the engine.
func engineFilter(name string, x jinja.Value, args []jinja.Value, kwargs map[string]jinja.Value) (jinja.Value, error) {
	vars := make(map[string]jinja.Value, 2+len(args)+len(kwargs))
	vars["x"] = x
	params := make([]string, 0, len(args)+len(kwargs))
	for i, a := range args {
		n := fmt.Sprintf("a%d", i)
		vars[n] = a
		params = append(params, n)
	}
	keys := make([]string, 0, len(kwargs))
	for k := range kwargs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		vars["k_"+k] = kwargs[k]
		params = append(params, k+"=k_"+k)
	}
	return delegate("x|"+name+"("+strings.Join(params, ", ")+")", vars)
}

// arg is args[i], or undefined.
func arg(args []jinja.Value, i int) jinja.Value {
	if i < len(args) {
		return args[i]
	}
	return jinja.Undefined()
}

// jinjaInt converts v to an integer as the engine's toInt64 does.
func jinjaInt(v jinja.Value) int64 {
	switch {
	case v.IsInt():
		return v.AsInt()
	case v.IsFloat():
		return int64(v.AsFloat())
	case v.IsBool():
		if v.AsBool() {
			return 1
		}
		return 0
	case v.IsString():
		var n int64
		fmt.Sscanf(v.AsString(), "%d", &n)
		return n
	}
	return 0
}

// jinjaFloat converts a number to a float as the engine's toFloat64 does.
func jinjaFloat(v jinja.Value) float64 {
	if v.IsInt() {
		return float64(v.AsInt())
	}
	return v.AsFloat()
}

// printValue is v as the engine prints it (jinja builtins.go printValue).
func printValue(v jinja.Value) string {
	switch {
	case v.IsUndefined(), v.IsNone(), v.IsCallable():
		return ""
	case v.IsString():
		return v.AsString()
	}
	return v.String()
}

func satAdd(a, b int64) int64 {
	if a > math.MaxInt64/2-b {
		return math.MaxInt64 / 2
	}
	return a + b
}

func satMul(a, b int64) int64 {
	if a != 0 && b > (math.MaxInt64/2)/a {
		return math.MaxInt64 / 2
	}
	return a * b
}
