#!/usr/bin/env python3
"""Turns a CustomResourceDefinition into the JSON schema that validate-crds.py checks manifests
against (the vendored *.json files next to this script were made with it).

The CRD's own openAPIV3Schema is used as it is, made strict the way `kubectl apply` with
server-side field validation is: an object that lists its properties accepts no others, unless
the CRD says x-kubernetes-preserve-unknown-fields. OpenAPI's `nullable` becomes a null type, and
a (?i) flag inside a pattern moves to its start (Python's re refuses it elsewhere).
CEL rules (x-kubernetes-validations) are not evaluated.

    from-crd.py CRD.yaml VERSION SOURCE [--keep POINTER=name,name ...] > kind-group-version.json

SOURCE is recorded in the schema ($comment), e.g. "prometheus-operator v0.93.0
example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml". --keep prunes the
properties of the object at a JSON pointer (into the openAPIV3Schema) to the names given: a
huge CRD (ApplicationSet, Application) can be cut to what this repository uses, and any other
field is then reported as unknown, which is the point. The pointer "/" is the document itself
(e.g. --keep /=apiVersion,kind,metadata,spec drops status).
"""

import argparse
import json
import sys

import yaml


def strict(node):
    """Recursively: closes objects that list their properties; maps nullable to a null type."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict(value) for key, value in node.items()}
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    # Go's regexp takes (?i) anywhere; Python's re (which jsonschema uses) only at the start.
    pattern = out.get("pattern")
    if isinstance(pattern, str) and "(?i)" in pattern[1:]:
        out["pattern"] = "(?i)" + pattern.replace("(?i)", "")
    # OpenAPI 3.0's boolean exclusiveMinimum/Maximum is draft-4 style; JSON Schema 7 wants numbers.
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), bool):
            if out.pop(bound) and limit in out:
                out[bound] = out.pop(limit)
    return out


def prune(schema, pointer, keep):
    node = schema
    # "/" is the openAPIV3Schema itself (the document's top-level fields).
    for part in filter(None, pointer.strip("/").split("/")):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    unknown = set(keep) - set(node["properties"])
    if unknown:
        sys.exit(f"--keep {pointer}: no such properties: {sorted(unknown)}")
    node["properties"] = {k: v for k, v in node["properties"].items() if k in keep}
    if "required" in node:
        node["required"] = [r for r in node["required"] if r in keep]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("crd")
    parser.add_argument("version")
    parser.add_argument("source")
    parser.add_argument("--keep", action="append", default=[], metavar="POINTER=names")
    args = parser.parse_args()

    with open(args.crd) as f:
        crd = next(d for d in yaml.safe_load_all(f) if d and d.get("kind") == "CustomResourceDefinition")
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    version = next(v for v in crd["spec"]["versions"] if v["name"] == args.version)
    schema = version["schema"]["openAPIV3Schema"]
    for item in args.keep:
        pointer, names = item.split("=", 1)
        prune(schema, pointer, names.split(","))
    schema = strict(schema)
    schema["properties"]["apiVersion"] = {"const": f"{group}/{args.version}"}
    schema["properties"]["kind"] = {"const": kind}
    schema.setdefault("required", [])
    for field in ("apiVersion", "kind", "metadata"):
        if field not in schema["required"]:
            schema["required"].append(field)
    pruned = "; pruned: " + ", ".join(args.keep) if args.keep else ""
    out = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$comment": f"{kind} {group}/{args.version} from the CRD in {args.source}, made strict by deploy/k8s/schemas/from-crd.py{pruned}",
        **schema,
    }
    json.dump(out, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
