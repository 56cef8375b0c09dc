#!/usr/bin/env python3
"""Checks config.alloy offline, where no Alloy binary is at hand (`alloy fmt` and `alloy run`
are the real checks; run them where Alloy is installed).

1. Syntax: a parser of Alloy's configuration language (blocks, attributes, strings, numbers,
   arrays, objects, references, calls, operators, comments) that fails on what Alloy would
   refuse to parse: an unbalanced brace, a missing `=` or comma, an unterminated string.
2. Wiring: every top-level block is a component this pipeline uses, with a label, declared
   once; every reference (`discovery.kubernetes.pods.targets`) names a declared component.
3. Sameness with ../promtail/promtail.yml: the namespaces, the JSON expressions, the labels,
   the structured metadata, the timestamp and the Loki URL.

    check-alloy.py [CONFIG [PROMTAIL]]   checks (default: the files beside this script)
    check-alloy.py --self-test           also proves that broken copies fail
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
COMPONENTS = {
    "discovery.kubernetes", "discovery.relabel", "loki.source.kubernetes", "loki.process",
    "loki.write", "loki.source.file", "local.file_match",
}
STDLIB = {"sys", "string", "encoding", "convert", "array", "coalesce", "constants", "json_path"}


class AlloyError(Exception):
    pass


TOKEN = re.compile(r"""
    (?P<space>[ \t\r]+)
  | (?P<newline>\n)
  | (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|&&|\|\||[-+*/%^<>!=.,\[\](){}])
