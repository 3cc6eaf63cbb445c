"""Go text/template, the subset `docker inspect -f` and `docker ps --format` take.

No well-kept Python library implements Go's text/template (the one PyPI package
is an early CGo wrapper), so this is a small evaluator of what Docker users write:
`{{.State.Pid}}`, `{{json .Config}}`, `{{index .NetworkSettings.Ports "80/tcp"}}`,
`{{range $k, $v := .X}}...{{end}}`, `if`/`else if`/`else`, `with`, pipelines
(`{{.Name | upper}}`), parentheses, variables, `{{- trim -}}` markers, comments,
Go's built-in functions (and, or, not, len, index, slice, eq, ne, lt, le, gt, ge,
print, printf, println, html, js, urlquery) and Docker's (json, split, join, title,
lower, upper, pad, truncate). Data is JSON-like (dicts, lists, str, int, float,
bool, None), evaluated as Docker's raw fallback does (a missing map key is an
error). `define`, `template`, `block` and `call` are refused in one line.
Errors read like Go's: `template: :1:2: executing "" at <.Foo>: map has no entry
for key "Foo"`.

    render(parse("{{.State.Pid}}"), data) -> "1234"
"""

import html
import json
import re
import urllib.parse
from dataclasses import dataclass, field

from ..errors import UsageError


class TemplateError(UsageError):
    """A template that cannot be parsed or executed: bad input whose line reads
    `template parsing error: <Go's wording>`, as Docker's does."""

    def __init__(self, message: str) -> None:
        super().__init__(f"template parsing error: {message}")


