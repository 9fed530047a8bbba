package tokenize

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ardanlabs/jinja"
)

// renderUnguarded renders source with the engine alone, with the same variables as
// ApplyChatTemplate: what the sandbox must not change.
func renderUnguarded(tk *Tokenizer, source string, msgs []Message, gen bool) (out string, err error) {
	tmpl, err := jinja.Compile(source)
	if err != nil {
		return "", err
	}
	vars := tk.chatVars(msgs, gen)
	vars["raise_exception"] = jinja.NewCallable("raise_exception", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
		return jinja.Undefined(), fmt.Errorf("raised: %s", printed(args[0]))
	})
	vars["strftime_now"] = jinja.NewCallable("strftime_now", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
		return jinja.NewString(strftime(strftimeClock(), args[0].AsString())), nil
	})
	defer func() {
		if r := recover(); r != nil {
			out, err = "", fmt.Errorf("panic: %v", r)
		}
	}()
	return tmpl.RenderValues(vars)
}

// sandboxProbes exercise every guard on values of each kind, in the places a guard can
// stand (output, set, for iterable and filter, if, macro defaults, call blocks).
var sandboxProbes = []string{
	`{{ 'ab' * 3 }}|{{ 3 * 'ab' }}|{{ 'ab' * 2.0 }}|{{ 'ab' * -1 if false }}|{{ 2 * 3 }}|{{ 2.5 * 2 }}|{{ [1] * 2 }}|{{ none * 2 }}|{{ true * 3 }}|{{ '4' * '2' }}`,
	`{{ 'a' ~ 'b' }}|{{ 'a' ~ 1 }}|{{ 1 ~ 2.5 }}|{{ none ~ 'x' }}|{{ [1, 'x'] ~ {'k': none} }}|{{ true ~ undefined_name }}`,
	`{{ 'a' + 'b' }}|{{ 'a' + 1 }}|{{ 1 + 'a' }}|{{ 1 + 2 }}|{{ 1 + 2.5 }}|{{ 1.5 + 2.5 }}|{{ [1] + [2, 3] }}|{{ [1] + 2 }}|{{ none + 1 }}|{{ true + true }}|{{ {'a': 1} + 1 }}|{{ 9223372036854775807 + 1 }}`,
	`{{ [1, 2, 3]|join }}|{{ [1, 2]|join(', ') }}|{{ 'abc'|join('-') }}|{{ messages|join(d='/', attribute='role') }}|{{ [none, [1]]|join(0) }}|{{ [1,2]|join() }}`,
	`{{ 'a\nb\n\nc'|indent }}|{{ 'a\nb'|indent(2) }}|{{ 'a\nb'|indent(2, true) }}|{{ 'a\nb'|indent(width=3, first=true) }}|{{ [1]|indent(1) }}|{{ 'x'|indent(0) }}`,
	`{{ 'a b a'|replace('a', 'x') }}|{{ 'aaa'|replace('a', 'yy', 2) }}|{{ 'aaa'|replace('a', 'z', count=1) }}|{{ 'abc'|replace('', '-') }}|{{ 12|replace('1', 'one') }}`,
	`{{ messages|tojson }}|{{ messages[0]|tojson(indent=2) }}|{{ {'a': [1, {'b': none}]}|tojson(separators=(',', ':')) }}|{{ 'x'|tojson(indent=none) }}|{{ [[1]]|tojson(indent=1) }}`,
	`{{ 'a-a'.replace('a', 'b') }}|{{ 'aaa'.replace('a', 'b', 2) }}|{{ 'x{0}y{1}{}'.format(1, 'z') }}|{{ '{}{}'.format([1], none) }}|{{ {'replace': 'k'}.replace }}|{{ messages[0].replace }}|{{ 'q'.replace }}`,
	`{% set l = [] %}{{ l.append(1) }}{{ l.append([2]) }}{{ l.insert(0, 'z') }}{{ l.insert(9) }}{{ l }}|{% set d = {'a': 1} %}{{ d.update({'b': 2}) }}{{ d.update(3) }}{{ d }}|{% set f = l.append %}{{ f(3) }}{{ l|length }}`,
	`{% set ns = namespace(n=0, s='', l=[]) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% set ns.s = ns.s ~ m.role %}{% set ns.l = ns.l + [m] %}{% endfor %}{{ ns.n }} {{ ns.s }} {{ ns.l|length }} {% set ns.self = [1] %}{{ ns.self }}`,
	`{% for i in range(3) %}{{ i }}{% endfor %}|{% for i in range(1, 7, 2) %}{{ i }}{% endfor %}|{% for i in range(5, 0, -2) %}{{ i }}{% endfor %}|{{ range(0) }}|{{ range(3)|list }}|{{ range('4')|length }}|{{ range(2.7)|length }}|{{ range(true)|length }}`,
	`{% for x in 'ab' * 2 if x ~ '' != 'b' %}{{ x }}{% else %}none{% endfor %}|{% for k, v in {'a': 'x' * 2}.items() %}{{ k ~ v }}{% endfor %}|{% if 'a' * 2 == 'aa' %}yes{% elif 1 + 1 %}no{% endif %}`,
	`{% macro m(a, b='x' * 2, c=1 + 1) -%}[{{ a ~ b ~ c }}]{%- endmacro %}{{ m('q') }}{{ m('r', 'y') }}{% for i in range(2) %}{{ m(i, c=i * 3) }}{% endfor %}`,
	`{% macro w() %}<{{ caller() }}>{% endmacro %}{% call w() %}in {{ 'a' ~ 'b' }}{% endcall %}{% set blk %}B{{ 1 + 1 }}{% endset %}{{ blk }}{% filter upper %}f{{ 'g' ~ 'h' }}{% endfilter %}{% raw %}{{ 'a' ~ 'b' }}{% for %}{% endraw %}`,
	`{{ messages|length }} {{ messages|map(attribute='role')|list }} {{ messages|selectattr('role', 'equalto', 'user')|list|length }} {{ 'abc'|list|reverse|join }} {{ [3, 1]|sort }} {{ 'Abc'|upper|lower|title }} {{ 'x'|default('y') }} {{ nope|d('z') }}`,
	`{{ messages[1:]|length }} {{ 'hello'[1:3] }} {{ [1, 2, 3][::-1] }} {{ 'abc'[('a' * 1)|length:] }} {{ (1, 2) }} {{ {'a': 'b' ~ 'c'} }} {{ -(1 + 2) }} {{ not 'a' ~ 'b' }} {{ 2 ** 3 * 2 }} {{ 7 // 2 * 'ab' }}`,
	"{%- for m in messages -%}\n  {{- m.role + ': ' + m.content -}}\n  {% if not loop.last %}\n{% endif %}\n{%- endfor %}\n  trailing {# c #} {{ 'x' * 2 }}\n",
	`{{ loop }}{% for m in messages %}{{ loop.index ~ '/' ~ loop.length }}{{ loop.cycle('a', 'b') }}{{ loop.previtem.role if loop.previtem }}{% endfor %}`,
}

