#!/usr/bin/env python3
"""Writes expected.jsonl: the chat templates in this folder rendered by Jinja2.

The Jinja environment is the one transformers builds for chat templates
(transformers.utils.chat_template_utils._compile_jinja_template, v4.4x-v4.5x):
ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the loopcontrols
extension, a `generation` block tag (AssistantTracker; rendered as its body),
transformers' `tojson` filter, and the globals `raise_exception` and
`strftime_now`. Variables are passed as transformers' render_jinja_template does:
messages, tools=None, documents=None, add_generation_prompt, and the special tokens
the tokenizer has set (special_tokens.json: those absent are undefined).

Needs only Jinja2 (Debian: apt-get install python3-jinja2). Run from anywhere:

    python3 tokenize/testdata/chat/gen_chat_reference.py

Each output line is one case: {"template", "messages", "add_generation_prompt",
"rendered"} or, when the template raised, the same with "error" (the message) instead
of "rendered"; template-less lines {"strftime", "time", "rendered"} check strftime_now.
"""

import json
import os
from datetime import datetime

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))


class AssistantTracker(Extension):
    # transformers' {% generation %} ... {% endgeneration %} tag; without
    # return_assistant_tokens_mask it renders its body unchanged.
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def compile_template(source):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[AssistantTracker, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


def m(role, content):
    return {"role": role, "content": content}


# The conversations every template is rendered on, each with and without the
# generation prompt.
CONVERSATIONS = [
    [m("user", "Hello!")],
    [m("system", "You are a helpful assistant."), m("user", "What is 2+2?")],
    [m("user", "What is 2+2?"), m("assistant", "4")],
    [m("system", "Be brief."), m("user", "Hi"), m("assistant", "Hello."), m("user", "Name a color.")],
    [m("system", "Be brief."), m("user", "Hi"), m("assistant", "Hello."), m("user", "Name a color."), m("assistant", "Blue.")],
    [m("user", "Héllo wörld, 你好, こんにちは, 🙂👍🏽, עברית, e\u0301"), m("assistant", "Ça va? ½ ∑ \u00a0nbsp \u200bzwsp")],
    [m("user", ""), m("assistant", "")],
    [m("system", ""), m("user", "  padded text \n\n"), m("assistant", "\n  answer with spaces  \n")],
    [m("user", "Braces {{ not_a_var }} {% raw %} and '\"quotes\"' \\ backslash\ttab"), m("assistant", "<b>html</b> & <|im_end|> text")],
    [m("user", "Think first."), m("assistant", "<think>\nsome reasoning\n</think>\n\nThe answer.")],
    [m("user", "Q1"), m("assistant", "<think>\nr1\n</think>\n\nA1"), m("user", "Q2"), m("assistant", "A2")],
    [m("user", "Call the tool."), m("assistant", "Calling."), m("tool", "{\"result\": 42}")],
    [m("user", "one"), m("user", "two")],
    [m("assistant", "I speak first."), m("user", "ok")],
    [m("system", "sys one"), m("system", "sys two"), m("user", "hi")],
    [m("user", "line1\nline2\r\nline3"), m("assistant", "multi\n\nparagraph\n")],
]


# Small templates, not from models, for the Jinja features chat templates use;
# each is rendered on FEATURE_CONVERSATION with the generation prompt.
FEATURES = [
    ("loop_vars", "{% for m in messages %}[{{ loop.index }}/{{ loop.length }} {{ loop.index0 }} {{ loop.revindex }}{{ ' first' if loop.first }}{{ ' last' if loop.last }}]{% endfor %}"),
    ("loop_controls", "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}{{ m.role }};{% if loop.index > 3 %}{% break %}{% endif %}{% endfor %}"),
    ("loop_else_filter", "{% for m in messages if m.role == 'user' %}{{ m.content }},{% else %}none{% endfor %}"),
    ("loop_previtem", "{% for m in messages %}{{ loop.previtem.role if loop.previtem is defined else '-' }}>{{ loop.nextitem.role if not loop.last else '-' }} {% endfor %}"),
    ("namespace", "{% set ns = namespace(n=0, roles=[]) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% set ns.roles = ns.roles + [m['role']] %}{% endfor %}{{ ns.n }} {{ ns.roles | join(',') }}"),
    ("scoping", "{% set x = 1 %}{% for m in messages %}{% set x = x + 1 %}{% endfor %}{{ x }}"),
    ("whitespace", "{% for m in messages %}\n    {% if m.role == 'user' %}\n        U:{{ m.content }}\n    {% else %}\n  {{- m.role -}}  \n    {% endif %}\n{% endfor %}\n  {%+ if true %}kept{% endif %}\n{%- if add_generation_prompt %}\n    gen\n{% endif %}"),
    ("comments", "a {# comment #} b\n{# line comment #}\nc {#- trimmed -#} d"),
    ("raw", "{% raw %}{{ not rendered }}{% endraw %}"),
    ("string_methods", "{{ messages[1].content.split(' ')[0] }}|{{ 'abc'.upper() }}|{{ '  x  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '\\n\\na\\n'.lstrip('\\n') }}|{{ 'a\\n'.rstrip() }}|{{ 'a-b-c'.split('-') | join('+') }}|{{ 'Hello'.startswith('He') }}|{{ 'Hello'.endswith(('x', 'lo')) }}|{{ 'a,b'.replace(',', ';') }}|{{ 'hello'.find('l') }}|{{ 'hello'.count('l') }}|{{ 'hi {}'.format('x') if false else 'fmt' }}|{{ 'Title me'.title() }}|{{ 'abc'.capitalize() }}|{{ ' a  b '.split() | length }}"),
    ("string_ops", "{{ 'x' ~ 1 ~ none }}|{{ 'ab' + 'cd' }}|{{ 'ab' * 2 }}|{{ 'hello'[1:3] }}|{{ 'hello'[::-1] }}|{{ 'hello'[-1] }}|{{ \"it's\" }}|{{ 'say \"hi\"' }}|{{ 'esc\\\\aped\\ttab' }}|{% if 'lo' in 'hello' %}in{% endif %}|{% if 'z' not in 'hello' %}notin{% endif %}"),
    ("arith", "{{ 3 / 2 }} {{ 4 / 2 }} {{ 7 // 2 }} {{ 7 % 3 }} {{ 2 ** 3 }} {{ 1 + 2 * 3 }} {{ -1 }} {{ 1.5 + 1 }} {{ 10 - 2.5 }} {{ (messages | length) - 1 }} {{ 0.1 + 0.2 }} {{ 1e3 }}"),
    ("compare_logic", "{{ 1 < 2 }} {{ 2 <= 1 }} {{ 'a' == 'a' }} {{ 1 != 1 }} {{ true and none }} {{ false or 'or' }} {{ not none }} {{ 'a' if false else 'b' }} {{ 1 < 2 < 3 }} {{ none is none }} {{ messages | length > 2 }}"),
    ("print_values", "{{ true }} {{ false }} {{ none }} {{ 1.0 }} {{ 2.50 }} {{ [1, 'a', none, true] }} {{ {'k': 'v'} }} {{ ('t', 1) }} {{ messages[0] }} {{ undefined_name }}|"),
    ("slicing", "{{ messages[1:] | length }} {{ messages[:1][0].role }} {{ messages[::-1][0].role }} {{ messages[-1].role }} {{ messages[-2:] | map(attribute='role') | join(',') }} {{ [1, 2, 3, 4][::2] | join }}"),
    ("attr_item", "{{ messages[0]['role'] }} {{ messages[0].role }} {{ messages[0].missing is defined }} {{ messages[0]['missing'] is undefined }} {{ messages[0].get('role') }} {{ messages[0].get('missing', 'dflt') }} {{ messages[0].keys() | list | length }} {{ messages[0] | length }}"),
    ("tests", "{{ messages[0] is mapping }} {{ 'x' is string }} {{ 3 is number }} {{ 3 is integer }} {{ 3.5 is float }} {{ [] is iterable }} {{ 'x' is iterable }} {{ [] is sequence }} {{ 4 is even }} {{ 3 is odd }} {{ 6 is divisibleby(3) }} {{ none is none }} {{ true is boolean }} {{ x is undefined }} {{ tools is none }} {{ tools is defined }} {{ documents is none }} {{ 'a' is eq('a') }} {{ 1 is lt(2) }} {{ 'A' is upper }} {{ 'a' is lower }} {{ raise_exception is callable }} {{ 1 is sameas 1 }} {{ 'a' is in(['a']) }}"),
    ("filters_str", "{{ '  t  ' | trim }}|{{ 'xAx' | lower }}|{{ 'xAx' | upper }}|{{ 'hello world' | title }}|{{ 'hELLO' | capitalize }}|{{ 'a b c' | replace(' ', '_') }}|{{ 'a b c' | wordcount }}|{{ 'abc' | length }}|{{ 'abc' | reverse }}|{{ 'abc' | list | join('.') }}|{{ 'x' | default('y') }}|{{ nothing | default('dflt') }}|{{ '' | default('empty', true) }}|{{ nothing | d('d') }}|{{ 'a\\nb' | indent(2) }}|{{ 'a\\nb' | indent(2, true) }}|{{ 1 | string + '!' }}|{{ '4' | int + 1 }}|{{ 3.7 | int }}|{{ '2.5' | float }}|{{ 2.567 | round(2) }}|{{ 2.5 | round }}|{{ -3 | abs }}|{{ '<&>' | e }}|{{ '<b>' | safe }}|{{ 'x' | string | length }}|{{ '%s-%d' | format('a', 3) }}|{{ 'abcdef' | truncate(3, true, '') if false else 'tr' }}|{{ 'a' | center(5) }}|"),
    ("filters_seq", "{{ messages | map(attribute='role') | join(' ') }}|{{ messages | selectattr('role', 'equalto', 'user') | list | length }}|{{ messages | rejectattr('role', 'eq', 'user') | map(attribute='role') | list | join(',') }}|{{ messages | selectattr('content') | list | length }}|{{ [3, 1, 2] | sort | join }}|{{ [3, 1, 2] | sort(reverse=true) | join }}|{{ [3, 1, 2] | first }}|{{ [3, 1, 2] | last }}|{{ [3, 1, 2] | max }}|{{ [3, 1, 2] | min }}|{{ [1, 2, 3] | sum }}|{{ ['a', 'b', 'a'] | unique | join }}|{{ [1, 2, 3] | reverse | join }}|{{ [1, 2, 3, 4, 5] | batch(2) | map('join') | join('/') }}|{{ ['a', 'b'] | map('upper') | join }}|{{ [0, 1, 2] | select | join }}|{{ [0, 1, 2] | reject('odd') | join }}|{{ messages | map(attribute='content') | map('length') | sum }}|{{ [[1, 2], [3]] | map('length') | join }}|{{ messages | groupby('role') | map(attribute='grouper') | join(',') if false else 'gb' }}|{{ range(3) | join }}|{{ range(1, 7, 2) | list | join(',') }}"),
    ("filters_dict", "{{ {'b': 1, 'a': 'x'} | dictsort | map('join', ':') | join(' ') if false else 'ds' }} {% for k, v in {'b': 1, 'a': 'x'} | dictsort %}{{ k }}={{ v }};{% endfor %} {% for k, v in {'k1': 'v1', 'k2': 2}.items() %}{{ k }}={{ v }};{% endfor %} {% for k in {'k1': 1, 'k2': 2} %}{{ k }}{% endfor %} {{ {'k1': 1}.values() | list | join }} {{ dict(a=1, b=2) | length }} {% for k, v in {'x': 1} | items %}{{ k }}{{ v }}{% endfor %}"),
    ("tojson", "{{ messages | tojson }}\n{{ messages[0] | tojson(indent=2) }}\n{{ {'z': 'é\"\\\\<&>\\'', 'a': [1, 2.5, none, true, false, -0.0, 1e20, 0.1]} | tojson(separators=(',', ':')) }}\n{{ {'z': 1, 'a': {'y': 2, 'b': 3} } | tojson(sort_keys=true) }}\n{{ messages | tojson(indent=4, separators=(',', ': ')) }}\n{{ [] | tojson(indent=2) }}{{ {} | tojson(indent=2) }}\n{{ '\\x01\\t\\u2028' | tojson }} {{ 'x' | tojson }} {{ 3 | tojson }} {{ none | tojson }}"),
    ("macro", "{% macro turn(role, text, sep='\\n') %}<{{ role }}>{{ text }}</{{ role }}>{{ sep }}{% endmacro %}{% for m in messages %}{{ turn(m.role, m.content) }}{% endfor %}{{ turn('x', 'y', sep='!') }}"),
    ("set_block", "{% set block %}captured {{ messages | length }}{% endset %}{{ block }}|{{ block | upper }}"),
    ("filter_block", "{% filter upper %}up {{ messages[0].role }}{% endfilter %}"),
    ("generation_tag", "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}|{% endfor %}"),
    ("raise_exception", "{% if messages[-1].role == 'user' %}{{ raise_exception('last message must not be user, got ' + messages[-1].role + ' 🙂') }}{% endif %}ok"),
    ("special_tokens", "{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ unk_token }}|{{ bos_token is defined }}"),
    ("in_operator", "{{ 'user' in messages | map(attribute='role') | list }} {{ 'role' in messages[0] }} {{ 'k' in {'k': 1} }} {{ 2 in [1, 2] }} {{ messages[0].role in ['user', 'system'] }}"),
    ("list_ops", "{{ ([1] + [2]) | join }} {{ [1, 2] | length }} {% set l = [] %}{{ l.append(1) if false else 'noappend' }} {{ (messages | list)[0].role }} {{ messages | list | count }}"),
    ("cycler_joiner", "{% set c = cycler('a', 'b') %}{% for m in messages %}{{ c.next() }}{% endfor %} {% set j = joiner(', ') %}{% for m in messages %}{{ j() }}{{ m.role }}{% endfor %}"),
]

# strftime_now formats (the clock is fixed in the Go test; here the same instant is
# formatted with Python's strftime).
STRFTIME_TIME = datetime(2024, 7, 6, 9, 5, 3, 120000)
STRFTIME_FORMATS = ["%d %b %Y", "%Y-%m-%d", "%-d %B %Y", "%A, %H:%M:%S", "%I %p %a %j %y %e|%f %%", "%m/%-m %-H:%-M"]

FEATURE_CONVERSATION = [
    m("system", "Be brief."),
    m("user", "Hello there"),
    m("assistant", "Hi! How can I help?"),
    m("user", "Tell me\na joke 🙂"),
]


def main():
    with open(os.path.join(HERE, "special_tokens.json"), encoding="utf-8") as f:
        special = json.load(f)
    names = sorted(n[: -len(".jinja")] for n in os.listdir(HERE) if n.endswith(".jinja"))
    out = []
    for name in names:
        with open(os.path.join(HERE, name + ".jinja"), encoding="utf-8") as f:
            tmpl = compile_template(f.read())
        for conv in CONVERSATIONS:
            for agp in (False, True):
                case = {"template": name, "messages": conv, "add_generation_prompt": agp}
                try:
                    case["rendered"] = tmpl.render(
                        messages=conv, tools=None, documents=None, add_generation_prompt=agp, **special.get(name, {})
                    )
                except jinja2.exceptions.TemplateError as e:
                    case["error"] = str(e)
                out.append(case)
    feature_tokens = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    for name, source in FEATURES:
        case = {"template": "feature_" + name, "source": source, "messages": FEATURE_CONVERSATION,
                "add_generation_prompt": True, "special_tokens": feature_tokens}
        try:
            case["rendered"] = compile_template(source).render(
                messages=FEATURE_CONVERSATION, tools=None, documents=None, add_generation_prompt=True, **feature_tokens
            )
        except jinja2.exceptions.TemplateError as e:
            case["error"] = str(e)
        out.append(case)
    for fmt in STRFTIME_FORMATS:
        out.append({"strftime": fmt, "time": STRFTIME_TIME.isoformat(), "rendered": STRFTIME_TIME.strftime(fmt)})
    with open(os.path.join(HERE, "expected.jsonl"), "w", encoding="utf-8") as f:
        for case in out:
            f.write(json.dumps(case, ensure_ascii=False) + "\n")
    out = [c for c in out if "template" in c]  # count the template cases only
    errors = sum("error" in c for c in out)
    print(f"{len(out)} cases ({errors} raise) from {len(names)} templates and {len(FEATURES)} feature templates, "
          f"Jinja2 {jinja2.__version__}")


if __name__ == "__main__":
    main()