""", re.VERBOSE | re.DOTALL)


def tokens(text: str) -> list[tuple[str, str, int]]:
    out, pos, line = [], 0, 1
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m:
            raise AlloyError(f"line {line}: unexpected character {text[pos]!r}")
        kind, value = m.lastgroup, m.group()
        if kind == "newline":
            out.append(("newline", "\n", line))
        elif kind not in ("space", "comment"):
            out.append((kind, value, line))
        line += value.count("\n")
        pos = m.end()
    out.append(("eof", "", line))
    return out


class Parser:
    """Body, blocks and attributes as Python: a block is {"name", "label", "attrs", "blocks"};
    literal values become Python values, other expressions an Expr holding their references."""

    def __init__(self, text: str):
        self.toks = tokens(text)
        self.i = 0
        self.references: list[tuple[str, int]] = []

    def peek(self, skip_newlines=True):
        j = self.i
        while skip_newlines and self.toks[j][0] == "newline":
            j += 1
        return self.toks[j]

    def next(self, skip_newlines=True):
        while skip_newlines and self.toks[self.i][0] == "newline":
            self.i += 1
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, value, what=None):
        kind, v, line = self.next()
        if v != value or kind not in ("op",):
            raise AlloyError(f"line {line}: expected {what or repr(value)}, found {v!r}")

    def body(self, closing: str | None) -> dict:
        attrs, blocks = {}, []
        while True:
            kind, value, line = self.peek()
            if closing is None and kind == "eof":
                return {"attrs": attrs, "blocks": blocks}
            if closing is not None and value == closing and kind == "op":
                self.next()
                return {"attrs": attrs, "blocks": blocks}
            if kind != "ident":
                raise AlloyError(f"line {line}: expected an attribute or a block, found {value!r}")
            self.next()
            name = value
            while self.peek(False)[1] == ".":
                self.next(False)
                k, v, ln = self.next(False)
                if k != "ident":
                    raise AlloyError(f"line {ln}: expected a name after '.', found {v!r}")
                name += "." + v
            kind, value, line = self.next(False)
            if value == "=" and kind == "op":
                if "." in name:
                    raise AlloyError(f"line {line}: an attribute name cannot contain '.': {name}")
                if name in attrs:
                    raise AlloyError(f"line {line}: attribute {name} set twice")
                attrs[name] = self.expr()
                self.end_of_statement(closing)
            elif kind == "string" or value == "{":
                label = None
                if kind == "string":
                    label = decode(value)
                    self.expect("{", "'{' after the block's label")
                blocks.append({"name": name, "label": label, "line": line, **self.body("}")})
                self.end_of_statement(closing)
            else:
                raise AlloyError(f"line {line}: expected '=' or a block after {name}, found {value!r}")

    def end_of_statement(self, closing):
        kind, value, line = self.toks[self.i]
        if kind in ("newline", "eof") or (kind == "op" and value == closing):
            return
        raise AlloyError(f"line {line}: expected a new line after the statement, found {value!r}")

    # Expressions, by precedence: || && comparisons + - * / % ^ unary.
    BINARY = [["||"], ["&&"], ["==", "!=", "<", ">", "<=", ">="], ["+", "-"], ["*", "/", "%"], ["^"]]

    def expr(self, level=0):
        if level == len(self.BINARY):
            return self.unary()
        left = self.expr(level + 1)
        while self.peek(False)[0] == "op" and self.peek(False)[1] in self.BINARY[level]:
            self.next(False)
            right = self.expr(level + 1)
            left = Expr()
        return left

    def unary(self):
        kind, value, line = self.peek(False)
        if kind == "op" and value in ("!", "-"):
            self.next(False)
            self.unary()
            return Expr()
        return self.postfix()

    def postfix(self):
        value = self.primary()
        while True:
            kind, v, line = self.peek(False)
            if kind == "op" and v == "[":
                self.next(False)
                self.expr()
                self.expect("]")
                value = Expr()
            elif kind == "op" and v == "(":
                self.next(False)
                self.items(")")
                value = Expr()
            elif kind == "op" and v == ".":
                self.next(False)
                k, name, ln = self.next(False)
                if k != "ident":
                    raise AlloyError(f"line {ln}: expected a field name after '.', found {name!r}")
                value = Expr()
            else:
                return value

    def items(self, closing):
        values = []
        while True:
            if self.peek()[1] == closing and self.peek()[0] == "op":
                self.next()
                return values
            values.append(self.expr())
            kind, value, line = self.next()
            if kind == "op" and value == closing:
                return values
            if not (kind == "op" and value == ","):
                raise AlloyError(f"line {line}: expected ',' or {closing!r}, found {value!r}")

    def primary(self):
        kind, value, line = self.next()
        if kind == "string":
            return decode(value)
        if kind == "raw":
            return value[1:-1]
        if kind == "number":
            return float(value) if "." in value or "e" in value.lower() else int(value)
        if kind == "ident":
            if value in ("true", "false"):
                return value == "true"
            if value == "null":
                return None
            # A reference: the dotted name that follows (a call's name is checked the same way).
            path = value
            j = self.i
            while self.toks[j][1] == "." and self.toks[j + 1][0] == "ident":
                path += "." + self.toks[j + 1][1]
                j += 2
            self.references.append((path, line))
            return Expr()
        if kind == "op" and value == "[":
            return self.items("]")
        if kind == "op" and value == "{":
            return self.object()
        if kind == "op" and value == "(":
            inner = self.expr()
            self.expect(")")
            return inner
        raise AlloyError(f"line {line}: expected a value, found {value!r}")

    def object(self):
        fields = {}
        while True:
            kind, value, line = self.next()
            if kind == "op" and value == "}":
                return fields
            if kind == "ident":
                key = value
            elif kind == "string":
                key = decode(value)
            else:
                raise AlloyError(f"line {line}: expected an object key, found {value!r}")
            self.expect("=", f"'=' after the key {key}")
            if key in fields:
                raise AlloyError(f"line {line}: key {key} twice in an object")
            fields[key] = self.expr()
            kind, value, line = self.next()
            if kind == "op" and value == "}":
                return fields
            if not (kind == "op" and value == ","):
                raise AlloyError(f"line {line}: expected ',' or '}}' after {key}, found {value!r}")


class Expr:
    """A value that is not a literal (a reference, a call, an operation)."""


def decode(literal: str) -> str:
    return bytes(literal[1:-1], "utf-8").decode("unicode_escape")


def parse(text: str) -> tuple[dict, list]:
    p = Parser(text)
    return p.body(None), p.references


def blocks(body: dict, name: str) -> list[dict]:
    return [b for b in body["blocks"] if b["name"] == name]


def one(body: dict, name: str) -> dict:
    found = blocks(body, name)
    if len(found) != 1:
        raise AlloyError(f"expected one {name} block, found {len(found)}")
    return found[0]


def check(config_text: str, promtail_text: str) -> None:
    body, references = parse(config_text)
    if body["attrs"]:
        raise AlloyError(f"top-level attributes are not allowed: {sorted(body['attrs'])}")
    declared = set()
    for b in body["blocks"]:
        if b["name"] not in COMPONENTS:
            raise AlloyError(f"line {b['line']}: {b['name']} is not a component this pipeline uses")
        if not b["label"]:
            raise AlloyError(f"line {b['line']}: component {b['name']} needs a label")
        if (b["name"], b["label"]) in declared:
            raise AlloyError(f"line {b['line']}: {b['name']} \"{b['label']}\" declared twice")
        declared.add((b["name"], b["label"]))
    names = {f"{n}.{label}" for n, label in declared}
    for path, line in references:
        if path.split(".")[0] in STDLIB:
            continue
        if not any(path.startswith(n + ".") for n in names):
            raise AlloyError(f"line {line}: {path} names no declared component")

    promtail = yaml.safe_load(promtail_text)
    job = promtail["scrape_configs"][0]
    stages = {next(iter(s)): s[next(iter(s))] for s in job["pipeline_stages"]}

    kubernetes = [b for b in blocks(body, "discovery.kubernetes")]
    if len(kubernetes) != 1:
        raise AlloyError("expected one discovery.kubernetes component")
    namespaces = one(kubernetes[0], "namespaces")["attrs"].get("names")
    if namespaces != job["kubernetes_sd_configs"][0]["namespaces"]["names"]:
        raise AlloyError(f"namespaces {namespaces} differ from promtail.yml's")

    process = blocks(body, "loki.process")
    if len(process) != 1:
        raise AlloyError("expected one loki.process component")
    process = process[0]
    expressions = one(process, "stage.json")["attrs"].get("expressions")
    if expressions != stages["json"]["expressions"]:
        raise AlloyError(f"stage.json expressions {expressions} differ from promtail.yml's")
    labels = one(process, "stage.labels")["attrs"].get("values")
    if set(labels or {}) != set(stages["labels"]):
        raise AlloyError(f"stage.labels {sorted(labels or {})} differ from promtail.yml's")
    metadata = one(process, "stage.structured_metadata")["attrs"].get("values")
    if set(metadata or {}) != set(stages["structured_metadata"]):
        raise AlloyError(f"stage.structured_metadata {sorted(metadata or {})} differ from promtail.yml's")
    timestamp = one(process, "stage.timestamp")["attrs"]
    if (timestamp.get("source"), timestamp.get("format")) != (stages["timestamp"]["source"], stages["timestamp"]["format"]):
        raise AlloyError("stage.timestamp differs from promtail.yml's")

    urls = [one(w, "endpoint")["attrs"].get("url") for w in blocks(body, "loki.write")]
    if urls != [c["url"] for c in promtail["clients"]]:
        raise AlloyError(f"loki.write endpoints {urls} differ from promtail.yml's clients")


def self_test(config_text: str, promtail_text: str) -> None:
    broken = {
        "a brace removed": config_text.replace("}\n", "\n", 1),
        "an unterminated string": config_text.replace('role = "pod"', 'role = "pod', 1),
        "a missing comma in an object": config_text.replace('"level",', '"level"', 1),
        "a missing '='": config_text.replace("forward_to = [loki.write", "forward_to [loki.write", 1),
        "a reference to nothing": config_text.replace("loki.write.loki.receiver", "loki.write.lokki.receiver", 1),
        "an unknown component": config_text.replace('loki.write "loki"', 'loki.writer "loki"', 1),
        "a component declared twice": config_text + '\nloki.write "loki" {\n}\n',
        "a changed JSON expression": config_text.replace('"span.method"', '"span.verb"', 1),
        "a label dropped": config_text.replace('      target = "",\n', "", 1),
        "another Loki": config_text.replace("loki.monitoring.svc", "loki.logging.svc", 1),
        "another namespace": config_text.replace('names = ["libertum"]', 'names = ["default"]', 1),
    }
    for what, text in broken.items():
        if text == config_text:
            raise SystemExit(f"check-alloy self-test: could not make {what}: the config changed; update the self-test")
        try:
            check(text, promtail_text)
        except AlloyError:
            continue
        raise SystemExit(f"check-alloy self-test: {what} passed the check")
    print(f"check-alloy: self-test passed ({len(broken)} broken copies refused)")


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--self-test"]
    config = Path(args[0]) if args else HERE / "config.alloy"
    promtail = Path(args[1]) if len(args) > 1 else HERE.parent / "promtail" / "promtail.yml"
    config_text, promtail_text = config.read_text(), promtail.read_text()
    try:
        check(config_text, promtail_text)
    except AlloyError as e:
        raise SystemExit(f"check-alloy: {config}: {e}")
    print(f"check-alloy: {config} parses and matches {promtail.name}")
    if "--self-test" in sys.argv[1:]:
        self_test(config_text, promtail_text)


if __name__ == "__main__":
    main()