// TestSandboxRendersAsTheEngine holds the sandbox to the unguarded engine: every
// reference case and every probe renders to the same text, or fails in both.
func TestSandboxRendersAsTheEngine(t *testing.T) {
	base, err := Load(chatFixtureDir(t, map[string]any{"bos_token": "<s>", "eos_token": "</s>"}))
	if err != nil {
		t.Fatal(err)
	}
	conv := []Message{{"system", "Be brief."}, {"user", "Hi {0} there"}, {"assistant", "Hello."}, {"user", "a\nb"}}
	type job struct {
		name, source string
		msgs         []Message
		gen          bool
	}
	var jobs []job
	for i, c := range readChatCases(t) {
		if c.Strftime != "" {
			continue
		}
		src := c.Source
		if src == "" {
			b, err := os.ReadFile(filepath.Join("testdata/chat", c.Template+".jinja"))
			if err != nil {
				t.Fatal(err)
			}
			src = string(b)
		}
		jobs = append(jobs, job{fmt.Sprintf("case %d (%s)", i, c.Template), src, c.Messages, c.AddGenerationPrompt})
	}
	for i, p := range sandboxProbes {
		jobs = append(jobs, job{fmt.Sprintf("probe %d", i), p, conv, true})
	}
	for _, j := range jobs {
		tk := base.WithChatTemplate(j.source)
		got, gerr := tk.ApplyChatTemplate(j.msgs, j.gen)
		want, werr := renderUnguarded(tk, j.source, j.msgs, j.gen)
		switch {
		case errors.Is(gerr, ErrTemplateLimit):
			t.Errorf("%s: the sandbox stopped a harmless template: %v", j.name, gerr)
		case (gerr == nil) != (werr == nil):
			t.Errorf("%s: sandbox error %v, engine error %v", j.name, gerr, werr)
		case got != want:
			t.Errorf("%s: sandbox rendered\n%q\nthe engine\n%q", j.name, got, want)
		}
	}
	if len(jobs) < 250 {
		t.Errorf("only %d templates compared", len(jobs))
	}
}