# -- lexing -------------------------------------------------------------------------
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<declare>:=)
  | (?P<assign>=)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<char>'(?:[^'\\]|\\.)+')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F_]+
                    |\d[\d_]*(?:\.\d*)?(?:[eE][-+]?\d+)?
                    |\.\d+(?:[eE][-+]?\d+)?))
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+)
  | (?P<dot>\.)
  | (?P<variable>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<lparen>\()
  | (?P<rparen>\)(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<pipe>\|)
  | (?P<comma>,)
""",
    re.VERBOSE,
)

KEYWORDS = {
    "if",
    "else",
    "end",
    "range",
    "with",
    "define",
    "template",
    "block",
    "break",
    "continue",
    "nil",
    "true",
    "false",
}


@dataclass
class Tok:
    kind: str
    text: str
    pos: int  # byte offset in the template


def _line_col(src, pos):
    line = src.count("\n", 0, pos) + 1
    return line, pos - (src.rfind("\n", 0, pos) + 1)


def _split(src):
    """[(kind, text, pos)]: ("text", str) and ("action", inner text) with trims applied."""
    out = []
    i = 0
    while True:
        j = src.find("{{", i)
        if j < 0:
            out.append(["text", src[i:], i])
            return out
        out.append(["text", src[i:j], i])
        start = j + 2
        if (
            src.startswith("- ", start)
            or src.startswith("-\t", start)
            or src.startswith("-\n", start)
            or src.startswith("-\r", start)
        ):
            out[-1][1] = out[-1][1].rstrip(" \t\r\n")
            start += 1
        trimmed = start > j + 2  # `{{- /* ... */ -}}`: the comment follows the marker's space
        if src.startswith("/*", _skip_space(src, start) if trimmed else start):
            end = src.find("*/", start)
            close = src.find("}}", end + 2) if end >= 0 else -1
            if end < 0 or close < 0:
                line, _ = _line_col(src, j)
                raise TemplateError(f"template: :{line}: unclosed comment")
            trim_right = src[end + 2 : close].strip() == "-"
            i = close + 2
            if trim_right:
                i = _skip_space(src, i)
            continue
        close = _find_close(src, start)
        if close < 0:
            line, _ = _line_col(src, j)
            raise TemplateError(f"template: :{line}: unclosed action")
        inner_end, i = close, close + 2
        if src[close - 1] == "-" and close - 2 >= start and src[close - 2] in " \t\r\n":
            inner_end = close - 1
            i = _skip_space(src, i)
        out.append(["action", src[start:inner_end], start])


def _skip_space(src, i):
    while i < len(src) and src[i] in " \t\r\n":
        i += 1
    return i


def _find_close(src, start):
    """The index of the `}}` that ends the action at `start` (quotes skipped)."""
    i, n = start, len(src)
    while i < n:
        ch = src[i]
        if ch in "\"'":
            i += 1
            while i < n and src[i] != ch:
                i += 2 if src[i] == "\\" else 1
        elif ch == "`":
            i = src.find("`", i + 1)
            if i < 0:
                return -1
        elif src.startswith("}}", i):
            return i
        i += 1
    return -1


def _tokens(src, text, base):
    out, i = [], 0
    while i < len(text):
        m = _TOKEN.match(text, i)
        if not m:
            line, _ = _line_col(src, base + i)
            raise TemplateError(f"template: :{line}: unexpected {text[i]!r} in command")
        if m.lastgroup != "space":
            out.append(Tok(m.lastgroup or "", m.group(), base + i))
        i = m.end()
    return out


# -- the parse tree ---------------------------------------------------------------------
@dataclass
class Operand:
    kind: str  # field, variable, dot, nil, bool, number, string, ident, pipe
    value: object = None  # field chain / var name / literal / Pipeline
    chain: list = field(default_factory=list)
    pos: int = 0
    text: str = ""


@dataclass
class Command:
    args: list
    pos: int


@dataclass
class Pipeline:
    decl: list
    assign: bool
    cmds: list
    pos: int


@dataclass
class Node:
    kind: str  # text, action, if, range, with, break, continue
    text: str = ""
    pipe: Pipeline | None = None
    body: list | None = None
    other: list | None = None  # the else branch
    pos: int = 0


class _Parser:
    def __init__(self, src):
        self.src = src
        self.items = _split(src)
        self.i = 0

    def err(self, pos, msg):
        line, _ = _line_col(self.src, pos)
        return TemplateError(f"template: :{line}: {msg}")

    def parse(self):
        nodes, stop = self.list_until(())
        if stop is not None:
            raise self.err(stop[1], f"unexpected {{{{{stop[0]}}}}}")
        return nodes

    def list_until(self, stops):
        """Nodes up to an action whose first word is in `stops`; (nodes, (word, pos, toks))."""
        nodes = []
        while self.i < len(self.items):
            kind, text, pos = self.items[self.i]
            self.i += 1
            if kind == "text":
                if text:
                    nodes.append(Node("text", text=text, pos=pos))
                continue
            toks = _tokens(self.src, text, pos)
            if not toks:
                raise self.err(pos, "missing value for command")
            word = toks[0].text if toks[0].kind == "ident" else None
            if word in ("end", "else"):
                if word not in stops:
                    raise self.err(pos, f"unexpected {{{{{word}}}}}")
                return nodes, (word, pos, toks)
            if word in ("if", "range", "with"):
                nodes.append(self.control(word, toks, pos))
            elif word in ("break", "continue"):
                nodes.append(Node(word, pos=pos))
            elif word in ("define", "template", "block"):
                raise self.err(pos, f"{{{{{word}}}}} is not supported by pyinspect")
            else:
                nodes.append(Node("action", pipe=self.pipeline(toks, pos), pos=pos))
        if stops:
            raise self.err(len(self.src), "unexpected EOF")
        return nodes, None

    def control(self, word, toks, pos):
        """{{if}}/{{range}}/{{with}} up to its {{end}}; `else if`/`else with` nest a
        control that ends at the same {{end}}."""
        pipe = self.pipeline(toks[1:], pos, allow_two=(word == "range"))
        body, (stop, spos, stoks) = self.list_until(("end", "else"))
        other = None
        if stop == "else":
            if len(stoks) > 1 and stoks[1].kind == "ident" and stoks[1].text in ("if", "with"):
                other = [self.control(stoks[1].text, stoks[1:], spos)]
            else:
                if len(stoks) > 1:
                    raise self.err(spos, "unexpected words after {{else}}")
                other, _ = self.list_until(("end",))
        return Node(word, pipe=pipe, body=body, other=other, pos=pos)

    def pipeline(self, toks, pos, allow_two=False):
        if not toks:
            raise self.err(pos, "missing value for command")
        decl, assign = [], False
        # $x := ... / $x = ... / $k, $v := ...
        k = 0
        names = []
        while k < len(toks) and toks[k].kind == "variable" and "." not in toks[k].text:
            names.append(toks[k].text)
            if k + 1 < len(toks) and toks[k + 1].kind == "comma" and allow_two and len(names) < 2:
                k += 2
                continue
            break
        if names and k + 1 < len(toks) and toks[k + 1].kind in ("declare", "assign"):
            decl, assign = names, toks[k + 1].kind == "assign"
            toks = toks[k + 2 :]
            if not toks:
                raise self.err(pos, "missing value for command")
        cmds: list[Command] = []
        cur: list[Operand] = []
        j = 0
        while j < len(toks):
            t = toks[j]
            if t.kind == "pipe":
                if not cur:
                    raise self.err(t.pos, "missing command")
                cmds.append(Command(cur, cur[0].pos))
                cur = []
                j += 1
                continue
            op, j = self.operand(toks, j)
            cur.append(op)
        if not cur:
            raise self.err(pos, "missing command")
        cmds.append(Command(cur, cur[0].pos))
        return Pipeline(decl, assign, cmds, pos)

    def operand(self, toks, j):
        t = toks[j]
        k = t.kind
        if k == "lparen":
            depth, m = 1, j + 1
            while m < len(toks) and depth:
                if toks[m].kind == "lparen":
                    depth += 1
                elif toks[m].kind == "rparen":
                    depth -= 1
                m += 1
            if depth:
                raise self.err(t.pos, "unclosed left paren")
            close = toks[m - 1]
            chain = [c for c in close.text[1:].split(".") if c]
            inner = self.pipeline(toks[j + 1 : m - 1], t.pos)
            return Operand("pipe", inner, chain, t.pos, "(" + ")"), m
        if k == "rparen":
            raise self.err(t.pos, "unexpected right paren")
        if k == "field":
            return Operand("field", None, t.text.split(".")[1:], t.pos, t.text), j + 1
        if k == "dot":
            return Operand("dot", None, [], t.pos, "."), j + 1
        if k == "variable":
            name, *chain = t.text.split(".")
            return Operand("variable", name, chain, t.pos, t.text), j + 1
        if k in ("string", "raw"):
            text = t.text[1:-1] if k == "raw" else json.loads(_go_escapes(t.text))
            return Operand("string", text, [], t.pos, t.text), j + 1
        if k == "char":
            ch = json.loads('"' + t.text[1:-1].replace('"', '\\"') + '"')
            return Operand("number", ord(ch[0]), [], t.pos, t.text), j + 1
        if k == "number":
            text = t.text.replace("_", "")
            value: int | float
            try:
                value = int(text, 0)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    raise self.err(t.pos, f"bad number syntax: {t.text!r}") from None
            return Operand("number", value, [], t.pos, t.text), j + 1
        if k == "ident":
            name, *chain = t.text.split(".")
            if name in ("true", "false"):
                return Operand("bool", name == "true", [], t.pos, t.text), j + 1
            if name == "nil":
                return Operand("nil", None, [], t.pos, t.text), j + 1
            if name in KEYWORDS:
                raise self.err(t.pos, f"unexpected <{name}> in command")
            if name not in FUNCS:
                raise self.err(t.pos, f'function "{name}" not defined')
            if chain:
                raise self.err(t.pos, f"unexpected <.{chain[0]}> after function {name}")
            return Operand("ident", name, [], t.pos, t.text), j + 1
        raise self.err(t.pos, f"unexpected {t.text!r} in operand")


def _go_escapes(text):
    """A Go interpreted string literal as JSON (\\x.. and \\a\\v escapes converted)."""
    text = re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: f"\\u00{m.group(1)}", text)
    return text.replace("\\a", "\\u0007").replace("\\v", "\\u000b").replace("\\'", "'")


# -- values the Go way ------------------------------------------------------------------
def go_type(v):
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "[]interface {}"
    if isinstance(v, dict):
        return "map[string]interface {}"
    return type(v).__name__


def go_str(v, top=True):
    """fmt's %v of a JSON-like value."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if v == int(v) and abs(v) < 1e21:
            return str(int(v))
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(go_str(x, False) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{go_str(v[k], False)}" for k in sorted(v)) + "]"
    return str(v)


def truth(v):
    if v is None or v is False:
        return False
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v != 0
    if isinstance(v, (str, list, tuple, dict)):
        return len(v) > 0
    return True


class _Missing:
    """What a field of nothing gives (printed as Go does: `<no value>`)."""

    def __repr__(self):
        return "<no value>"


MISSING = _Missing()


# -- functions --------------------------------------------------------------------------
class _FuncError(Exception):
    pass


def _json(v):
    return json.dumps(None if v is MISSING else v, ensure_ascii=False, separators=(",", ":"))


def _index(item, *keys):
    for key in keys:
        if isinstance(item, dict):
            if not isinstance(key, str):
                raise _FuncError(f"value has type {go_type(key)}; should be string")
            item = item.get(key)
        elif isinstance(item, (list, tuple, str)):
            if not isinstance(key, int) or isinstance(key, bool):
                raise _FuncError(f"cannot index slice/array with type {go_type(key)}")
            if not 0 <= key < len(item):
                raise _FuncError(f"error calling index: index out of range: {key}")
            item = item[key] if not isinstance(item, str) else ord(item[key])
        elif item is None:
            raise _FuncError("error calling index: index of untyped nil")
        else:
            raise _FuncError(f"error calling index: can't index item of type {go_type(item)}")
    return item


def _slice(item, *idx):
    if not isinstance(item, (list, tuple, str)):
        raise _FuncError(f"error calling slice: can't slice item of type {go_type(item)}")
    if len(idx) > 2:
        raise _FuncError("error calling slice: too many slice indexes")
    lo = idx[0] if idx else 0
    hi = idx[1] if len(idx) > 1 else len(item)
    if not (0 <= lo <= hi <= len(item)):
        raise _FuncError(f"error calling slice: index out of range: {hi}")
    return item[lo:hi]


def _len(v):
    if isinstance(v, (str, list, tuple, dict)):
        return len(v.encode() if isinstance(v, str) else v)
    raise _FuncError(f"error calling len: len of type {go_type(v)}")


def _cmp_ok(a, b, op):
    num = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        same = isinstance(a, bool) and isinstance(b, bool)
    elif isinstance(a, num) or isinstance(b, num):
        same = isinstance(a, num) and isinstance(b, num)
    else:
        same = type(a) is type(b) or a is None or b is None
    if not same:
        raise _FuncError(f"error calling {op}: incompatible types for comparison")
    if op not in ("eq", "ne") and not isinstance(a, (int, float, str)):
        raise _FuncError(f"error calling {op}: invalid type for comparison")


def _eq(a, *others):
    if not others:
        raise _FuncError("error calling eq: missing argument for comparison")
    for b in others:
        _cmp_ok(a, b, "eq")
        if a == b:
            return True
    return False


def _ordered(op, fn):
    def cmp(a, b):
        _cmp_ok(a, b, op)
        return fn(a, b)

    return cmp


def _sprint(*args):
    out = []
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(go_str(a))
    return "".join(out)


_VERB = re.compile(r"%([-+# 0]*)(\d+|\*)?(?:\.(\d+))?([a-zA-Z%])")


def _printf(fmt, *given):
    if not isinstance(fmt, str):
        raise _FuncError(f"wrong type for value; expected string; got {go_type(fmt)}")
    args = list(given)
    out: list[str] = []
    pos = 0
    for m in _VERB.finditer(fmt):
        out.append(fmt[pos : m.start()])
        pos = m.end()
        flags, width, prec, verb = m.groups()
        if verb == "%":
            out.append("%")
            continue
        if width == "*":
            width = str(args.pop(0)) if args else ""
        if not args:
            out.append(f"%!{verb}(MISSING)")
            continue
        a = args.pop(0)
        out.append(_format_verb(a, flags, width, prec, verb))
    out.append(fmt[pos:])
    if args:
        out.append("%!(EXTRA " + ", ".join(f"{go_type(a)}={go_str(a)}" for a in args) + ")")
    return "".join(out)


def _format_verb(a, flags, width, prec, verb):
    spec = flags.replace("#", "")
    if "-" in spec:
        spec = "<" + spec.replace("-", "").replace("0", "")
    spec += width or ""
    isnum = isinstance(a, (int, float)) and not isinstance(a, bool)
    if verb in "dxXobc" and isinstance(a, int) and not isinstance(a, bool):
        if verb == "c":
            return format(chr(a), spec.replace("0", ""))
        return format(a, spec + verb)
    if verb in "xX" and isinstance(a, str):
        return format(a.encode().hex() if verb == "x" else a.encode().hex().upper(), spec)
    if verb in "eEfFgG" and isnum:
        return format(float(a), spec + (f".{prec}" if prec else "") + verb)
    if verb == "t" and isinstance(a, bool):
        return format(go_str(a), spec)
    if verb == "q" and isinstance(a, str):
        return format(json.dumps(a, ensure_ascii=False), spec)
    if verb in "vs":
        text = go_str(a)
        if prec:
            text = text[: int(prec)]
        return format(text, spec.replace("0", "") if not isnum else spec)
    return f"%!{verb}({go_type(a)}={go_str(a)})"


def _strs(v, fname):
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise _FuncError(
            f"error calling {fname}: wrong type for value; expected []string; got {go_type(v)}"
        )
    return v


def _need_str(fname, *vals):
    for v in vals:
        if not isinstance(v, str):
            raise _FuncError(f"wrong type for value; expected string; got {go_type(v)}")


def _title(s):
    _need_str("title", s)
    return re.sub(r"(^|[^\w'])(\w)", lambda m: m.group(1) + m.group(2).upper(), s)


def _pad(s, prefix, suffix):
    _need_str("pad", s)
    return s if s == "" else " " * prefix + s + " " * suffix


def _truncate(s, n):
    _need_str("truncate", s)
    return s if len(s) < n else s[:n]


def _split_fn(s, sep):
    _need_str("split", s, sep)
    if sep == "":
        return list(s)
    return s.split(sep)


def _js(*args):
    return json.dumps(_sprint(*args), ensure_ascii=True)[1:-1].replace("'", "\\'")


FUNCS = {
    # Docker's (docker/cli templates.basicFunctions)
    "json": _json,
    "split": _split_fn,
    "join": lambda v, sep: sep.join(_strs(v, "join")),
    "title": _title,
    "lower": lambda s: (_need_str("lower", s), s.lower())[1],
    "upper": lambda s: (_need_str("upper", s), s.upper())[1],
    "pad": _pad,
    "truncate": _truncate,
    # Go's built-ins (and/or are evaluated lazily in _call)
    "and": None,
    "or": None,
    "not": lambda v: not truth(v),
    "len": _len,
    "index": _index,
    "slice": _slice,
    "eq": _eq,
    "ne": lambda a, b: (_cmp_ok(a, b, "ne"), a != b)[1],
    "lt": _ordered("lt", lambda a, b: a < b),
    "le": _ordered("le", lambda a, b: a <= b),
    "gt": _ordered("gt", lambda a, b: a > b),
    "ge": _ordered("ge", lambda a, b: a >= b),
    "print": _sprint,
    "printf": _printf,
    "println": lambda *a: " ".join(go_str(x) for x in a) + "\n",
    "html": lambda *a: html.escape(_sprint(*a)).replace("&#x27;", "&#39;"),
    "js": _js,
    "urlquery": lambda *a: urllib.parse.quote_plus(_sprint(*a)),
    "call": None,
}
_ARITY = {
    "split": 2,
    "join": 2,
    "title": 1,
    "lower": 1,
    "upper": 1,
    "pad": 3,
    "truncate": 2,
    "json": 1,
    "not": 1,
    "len": 1,
    "ne": 2,
    "lt": 2,
    "le": 2,
    "gt": 2,
    "ge": 2,
}


# -- execution --------------------------------------------------------------------------
class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _Exec:
    def __init__(self, src, out):
        self.src = src
        self.out = out
        self.vars = []

    def err(self, op_or_pos, msg, text=None):
        pos = op_or_pos if isinstance(op_or_pos, int) else op_or_pos.pos
        line, col = _line_col(self.src, pos)
        at = text if text is not None else getattr(op_or_pos, "text", "")
        return TemplateError(f'template: :{line}:{col}: executing "" at <{at}>: {msg}')

    def lookup(self, name, op):
        for scope in reversed(self.vars):
            if name in scope:
                return scope[name]
        raise self.err(op, f"undefined variable: {name}")

    def setvar(self, name, value, op):
        for scope in reversed(self.vars):
            if name in scope:
                scope[name] = value
                return
        raise self.err(op, f"undefined variable: {name}")

    def walk(self, nodes, dot):
        for n in nodes:
            if n.kind == "text":
                self.out.append(n.text)
            elif n.kind == "action":
                value = self.pipeline(n.pipe, dot)
                if not n.pipe.decl:
                    self.out.append("<no value>" if value is MISSING else go_str(value))
            elif n.kind == "if":
                self.vars.append({})
                try:
                    value = self.pipeline(n.pipe, dot)
                    self.walk(n.body if truth(value) else (n.other or []), dot)
                finally:
                    self.vars.pop()
            elif n.kind == "with":
                self.vars.append({})
                try:
                    value = self.pipeline(n.pipe, dot)
                    if truth(value):
                        self.walk(n.body, value)
                    else:
                        self.walk(n.other or [], dot)
                finally:
                    self.vars.pop()
            elif n.kind == "range":
                self.range(n, dot)
            elif n.kind == "break":
                raise _Break()
            elif n.kind == "continue":
                raise _Continue()

    def range(self, n, dot):
        pipe = Pipeline([], False, n.pipe.cmds, n.pipe.pos)
        value = self.pipeline(pipe, dot)
        if isinstance(value, dict):
            items = [(k, value[k]) for k in sorted(value)]
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            items = [(i, i) for i in range(value)]
        elif value is None or value is MISSING:
            items = []
        else:
            raise self.err(n.pipe.cmds[0].args[0], f"range can't iterate over {go_str(value)}")
        if not items:
            self.walk(n.other or [], dot)
            return
        for key, elem in items:
            scope = {}
            if len(n.pipe.decl) == 1:
                scope[n.pipe.decl[0]] = elem
            elif len(n.pipe.decl) == 2:
                scope[n.pipe.decl[0]], scope[n.pipe.decl[1]] = key, elem
            self.vars.append(scope)
            try:
                self.walk(n.body, elem)
            except _Continue:
                continue
            except _Break:
                break
            finally:
                self.vars.pop()

    def pipeline(self, pipe, dot):
        value = None
        has_value = False
        for cmd in pipe.cmds:
            value = self.command(cmd, dot, value if has_value else None, has_value)
            has_value = True
        if pipe.decl:
            if pipe.assign:
                self.setvar(pipe.decl[0], value, pipe.cmds[0].args[0])
            else:
                self.vars[-1][pipe.decl[-1]] = value
        return value

    def command(self, cmd, dot, piped, has_piped):
        first = cmd.args[0]
        if first.kind == "ident":
            return self.call(first, cmd.args[1:], dot, piped, has_piped)
        if len(cmd.args) > 1 or has_piped:
            raise self.err(first, f"can't give argument to non-function {first.text}")
        return self.operand(first, dot)

    def call(self, op, args, dot, piped, has_piped):
        name = op.value
        if name == "call":
            raise self.err(op, 'function "call" is not supported by pyinspect', name)
        if name in ("and", "or"):
            ops = list(args)
            if not ops and not has_piped:
                raise self.err(op, f"wrong number of args for {name}: want at least 1 got 0", name)
            value = None
            for a in ops:
                value = self.operand(a, dot)
                if truth(value) != (name == "and"):
                    return value
            if has_piped:
                value = piped
            return value
        values = [self.operand(a, dot) for a in args]
        if has_piped:
            values.append(piped)
        want = _ARITY.get(name)
        if want is not None and len(values) != want:
            raise self.err(
                op, f"wrong number of args for {name}: want {want} got {len(values)}", name
            )
        values = [None if v is MISSING else v for v in values]
        try:
            return FUNCS[name](*values)
        except _FuncError as exc:
            raise self.err(op, str(exc), name) from None
        except TypeError:
            raise self.err(op, f"wrong number of args for {name}", name) from None

    def operand(self, op, dot):
        k = op.kind
        if k == "field":
            return self.fields(dot, op.chain, op)
        if k == "dot":
            return dot
        if k == "variable":
            return self.fields(self.lookup(op.value, op), op.chain, op)
        if k == "pipe":
            return self.fields(self.pipeline(op.value, dot), op.chain, op)
        if k == "ident":
            return self.call(op, [], dot, None, False)
        return op.value

    def fields(self, value, chain, op):
        for name in chain:
            if isinstance(value, dict):
                if name not in value:
                    raise self.err(op, f'map has no entry for key "{name}"')
                value = value[name]
            elif value is None or value is MISSING:
                raise self.err(op, f"nil pointer evaluating interface {{}}.{name}")
            else:
                raise self.err(op, f"can't evaluate field {name} in type {go_type(value)}")
        return value


@dataclass
class Template:
    """A parsed template: `render(data)` executes it."""

    src: str
    nodes: list

    def render(self, data) -> str:
        out: list[str] = []
        ex = _Exec(self.src, out)
        ex.vars.append({"$": data})
        try:
            ex.walk(self.nodes, data)
        except (_Break, _Continue):
            raise TemplateError(
                "template: :1: {{break}} or {{continue}} outside {{range}}"
            ) from None
        return "".join(out)


def parse(src: str) -> Template:
    """Parse Go template text (TemplateError with Go's wording when it is invalid)."""
    return Template(src, _Parser(src).parse())


def render(template, data) -> str:
    """Execute `template` (a Template or its text) on `data`."""
    if isinstance(template, str):
        template = parse(template)
    return template.render(data)
