#!/usr/bin/env python3
"""Validates an Open Cap Format export (the JSON bundle of GET /v1/tokens/{id}/ocf) against the
vendored OCF 1.2.0 schemas with the `jsonschema` package: the manifest and every file the
manifest names, each against the schema of its `file_type`, every $ref resolved to the local
copy by its $id; and each file's md5 in the manifest against the file's text as exported.

usage: validate.py BUNDLE.json
Prints what was checked and exits 0, or names the first error and exits 1.
"""
import glob
import hashlib
import json
import os
import sys

from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

here = os.path.dirname(os.path.abspath(__file__))
schemas = {}
for path in glob.glob(os.path.join(here, "schema", "**", "*.schema.json"), recursive=True):
    with open(path) as f:
        schema = json.load(f)
    schemas[schema["$id"]] = schema
registry = Registry().with_resources(
    (id_, Resource.from_contents(schema, default_specification=DRAFT7)) for id_, schema in schemas.items()
)
by_type = {}
for schema in schemas.values():
    const = schema.get("properties", {}).get("file_type", {}).get("const")
    if const:
        by_type[const] = schema


def check(document, what):
    schema = by_type.get(document.get("file_type"))
    if schema is None:
        sys.exit(f"{what}: unknown file_type {document.get('file_type')!r}")
    validator = Draft7Validator(schema, registry=registry, format_checker=Draft7Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        sys.exit(f"{what} breaks {schema['$id']} at /{'/'.join(map(str, e.path))}: {e.message[:300]}")


bundle = json.load(open(sys.argv[1]))
manifest = bundle["manifest"]
check(manifest, "the manifest")
counted = []
named = 0
for key, value in manifest.items():
    if not key.endswith("_files"):
        continue
    for ref in value:
        named += 1
        text = bundle["files"][ref["filepath"]]
        if hashlib.md5(text.encode()).hexdigest() != ref["md5"]:
            sys.exit(f"{ref['filepath']}: the manifest's md5 is not the file's")
        document = json.loads(text)
        check(document, ref["filepath"])
        counted.append(f"{ref['filepath']} ({len(document['items'])} items)")
if named != len(bundle["files"]):
    sys.exit("the bundle holds files the manifest does not name")
print("valid OCF 1.2.0: the manifest, " + ", ".join(counted))