// hostile are templates that would take the machine without the sandbox. harmless marks
// those that this engine happens to render small (it makes 10**n a float, and a string
// times a float is a number), which must still end quickly.
var hostile = []struct {
	name, source string
	harmless     bool
}{
	{"range(10**9)", `{% for i in range(10**9) %}x{% endfor %}`, false},
	{"range(int)", `{{ range(1000000000)|length }}`, false},
	{"range(100001)", `{{ range(100001)|length }}`, false},
	{"negative range", `{% for i in range(0, -1000000000, -1) %}{% endfor %}`, false},
	{"nested loops", `{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}`, false},
	{"nested loops writing", `{% for i in range(100000) %}{% for j in range(100000) %}ab{% endfor %}{% endfor %}`, false},
	{"nested loops over strings", `{% for c in 'x' * 4000000 %}{% for d in 'y' * 4000000 %}{{ d }}{% endfor %}{% endfor %}`, false},
	{"string times int", `{{ 'x' * 10000000000 }}`, false},
	{"string times 10**10|int", `{{ 'x' * (10**10)|int }}`, false},
	{"string times 10**10", `{{ 'x' * 10**10 }}`, true},
	{"megabyte strings repeated", `{% for i in range(100000) %}{{ 'a' * 1000000 }}{% endfor %}`, false},
	{"'a'*10**6 repeated", `{% for i in range(100000) %}{{ 'a' * 10**6 }}{% endfor %}`, true},
	{"product of products", `{{ 'a' * 1000000 * 1000000 }}`, false},
	{"concatenation", `{% set s = 'a' * 4000000 %}{{ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s }}`, false},
	{"doubling string", `{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}`, false},
	{"doubling list", `{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}`, false},
	{"shared list", `{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l }}`, false},
	{"appended copies", `{% set l = [] %}{% set big = 'x' * 1000000 %}{% for i in range(100000) %}{{ l.append(big) }}{% endfor %}{{ l|length }}`, false},
	{"list in itself", `{% set l = [] %}{{ l.append(l) }}{{ l }}`, false},
	{"namespace in itself", `{% set ns = namespace() %}{% set ns.me = ns %}{{ ns|tojson }}`, false},
	{"dict in itself", `{% set d = {} %}{{ d.update({'me': d}) }}{{ d == d }}`, false},
	{"deep list", `{% set ns = namespace(l=[]) %}{% for i in range(100000) %}{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l }}`, false},
	{"recursive macro", `{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}`, false},
	{"recursive caller", `{% macro f() %}{{ caller() }}{% endmacro %}{% macro g() %}{% call f() %}{{ g() }}{% endcall %}{% endmacro %}{{ g() }}`, false},
	{"exponential macro", `{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}`, false},
	{"join", `{{ range(100000)|join('x' * 1000000) }}`, false},
	{"indent", `{{ 'a\nb'|indent(1000000000) }}`, false},
	{"replace filter", `{{ ('a' * 1000000)|replace('a', 'b' * 1000) }}`, false},
	{"replace method", `{{ ('a' * 1000000).replace('a', 'b' * 1000) }}`, false},
	{"replace held", `{% set r = ('a' * 1000000).replace %}{{ r('a', 'b' * 1000) }}`, false},
	{"format", `{{ ('{0}' * 100000).format('x' * 1000) }}`, false},
	{"tojson indent", `{{ [[[[1]]]]|tojson(indent=1000000000) }}`, false},
	{"string filter on a shared list", `{% set a = [1] * 1 %}{% set ns = namespace(l=['x' * 1000000]) %}{% for i in range(30) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|string|length }}`, false},
	{"deep parentheses", "{{ " + strings.Repeat("(", 100000) + "1" + strings.Repeat(")", 100000) + " }}", false},
	{"deep blocks", strings.Repeat("{% if true %}", 600) + strings.Repeat("{% endif %}", 600), false},
	{"large template", strings.Repeat("{{ 1 }}", 200000), false},
	{"prefix operators", "{{ " + strings.Repeat("not ", 100000) + "1 }}", false},
	{"reserved names", `{{ __ortalign_out }}`, false},
}

