#!/usr/bin/env python3
"""Fails when a dashboard or an alert queries a metric the services do not export.

A misspelt metric name in PromQL is not an error anywhere: the panel stays empty and the alert
never fires. This reads every PromQL expression of the Grafana dashboards (panel targets,
templating queries, annotations) and of the alert rules (alerts.yml and the PrometheusRule
rendered from it), extracts the metric names they select, and compares them with the names the
services really export.

    check-metric-names.py EXPORTED_NAMES_FILE [--emit-promql RULES_FILE]
    check-metric-names.py --self-test

EXPORTED_NAMES_FILE: one metric name a line; `# HELP`/`# TYPE` lines and sample lines
(`name{labels} value`) of a /metrics page are read too, so a saved /metrics page will do.
Histogram and summary series (`_bucket`, `_sum`, `_count`) count as their base name, on both
sides. `up` (Prometheus' own) is always allowed.

The dashboards are also checked for what provisioning needs (schemaVersion 39, a uid, unique
panel ids, every panel on the ${datasource} variable, a `service` variable).

--emit-promql writes the dashboards' expressions, Grafana variables replaced by plain values,
as recording rules, so that `promtool check rules RULES_FILE` proves they parse.

Needs PyYAML (~/.cache/libertum-tools/deploy/bin/python has it).
"""

import argparse
import json
import pathlib
import re
import sys
import tempfile

import yaml

HERE = pathlib.Path(__file__).resolve().parent
DASHBOARDS = HERE / "grafana" / "dashboards"
ALERTS = HERE / "prometheus" / "alerts.yml"
PROMETHEUSRULE = HERE.parent / "k8s" / "base" / "monitoring" / "prometheusrule.yaml"

ALWAYS_ALLOWED = {"up"}
SUFFIXES = ("_bucket", "_sum", "_count")

# PromQL functions and aggregation operators (Prometheus 2.x and 3.x): an identifier followed by
# `(` must be one of these, anything else is a typo PromQL would reject.
FUNCTIONS = set(
    """
    abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes
    clamp clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year
    days_in_month deg delta deriv double_exponential_smoothing exp floor
    histogram_avg histogram_count histogram_fraction histogram_quantile histogram_stddev
    histogram_stdvar histogram_sum holt_winters hour idelta increase info irate label_join
    label_replace last_over_time ln log10 log2 mad_over_time max_over_time min_over_time minute
    month pi predict_linear present_over_time quantile_over_time rad rate resets round scalar
    sgn sin sinh sort sort_by_label sort_by_label_desc sort_desc sqrt stddev_over_time
    stdvar_over_time sum_over_time tan tanh time timestamp vector year
    avg bottomk count count_values group limitk limit_ratio max min quantile stddev stdvar sum topk
    start end
    """.split()
)
AGGREGATORS = set(
    "avg bottomk count count_values group limitk limit_ratio max min quantile stddev stdvar sum topk".split()
)
# Words that are never metric names: clause keywords, binary operators, literals.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
            "and", "or", "unless", "atan2", "inf", "nan"}
# Clauses followed by a parenthesised list of label names (which are not metrics).
LABEL_LIST_CLAUSES = {"by", "without", "on", "ignoring", "group_left", "group_right"}

IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
NUMBER = re.compile(
    r"(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?:[a-zA-Z]+(?:\d+[a-zA-Z]+)*)?"
)
NAME_MATCHER = re.compile(r"""__name__\s*=\s*(["'`])([^"'`]+)\1""")
GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$[A-Za-z_]\w*|\[\[[^\]]*\]\]")


class PromQLError(ValueError):
    pass


def _skip_string(expr: str, i: int) -> int:
    """Index just past the string literal starting at expr[i]."""
    quote = expr[i]
    i += 1
    while i < len(expr):
        if expr[i] == "\\" and quote != "`":
            i += 2
            continue
        if expr[i] == quote:
            return i + 1
        i += 1
    raise PromQLError("unterminated string")


