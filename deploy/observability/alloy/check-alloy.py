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
4. The trace path, traces/traces.alloy: the same syntax and reference checks; its wiring
   (otelcol.receiver.otlp -> otelcol.processor.batch -> otelcol.exporter.otlp, traces only);
   and that the names and ports agree end to end: the services' LIBERTUM_OTLP_ENDPOINT
   (deploy/k8s/base) names the Service `otlp` of traces/gateway.yaml, its namespace and port,
   whose target is the container port the receiver listens on; the services' NetworkPolicy lets
   them reach the gateway's pods on that port; the exporter sends to Tempo's Service
   (../tempo/values.yaml: fullnameOverride, the helm command's namespace) on the port of
   Tempo's OTLP gRPC receiver, without TLS as that receiver has none, and the gateway's
   NetworkPolicy lets it reach that port. And Grafana (../grafana/datasources-values.yaml): the
   Loki and Tempo data sources point at their Services, link each other by uid, and the derived
   field names the structured metadata key that promtail.yml and config.alloy keep.

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
TRACE_COMPONENTS = {"otelcol.receiver.otlp", "otelcol.processor.batch", "otelcol.exporter.otlp"}
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
                # A reference's dotted path was read whole by primary(): it stays that reference.
                if not isinstance(value, Ref):
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
            return Ref(path)
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


class Ref(Expr):
    """A reference to a component's export, by its dotted path (otelcol.exporter.otlp.tempo.input)."""

    def __init__(self, path: str):
        self.path = path


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


def components(text: str, allowed: set[str]) -> dict:
    """Parses a configuration: only components of `allowed`, each labelled and declared once, and
    every reference naming a declared component."""
    body, references = parse(text)
    if body["attrs"]:
        raise AlloyError(f"top-level attributes are not allowed: {sorted(body['attrs'])}")
    declared = set()
    for b in body["blocks"]:
        if b["name"] not in allowed:
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
    return body


def check(config_text: str, promtail_text: str) -> None:
    body = components(config_text, COMPONENTS)

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


def refs(value, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, Ref) for v in value):
        raise AlloyError(f"{where} must be a list of component references")
    return [v.path for v in value]


def only(body: dict, name: str) -> dict:
    found = blocks(body, name)
    if len(found) != 1:
        raise AlloyError(f"expected one {name} component, found {len(found)}")
    return found[0]


