#!/usr/bin/env python3
"""Validates the custom resources in rendered manifests against the vendored schemas in
deploy/k8s/schemas/ (SecretProviderClass, ServiceMonitor, PrometheusRule, Argo CD's AppProject
and Application, the application routing add-on's NginxIngressController), and hands the built-in kinds on to kubernetes-validate. A SecretProviderClass
of the Azure provider is also checked for the parameters the schema leaves free.

kubernetes-validate knows only built-in kinds and merely warns (exit 0) about any other, so the
stream is split: custom resources are checked here; everything else is written to --builtin-out
for kubernetes-validate. A kind that is neither built in nor vendored fails here, instead of
slipping through as a warning. So does any Secret: secret values come from Key Vault, never
from the manifests.

    validate-crds.py [--builtin-out FILE] [-k 1.30.0] MANIFEST.yaml...

Exit status: 0 when every custom resource is valid and known, 1 otherwise.
"""

import argparse
import json
import pathlib
import sys

import jsonschema
import yaml

SCHEMAS = pathlib.Path(__file__).resolve().parent / "schemas"

# The Azure provider's parameters are a free map[string]string in the CRD, so a misspelt key
# would pass the schema and fail only on the cluster: these are checked by name.
AZURE_REQUIRED = ("keyvaultName", "tenantId", "clientID", "objects")


def azure_secret_provider_problems(doc):
    """What the schema cannot see in a SecretProviderClass of the Azure provider."""
    spec = doc.get("spec", {})
    if spec.get("provider") != "azure":
        return []
    params = spec.get("parameters", {})
    problems = [f"spec/parameters: {key} is missing" for key in AZURE_REQUIRED if not params.get(key)]
    if params.get("usePodIdentity", "false") != "false":
        problems.append("spec/parameters/usePodIdentity: must be \"false\" (workload identity)")
    try:
        objects = yaml.safe_load(params.get("objects", "")) or {}
        entries = [yaml.safe_load(item) for item in objects.get("array", [])]
        # A secretObjects entry names the mounted file: the objectAlias where one is set.
        names = {entry.get("objectAlias") or entry["objectName"] for entry in entries}
    except (yaml.YAMLError, AttributeError, KeyError, TypeError) as e:
        return problems + [f"spec/parameters/objects: not an array of objectName entries ({e})"]
    for synced in spec.get("secretObjects", []):
        for entry in synced.get("data", []):
            if entry.get("objectName") not in names:
                problems.append(f"spec/secretObjects: {entry.get('objectName')} is not among the objects fetched")
    return problems


def load_schemas():
    """(apiVersion, kind) -> validator, from the const values each vendored schema pins."""
    validators = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        schema = json.loads(path.read_text())
        props = schema["properties"]
        key = (props["apiVersion"]["const"], props["kind"]["const"])
        jsonschema.Draft7Validator.check_schema(schema)
        validators[key] = jsonschema.Draft7Validator(schema)
    return validators


def builtin_checker(version):
    """A function telling whether kubernetes-validate has a schema for a document's kind."""
    try:
        import kubernetes_validate.utils as kv
    except ImportError:
        # Without kubernetes-validate at hand: API groups of built-in kinds have no dot or end
        # in .k8s.io (CRDs from *.k8s.io projects, like the Gateway API, are misjudged).
        def by_group(doc):
            group = str(doc.get("apiVersion", "")).rpartition("/")[0]
            return "." not in group or group.endswith(".k8s.io")

        return by_group

    def by_schema(doc):
        try:
            kv.validate(doc, version, strict=False)
        except kv.SchemaNotFoundError:
            return False
        except Exception:  # invalid, but known: kubernetes-validate reports the details
            return True
        return True

    return by_schema


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifests", nargs="+")
    parser.add_argument("--builtin-out", help="write the built-in kinds here, for kubernetes-validate")
    parser.add_argument("-k", "--kubernetes-version", default="1.30.0")
    args = parser.parse_args()

    validators = load_schemas()
    is_builtin = builtin_checker(args.kubernetes_version)
    builtin, failures, checked = [], 0, 0
    for manifest in args.manifests:
        with open(manifest) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            key = (doc.get("apiVersion"), doc.get("kind"))
            name = f"{manifest}: {key[1]} {doc.get('metadata', {}).get('name')}"
            validator = validators.get(key)
            if key == ("v1", "Secret"):
                print(f"ERROR {name}: a Secret in the manifests (secret values belong in Key Vault)")
                failures += 1
                continue
            if validator is None:
                if is_builtin(doc):
                    builtin.append(doc)
                else:
                    print(f"ERROR {name}: no schema for {key[0]} {key[1]} (vendor one in {SCHEMAS})")
                    failures += 1
                continue
            checked += 1
            errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
            problems = [
                f"{'/'.join(str(p) for p in e.absolute_path) or '(document)'}: {e.message}" for e in errors
            ]
            if key[1] == "SecretProviderClass":
                problems += azure_secret_provider_problems(doc)
            for problem in problems:
                print(f"ERROR {name}: {problem}")
            failures += bool(problems)

    if args.builtin_out:
        with open(args.builtin_out, "w") as f:
            yaml.safe_dump_all(builtin, f, sort_keys=False)
    print(f"custom resources: {checked} checked, {failures} failed; built-in kinds passed on: {len(builtin)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