def _skip_until(expr: str, i: int, closing: str) -> tuple[int, str]:
    """Index just past `closing` (strings respected) from expr[i], and the text in between."""
    start = i
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
            continue
        if c == closing:
            return i + 1, expr[start:i]
        i += 1
    raise PromQLError(f"no closing {closing!r}")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects. Raises PromQLError on an unknown function."""
    # Grafana's variables stand for durations, numbers or regexes; none is a metric name.
    expr = GRAFANA_VARIABLE.sub("1", expr)
    names: set[str] = set()
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c.isspace():
            i += 1
        elif c == "#":
            end = expr.find("\n", i)
            i = n if end < 0 else end
        elif c in "\"'`":
            i = _skip_string(expr, i)
        elif c == "{":
            i, inside = _skip_until(expr, i + 1, "}")
            names.update(m.group(2) for m in NAME_MATCHER.finditer(inside))
        elif c == "[":
            i, _ = _skip_until(expr, i + 1, "]")
        elif c.isdigit() or (c == "." and i + 1 < n and expr[i + 1].isdigit()):
            i = NUMBER.match(expr, i).end()
        elif IDENT.match(c):
            word = IDENT.match(expr, i).group(0)
            i += len(word)
            j = i
            while j < n and expr[j].isspace():
                j += 1
            following = expr[j] if j < n else ""
            lower = word.lower()
            if lower in LABEL_LIST_CLAUSES:
                if following == "(":
                    i, _ = _skip_until(expr, j + 1, ")")
            elif lower in KEYWORDS:
                pass
            elif following == "(":
                if word not in FUNCTIONS:
                    raise PromQLError(f"unknown function {word}()")
            elif word in AGGREGATORS and re.match(r"(by|without)\b", expr[j:], re.I):
                pass  # `sum by (...) (...)`: the clause comes before the parenthesis
            else:
                names.add(word)
        else:
            i += 1
    return names


def template_query_promql(query: str) -> str | None:
    """The PromQL inside a Grafana Prometheus variable query, or None when it holds none."""
    query = query.strip()
    m = re.fullmatch(r"label_values\((.*)\)", query, re.S)
    if m:
        inner = m.group(1)
        # label_values(label) or label_values(selector, label): the selector is PromQL.
        depth, split = 0, -1
        for k, ch in enumerate(inner):
            depth += ch in "({["
            depth -= ch in ")}]"
            if ch == "," and depth == 0:
                split = k
        return inner[:split] if split >= 0 else None
    m = re.fullmatch(r"query_result\((.*)\)", query, re.S)
    if m:
        return m.group(1)
    m = re.fullmatch(r"label_names\((.*)\)", query, re.S)
    if m:
        return m.group(1) or None
    if re.fullmatch(r"metrics\(.*\)", query, re.S):
        return None  # a regex over names, not a selector
    return query or None


def normalise(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_exported(path: pathlib.Path) -> set[str]:
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                names.add(parts[2])
            continue
        m = IDENT.match(line)
        if m:
            names.add(m.group(0))
    return names


# ---------------------------------------------------------------- where expressions live


def dashboard_expressions(path: pathlib.Path, board: dict):
    """(where, expr) for every PromQL expression of a Grafana dashboard."""
    title = board.get("title", path.name)

    def panels(items):
        for panel in items or []:
            yield panel
            yield from panels(panel.get("panels"))

    for panel in panels(board.get("panels")):
        for target in panel.get("targets") or []:
            if target.get("expr"):
                where = f'{path}: panel {panel.get("id")} "{panel.get("title", "")}" target {target.get("refId", "?")}'
                yield where, target["expr"]
    for variable in (board.get("templating") or {}).get("list") or []:
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        promql = template_query_promql(query or "")
        if promql:
            yield f'{path}: variable "{variable.get("name")}"', promql
    for annotation in (board.get("annotations") or {}).get("list") or []:
        if annotation.get("expr"):
            yield f'{path}: annotation "{annotation.get("name")}"', annotation["expr"]


def lint_dashboard(path: pathlib.Path, board: dict) -> list[str]:
    """What would make a provisioned dashboard misbehave: its schema version, panel ids that
    collide, panels or targets not on the ${datasource} variable, the variables it relies on."""
    problems = []
    if board.get("schemaVersion") != 39:
        problems.append(f"{path}: schemaVersion is {board.get('schemaVersion')}, not 39")
    if not board.get("uid"):
        problems.append(f"{path}: no uid (links and provisioning need a stable one)")
    variables = {v.get("name"): v for v in (board.get("templating") or {}).get("list") or []}
    datasource = variables.get("datasource") or {}
    if datasource.get("type") != "datasource" or datasource.get("query") != "prometheus":
        problems.append(f"{path}: no `datasource` variable of type datasource/prometheus")
    if (variables.get("service") or {}).get("type") != "query":
        problems.append(f"{path}: no `service` query variable")
    ids = set()

    def panels(items):
        for panel in items or []:
            yield panel
            yield from panels(panel.get("panels"))

    for panel in panels(board.get("panels")):
        where = f'{path}: panel {panel.get("id")} "{panel.get("title", "")}"'
        if panel.get("id") in ids:
            problems.append(f"{where}: duplicate id")
        ids.add(panel.get("id"))
        if panel.get("type") == "row":
            continue
        for owner in [panel] + list(panel.get("targets") or []):
            if (owner.get("datasource") or {}).get("uid") != "${datasource}":
                problems.append(f"{where}: datasource is not ${{datasource}}")
                break
    return problems


def rule_expressions(path: pathlib.Path, groups: list):
    for group in groups or []:
        for rule in group.get("rules") or []:
            kind = "alert" if "alert" in rule else "record"
            where = f'{path}: group "{group.get("name")}" {kind} {rule.get(kind)}'
            yield where, str(rule.get("expr", ""))


def collect(dashboards: list[pathlib.Path], alerts: pathlib.Path, prometheusrule: pathlib.Path):
    """Every (where, expr) of the dashboards, the rule file and the PrometheusRule."""
    found = []
    for path in dashboards:
        board = json.loads(path.read_text(encoding="utf-8"))
        found.extend(dashboard_expressions(path, board))
    rules = yaml.safe_load(alerts.read_text(encoding="utf-8"))
    found.extend(rule_expressions(alerts, rules.get("groups")))
    rule = yaml.safe_load(prometheusrule.read_text(encoding="utf-8"))
    found.extend(rule_expressions(prometheusrule, rule["spec"].get("groups")))
    return found


def check(expressions, exported: set[str], allowed: set[str]) -> list[str]:
    """The problems: unknown metric names, unparseable expressions. Empty when all is well."""
    known = exported | {normalise(n) for n in exported} | allowed
    problems = []
    for where, expr in expressions:
        try:
            used = metric_names(expr)
        except PromQLError as e:
            problems.append(f"{where}: cannot read the expression: {e}")
            continue
        if not used:
            problems.append(f"{where}: selects no metric at all")
        for name in sorted(used):
            if name not in known and normalise(name) not in known:
                problems.append(f"{where}: metric {name} is not exported")
    return problems


# ---------------------------------------------------------------- promtool parse of dashboards


def emit_promql(expressions, path: pathlib.Path) -> None:
    """The dashboards' expressions as recording rules, for `promtool check rules`."""

    def plain(expr: str) -> str:
        expr = re.sub(r"\$\{?__(rate_interval|interval|range)\}?", "5m", expr)
        expr = re.sub(r"\$\{?__\w+\}?", "1", expr)
        return GRAFANA_VARIABLE.sub(".*", expr)

    rules = [
        {"record": f"dashboard:expression_{k}:check", "expr": plain(expr)}
        for k, (where, expr) in enumerate(expressions)
        if ".json" in where.split(":")[0]
    ]
    text = "# The dashboards' PromQL, for promtool check rules only (check-metric-names.py).\n"
    text += yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, sort_keys=False, width=1000)
    path.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------- self-test