// TestSandboxStopsHostileTemplates renders each hostile template from a
// tokenizer_config.json: an error wrapping ErrTemplateLimit that names the file, within
// seconds and a bounded amount of allocation.
func TestSandboxStopsHostileTemplates(t *testing.T) {
	for _, h := range hostile {
		t.Run(h.name, func(t *testing.T) {
			tk, err := Load(chatFixtureDir(t, map[string]any{"chat_template": h.source}))
			if err != nil {
				t.Fatal(err)
			}
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			start := time.Now()
			out, err := tk.ApplyChatTemplate([]Message{{"user", "hi"}}, true)
			took := time.Since(start)
			runtime.ReadMemStats(&after)
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("%v, %d MiB allocated, %d bytes out: %v", took.Round(time.Millisecond), alloc>>20, len(out), err)
			if took > MaxTemplateTime || err != nil && strings.Contains(err.Error(), "rendering took") {
				t.Errorf("took %v: the time limit, a backstop, ended it", took)
			}
			if alloc > 1<<30 {
				t.Errorf("allocated %d MiB", alloc>>20)
			}
			if h.harmless && err == nil {
				if len(out) > MaxTemplateOutput {
					t.Errorf("wrote %d bytes", len(out))
				}
				return
			}
			if !errors.Is(err, ErrTemplateLimit) || !strings.Contains(err.Error(), "tokenizer_config.json (chat_template)") {
				t.Errorf("err %v, want one wrapping ErrTemplateLimit and naming the file", err)
			}
		})
	}
}

// TestSandboxLimits checks each limit at its edge: what is allowed still renders.
func TestSandboxLimits(t *testing.T) {
	base, err := Load(chatFixtureDir(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	render := func(src string, msgs ...Message) (string, error) {
		return base.WithChatTemplate(src).ApplyChatTemplate(append([]Message{{"user", "u"}}, msgs...), false)
	}
	if got, err := render(`{{ range(100000)|length }} {{ range(0, 200000, 2)|length }}`); err != nil || got != "100000 100000" {
		t.Errorf("range(100000): %q, %v", got, err)
	}
	for _, src := range []string{`{{ range(100001)|length }}`, `{{ range(0, 200001, 2)|length }}`, `{{ range(-100001, 0)|length }}`} {
		if _, err := render(src); !errors.Is(err, ErrTemplateLimit) || !strings.Contains(err.Error(), "MAX_RANGE") {
			t.Errorf("%s: %v", src, err)
		}
	}
	n := MaxTemplateOutput - 16
	if got, err := render(fmt.Sprintf(`{{ 'x' * %d }}`, n)); err != nil || len(got) != n {
		t.Errorf("%d bytes: %d, %v", n, len(got), err)
	}
	if _, err := render(fmt.Sprintf(`{{ 'x' * %d }}{{ 'x' * %d }}`, n, n)); !errors.Is(err, ErrTemplateLimit) {
		t.Errorf("twice %d bytes: %v", n, err)
	}
	// The limit grows with the conversation: a long document still renders.
	long := strings.Repeat("long document ", (2*MaxTemplateOutput)/14)
	if got, err := render(chatml, Message{"assistant", long}); err != nil || !strings.Contains(got, long) {
		t.Errorf("a %d-byte message: %d bytes, %v", len(long), len(got), err)
	}
	// Text is counted as the engine writes it, without the indentation it trims: 2 MB of
	// output from a body written with 15 bytes of source for each 4 it writes.
	indented := "{% for i in range(5) %}\n    {%- for j in range(100000) %}\n        {{- 'abcd' }}\n    {%- endfor %}\n{% endfor %}"
	if got, err := render(indented); err != nil || len(got) != 5*100000*4 {
		t.Errorf("indented loops: %d bytes, %v", len(got), err)
	}
	// Macros may recurse as deep as a conversation needs.
	if got, err := render(`{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}.{% endif %}{% endmacro %}{{ f(200)|length }}`); err != nil || got != "200" {
		t.Errorf("recursion 200 deep: %q, %v", got, err)
	}
}

// TestSandboxCancel stops a long render through its context.
func TestSandboxCancel(t *testing.T) {
	base, err := Load(chatFixtureDir(t, map[string]any{"chat_template": `{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}`}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	start := time.Now()
	_, err = base.ApplyChatTemplateContext(ctx, []Message{{"user", "u"}}, false)
	if took := time.Since(start); !errors.Is(err, context.Canceled) || took > time.Second || !strings.Contains(err.Error(), "tokenizer_config.json") {
		t.Errorf("after %v: %v", took, err)
	}
	if _, err := base.ApplyChatTemplateContext(ctx, []Message{{"user", "u"}}, false); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled before: %v", err)
	}
}