def host_port(endpoint, what: str) -> tuple[str, int]:
    m = re.fullmatch(r"([^:/]+):(\d+)", endpoint if isinstance(endpoint, str) else "")
    if not m:
        raise AlloyError(f"{what} {endpoint!r} is not host:port")
    return m[1], int(m[2])


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def check_traces(traces: str, gateway: str, gateway_kustomization: str, tempo_values: str, base: str,
                 base_policies: str, grafana: str, promtail: str) -> None:
    """The trace path's files, as texts: traces.alloy, gateway.yaml and kustomization.yaml beside
    it, ../tempo/values.yaml, deploy/k8s/base's kustomization.yaml and networkpolicies.yaml,
    ../grafana/datasources-values.yaml and ../promtail/promtail.yml."""
    traces_text, gateway_text, gateway_kustomization_text = traces, gateway, gateway_kustomization
    tempo_values_text, base_text, base_policies_text = tempo_values, base, base_policies
    body = components(traces_text, TRACE_COMPONENTS)
    receiver, batch, exporter = (only(body, n) for n in
                                 ("otelcol.receiver.otlp", "otelcol.processor.batch", "otelcol.exporter.otlp"))
    batch_input = f"otelcol.processor.batch.{batch['label']}.input"
    exporter_input = f"otelcol.exporter.otlp.{exporter['label']}.input"
    # The wiring: traces, and only traces, go receiver -> batch -> exporter.
    for component, target in ((receiver, batch_input), (batch, exporter_input)):
        output = one(component, "output")["attrs"]
        if set(output) != {"traces"}:
            raise AlloyError(f"{component['name']} \"{component['label']}\" must output traces only, not {sorted(output)}")
        if refs(output["traces"], f"{component['name']}'s output.traces") != [target]:
            raise AlloyError(f"{component['name']} \"{component['label']}\" must send its traces to {target} alone")
    http = one(receiver, "http")["attrs"]
    _, receiver_port = host_port(http.get("endpoint"), "the receiver's http endpoint")
    traces_path = http.get("traces_url_path", "/v1/traces")
    client = one(exporter, "client")
    tempo_host, tempo_port = host_port(client["attrs"].get("endpoint"), "the exporter's endpoint")
    tls = blocks(client, "tls")
    insecure = len(tls) == 1 and tls[0]["attrs"].get("insecure") is True

    # The gateway: its namespace, the Service `otlp` and the container port it targets.
    namespace = yaml.safe_load(gateway_kustomization_text).get("namespace")
    docs = [d for d in yaml.safe_load_all(gateway_text) if d]
    kinds = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    service = kinds.get(("Service", "otlp"))
    deployment = next((d for d in docs if d["kind"] == "Deployment"), None)
    if not service or not deployment:
        raise AlloyError("gateway.yaml must hold the Service otlp and the gateway's Deployment")
    pod = deployment["spec"]["template"]
    if not selects({"matchLabels": service["spec"]["selector"]}, pod["metadata"]["labels"]):
        raise AlloyError("the Service otlp does not select the gateway's pods")
    container = pod["spec"]["containers"][0]
    if "/etc/alloy/traces.alloy" not in container.get("args", []):
        raise AlloyError("the gateway's container does not run /etc/alloy/traces.alloy")
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    service_port = service["spec"]["ports"][0]
    target = service_port.get("targetPort", service_port["port"])
    if ports.get(target, target) != receiver_port:
        raise AlloyError(f"the Service otlp targets {target} ({ports.get(target, target)}), the receiver listens on {receiver_port}")

    # The services' endpoint names that Service, namespace, port and the receiver's path.
    expected = f"http://otlp.{namespace}.svc.cluster.local:{service_port['port']}{traces_path}"
    literals = [lit for g in yaml.safe_load(base_text)["configMapGenerator"] if g["name"] == "libertum-config"
                for lit in g.get("literals", [])]
    endpoint = next((lit.split("=", 1)[1] for lit in literals if lit.startswith("LIBERTUM_OTLP_ENDPOINT=")), None)
    if endpoint != expected:
        raise AlloyError(f"deploy/k8s/base's LIBERTUM_OTLP_ENDPOINT is {endpoint!r}, the gateway serves {expected}")
    # ... and the services' NetworkPolicy lets them reach the gateway's pods on the receiver's port.
    def allows(policy_egress, ns, labels, port):
        for rule in policy_egress or []:
            if not any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in rule.get("ports", [])):
                continue
            for peer in rule.get("to", []):
                ns_ok = ns is None if "namespaceSelector" not in peer else \
                    selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": ns})
                if ns_ok and selects(peer.get("podSelector", {}), labels):
                    return True
        return False
    policies = [d for d in yaml.safe_load_all(base_policies_text) if d and d["kind"] == "NetworkPolicy"]
    if not any(allows(p["spec"].get("egress"), namespace, pod["metadata"]["labels"], receiver_port) for p in policies):
        raise AlloyError(f"no NetworkPolicy of deploy/k8s/base lets the services reach the gateway's pods in {namespace} on {receiver_port}")

    # Tempo: its Service's name and namespace, its OTLP gRPC receiver's port, no TLS there.
    values = yaml.safe_load(tempo_values_text)
    command = re.search(r"helm upgrade --install (\S+) grafana-community/tempo --version \S+ -n (\S+)", tempo_values_text)
    if not command:
        raise AlloyError("tempo/values.yaml does not say its helm command (release, version, namespace)")
    tempo_name = values.get("fullnameOverride") or command[1]
    if tempo_host != f"{tempo_name}.{command[2]}.svc.cluster.local":
        raise AlloyError(f"the exporter sends to {tempo_host}, Tempo's Service is {tempo_name}.{command[2]}.svc.cluster.local")
    grpc = values["tempo"]["receivers"]["otlp"]["protocols"]["grpc"]
    _, grpc_port = host_port(grpc.get("endpoint"), "Tempo's OTLP gRPC receiver")
    if tempo_port != grpc_port:
        raise AlloyError(f"the exporter sends to port {tempo_port}, Tempo's OTLP gRPC receiver listens on {grpc_port}")
    if insecure != ("tls" not in grpc):
        raise AlloyError("the exporter's TLS setting does not match Tempo's receiver (insecure = true exactly when it has no tls)")
    gateway_policy = next((d for d in docs if d["kind"] == "NetworkPolicy" and selects(d["spec"]["podSelector"], pod["metadata"]["labels"])), None)
    tempo_labels = {"app.kubernetes.io/name": "tempo", "app.kubernetes.io/instance": command[1]}
    if not gateway_policy or not allows(gateway_policy["spec"].get("egress"), None, tempo_labels, grpc_port):
        raise AlloyError(f"the gateway's NetworkPolicy does not let it reach Tempo's pods on {grpc_port}")

    # Grafana: Loki and Tempo by their Services, linked both ways by the trace id.
    sources = {d["type"]: d for d in yaml.safe_load(grafana)["grafana"]["additionalDataSources"]}
    loki, tempo = sources.get("loki"), sources.get("tempo")
    if not loki or not tempo:
        raise AlloyError("datasources-values.yaml must hold a Loki and a Tempo data source")
    loki_push = yaml.safe_load(promtail)["clients"][0]["url"]
    if not loki_push.startswith(loki["url"].rstrip("/") + "/"):
        raise AlloyError(f"Grafana's Loki is {loki['url']}, the logs go to {loki_push}")
    http_port = (values["tempo"].get("server") or {}).get("http_listen_port", 3200)
    if tempo["url"] != f"http://{tempo_name}.{command[2]}.svc.cluster.local:{http_port}":
        raise AlloyError(f"Grafana's Tempo is {tempo['url']}, Tempo serves http://{tempo_name}.{command[2]}.svc.cluster.local:{http_port}")
    stages = {next(iter(st)): st[next(iter(st))] for st in yaml.safe_load(promtail)["scrape_configs"][0]["pipeline_stages"]}
    fields = loki["jsonData"].get("derivedFields", [])
    if not any(f.get("datasourceUid") == tempo.get("uid") and f.get("matcherType") == "label"
               and f.get("matcherRegex") in stages["structured_metadata"] and f.get("url") == "$${__value.raw}"
               for f in fields):
        raise AlloyError("Loki's data source has no derived field from a structured metadata key of the log pipeline "
                         "to the Tempo data source's uid, with the url $${__value.raw}")
    to_logs = tempo["jsonData"].get("tracesToLogsV2", {})
    if to_logs.get("datasourceUid") != loki.get("uid") or "$${__trace.traceId}" not in to_logs.get("query", "") \
            or not any(f"| {f['matcherRegex']} = " in to_logs.get("query", "") for f in fields):
        raise AlloyError("Tempo's tracesToLogsV2 must query the Loki data source's uid by the trace id's key")


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
        "the trace id read elsewhere": config_text.replace('"span.trace_id || ', '"span.traceid || ', 1),
        "the trace id not kept": config_text.replace('      trace_id   = "",\n', "", 1),
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