def self_test() -> int:
    cases = {
        'sum by (service, route) (rate(libertum_http_requests_total{status=~"5.."}[5m]))': {"libertum_http_requests_total"},
        "histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket[$__rate_interval])))": {"a_seconds_bucket"},
        "sum(rate(x_total[5m])) by (job) / ignoring(code) group_left(instance) y": {"x_total", "y"},
        "a offset 1h and on (topic) b > bool 2 or c unless d": {"a", "b", "c", "d"},
        'label_replace(up, "dst", "$1", "instance", "(.*):.*")': {"up"},
        "absent(m{job=\"x\"}) or vector(0)": {"m"},
        '{__name__="by_name_total", job="a"}': {"by_name_total"},
        "rate(m[5m:1m] @ end()) * 1e3 + 0x1F - Inf": {"m"},
        "count_values(\"v\", build_info) # a comment naming not_a_metric\n": {"build_info"},
        "sum without (instance) (m:recorded:rate5m)": {"m:recorded:rate5m"},
        "max by (topic) (sum) - min(by_total)": {"sum", "by_total"},
    }
    failures = []
    for expr, wanted in cases.items():
        got = metric_names(expr)
        if got != wanted:
            failures.append(f"metric_names({expr!r}) = {sorted(got)}, wanted {sorted(wanted)}")
    try:
        metric_names("sum(rat(x[5m]))")
        failures.append("a misspelt function was not reported")
    except PromQLError:
        pass
    if template_query_promql("label_values(libertum_http_requests_total, service)") != "libertum_http_requests_total":
        failures.append("label_values(metric, label) not read")
    if template_query_promql("label_values(service)") is not None:
        failures.append("label_values(label) read as a selector")
    if normalise("h_seconds_bucket") != "h_seconds" or normalise("s_count") != "s":
        failures.append("histogram suffixes not stripped")

    # The whole check, end to end, on files: a wrong name must fail and be named; right ones pass.
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        exported = tmp / "names.txt"
        exported.write_text(
            "# TYPE libertum_http_request_duration_seconds histogram\n"
            'libertum_http_request_duration_seconds_bucket{le="0.5"} 1\n'
            "libertum_http_requests_total\n",
            encoding="utf-8",
        )
        board = {
            "title": "fake",
            "panels": [{"id": 1, "title": "p", "targets": [
                {"refId": "A", "expr": "rate(libertum_nonexistent_total[5m])"},
                {"refId": "B", "expr": "histogram_quantile(0.5, rate(libertum_http_request_duration_seconds_bucket[5m]))"},
            ]}],
            "templating": {"list": [{"type": "query", "name": "service",
                                     "query": {"query": "label_values(libertum_http_requests_total, service)"}}]},
        }
        (tmp / "fake.json").write_text(json.dumps(board), encoding="utf-8")
        rules = {"groups": [{"name": "g", "rules": [
            {"alert": "Good", "expr": 'up{job="libertum"} == 0'},
            {"alert": "Bad", "expr": "libertum_http_request_total > 0"},
        ]}]}
        (tmp / "alerts.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
        (tmp / "rule.yaml").write_text(yaml.safe_dump({"spec": rules}), encoding="utf-8")
        problems = check(
            collect([tmp / "fake.json"], tmp / "alerts.yml", tmp / "rule.yaml"),
            read_exported(exported),
            ALWAYS_ALLOWED,
        )
        expected = [
            "fake.json: panel 1 \"p\" target A: metric libertum_nonexistent_total is not exported",
            'alerts.yml: group "g" alert Bad: metric libertum_http_request_total is not exported',
            'rule.yaml: group "g" alert Bad: metric libertum_http_request_total is not exported',
        ]
        for want in expected:
            if not any(p.endswith(want) for p in problems):
                failures.append(f"not reported: {want}")
        if len(problems) != len(expected):
            failures.append(f"expected {len(expected)} problems, got {problems}")
    for failure in failures:
        print(f"self-test FAILED: {failure}", file=sys.stderr)
    if failures:
        return 1
    print(f"self-test passed: {len(cases)} expressions read right; a wrong metric name is reported")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exported", nargs="?", type=pathlib.Path, help="file of exported metric names")
    parser.add_argument("--self-test", action="store_true", help="prove the check can fail, and exit")
    parser.add_argument("--dashboards", type=pathlib.Path, nargs="+",
                        default=sorted(DASHBOARDS.glob("*.json")))
    parser.add_argument("--alerts", type=pathlib.Path, default=ALERTS)
    parser.add_argument("--prometheusrule", type=pathlib.Path, default=PROMETHEUSRULE)
    parser.add_argument("--allow", action="append", default=[], metavar="NAME",
                        help="a further metric name to accept (repeatable)")
    parser.add_argument("--emit-promql", type=pathlib.Path, metavar="RULES_FILE",
                        help="also write the dashboards' expressions for promtool check rules")
    args = parser.parse_args()
    if args.self_test:
        return self_test()
    if args.exported is None:
        parser.error("EXPORTED_NAMES_FILE is required (or --self-test)")
    exported = read_exported(args.exported)
    if not exported:
        print(f"{args.exported}: no metric names in it", file=sys.stderr)
        return 1
    expressions = collect(args.dashboards, args.alerts, args.prometheusrule)
    problems = check(expressions, exported, ALWAYS_ALLOWED | set(args.allow))
    for path in args.dashboards:
        problems += lint_dashboard(path, json.loads(path.read_text(encoding="utf-8")))
    if args.emit_promql:
        emit_promql(expressions, args.emit_promql)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {len(expressions)} expressions", file=sys.stderr)
        return 1
    used = set()
    for _, expr in expressions:
        used |= {normalise(n) for n in metric_names(expr)}
    unused = sorted({normalise(n) for n in exported} - used)
    print(f"{len(expressions)} expressions, {len(used)} metric names, all exported")
    if unused:
        print("exported but queried nowhere: " + ", ".join(unused))
    return 0


if __name__ == "__main__":
    sys.exit(main())