TRACE_FILES = {
    "traces": HERE / "traces" / "traces.alloy",
    "gateway": HERE / "traces" / "gateway.yaml",
    "gateway_kustomization": HERE / "traces" / "kustomization.yaml",
    "tempo_values": HERE.parent / "tempo" / "values.yaml",
    "base": HERE.parents[1] / "k8s" / "base" / "kustomization.yaml",
    "base_policies": HERE.parents[1] / "k8s" / "base" / "networkpolicies.yaml",
    "grafana": HERE.parent / "grafana" / "datasources-values.yaml",
    "promtail": HERE.parent / "promtail" / "promtail.yml",
}


def self_test_traces(texts: dict) -> None:
    t = texts["traces"]
    broken = {
        "traces": {
            "a brace removed": t.replace("}\n", "\n", 1),
            "a reference to nothing": t.replace("otelcol.exporter.otlp.tempo.input", "otelcol.exporter.otlp.tempoo.input", 1),
            "an unknown component": t.replace('otelcol.exporter.otlp "tempo"', 'otelcol.exporter.otlphttp "tempo"', 1),
            "the batch bypassed": t.replace("traces = [otelcol.processor.batch.traces.input]",
                                            "traces = [otelcol.exporter.otlp.tempo.input]", 1),
            "the exporter left out": t.replace("traces = [otelcol.exporter.otlp.tempo.input]",
                                               "traces = [otelcol.processor.batch.traces.input]", 1),
            "metrics wired too": t.replace("traces = [otelcol.processor.batch.traces.input]",
                                           "traces = [otelcol.processor.batch.traces.input]\n    metrics = [otelcol.processor.batch.traces.input]", 1),
            "the receiver on another port": t.replace('"0.0.0.0:4318"', '"0.0.0.0:4319"', 1),
            "another Tempo port": t.replace("svc.cluster.local:4317", "svc.cluster.local:4316", 1),
            "another Tempo host": t.replace('"tempo.monitoring.svc', '"tempo.tracing.svc', 1),
            "TLS towards a receiver without it": t.replace("insecure = true", "insecure = false", 1),
        },
        "tempo_values": {
            "Tempo's receiver on another port": texts["tempo_values"].replace('endpoint: "0.0.0.0:4317"', 'endpoint: "0.0.0.0:4316"', 1),
            "Tempo in another namespace": texts["tempo_values"].replace("--version 2.2.4 -n monitoring", "--version 2.2.4 -n tracing", 1),
            "Tempo under another name": texts["tempo_values"].replace("fullnameOverride: tempo", "fullnameOverride: traces", 1),
        },
        "gateway": {
            "the Service on another port": texts["gateway"].replace("      port: 4318\n      targetPort: otlp-http", "      port: 4319\n      targetPort: otlp-http", 1),
            "the container port changed": texts["gateway"].replace("containerPort: 4318", "containerPort: 4319", 1),
            "no egress to Tempo": texts["gateway"].replace("          port: 4317\n", "          port: 4316\n", 1),
            "another configuration run": texts["gateway"].replace("- /etc/alloy/traces.alloy", "- /etc/alloy/config.alloy", 1),
        },
        "gateway_kustomization": {
            "the gateway in another namespace": texts["gateway_kustomization"].replace("namespace: monitoring", "namespace: tracing", 1),
        },
        "base": {
            "the services sending elsewhere": texts["base"].replace("otlp.monitoring.svc.cluster.local:4318/v1/traces", "otlp.monitoring.svc.cluster.local:4317/v1/traces", 1),
            "the services sending to another path": texts["base"].replace(":4318/v1/traces", ":4318/v1/trace", 1),
        },
        "base_policies": {
            "the services' egress closed": texts["base_policies"].replace("app.kubernetes.io/name: otlp-gateway", "app.kubernetes.io/name: alloy", 1),
        },
        "grafana": {
            "Grafana's Tempo on another port": texts["grafana"].replace("tempo.monitoring.svc.cluster.local:3200", "tempo.monitoring.svc.cluster.local:3100", 1),
            "Grafana's Loki elsewhere": texts["grafana"].replace("loki.monitoring.svc.cluster.local:3100", "loki.logging.svc.cluster.local:3100", 1),
            "the derived field on another key": texts["grafana"].replace("matcherRegex: trace_id", "matcherRegex: traceid", 1),
            "the derived field to another uid": texts["grafana"].replace("datasourceUid: tempo", "datasourceUid: jaeger", 1),
            "the link variable expanded by Grafana": texts["grafana"].replace('"$${__value.raw}"', '"${__value.raw}"', 1),
            "trace to logs by another key": texts["grafana"].replace('| trace_id = "', '| traceid = "', 1),
        },
        "promtail": {
            "the trace id not kept by Promtail": texts["promtail"].replace("          trace_id:\n", "", 1),
        },
    }
    count = 0
    for name, copies in broken.items():
        for what, text in copies.items():
            if text == texts[name]:
                raise SystemExit(f"check-alloy self-test: could not make {what}: {TRACE_FILES[name]} changed; update the self-test")
            try:
                check_traces(**{**texts, name: text})
            except AlloyError:
                count += 1
                continue
            raise SystemExit(f"check-alloy self-test: {what} passed the check")
    print(f"check-alloy: trace path self-test passed ({count} broken copies refused)")


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
    texts = {name: path.read_text() for name, path in TRACE_FILES.items()}
    try:
        check_traces(**texts)
    except AlloyError as e:
        raise SystemExit(f"check-alloy: {TRACE_FILES['traces']}: {e}")
    print(f"check-alloy: {TRACE_FILES['traces']} is wired receiver -> batch -> exporter and agrees with the "
          "gateway, Tempo's values and the services' endpoint")
    if "--self-test" in sys.argv[1:]:
        self_test(config_text, promtail_text)
        self_test_traces(texts)


if __name__ == "__main__":
    main()
