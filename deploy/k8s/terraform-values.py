#!/usr/bin/env python3
"""Writes one environment's Terraform-made values into its Kubernetes overlay.

    terraform -chdir=deploy/terraform output -json > /tmp/dev-outputs.json
    deploy/k8s/terraform-values.py dev /tmp/dev-outputs.json

Writes deploy/k8s/overlays/ENV/env/terraform/terraform-values.env (KEY=value lines, the one
place the overlay holds Terraform's values; kustomize `replacements` in deploy/k8s/components
copy them into the objects) and sets the registry of the `newName:` lines of
deploy/k8s/overlays/ENV/kustomization.yaml (the file CD edits, which replacements cannot reach
before its `images:` runs) to acr_login_server, touching nothing else in that file.

OUTPUTS is `terraform output -json`: {"name": {"value": ..., "type": ..., "sensitive": ...}}.
Outputs that an environment lacks (kafka_brokers and backend_subnet_cidr without the backend
VM, atlas_private_endpoint_ip without Atlas) are left out; an overlay that needs one then fails
to render, naming it. The backend VM's two are required, though, for an overlay that uses
components/backend-vm (dev, prod): Terraform applied with backend_vm_enabled = false cannot
serve it. Exit 1, writing nothing, on a missing required output or a value of the wrong shape. --root points at another copy of deploy/k8s (scripts/check-deploy tests this on a
copy).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
from pathlib import Path

GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
HOST = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")
VAULT = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,22}[A-Za-z0-9]$")
SERVICE_ACCOUNT = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
NEW_NAME = re.compile(r"^(?P<lead>\s*-?\s*newName:\s*)(?P<registry>[^/\s#]+)/(?P<repo>[^\s#]+)(?P<tail>\s*(#.*)?)$")


def fail(message: str) -> None:
    print(f"terraform-values: {message}", file=sys.stderr)
    sys.exit(1)


def ip(value: str) -> str:
    ipaddress.IPv4Address(value)
    return value


def cidr(value: str) -> str:
    ipaddress.IPv4Network(value, strict=True)
    return value


def brokers(value: str) -> str:
    for broker in value.split(","):
        host, _, port = broker.rpartition(":")
        if not host or not port.isdigit() or not (HOST.match(host) or is_ip(host)):
            raise ValueError(broker)
    return value


def is_ip(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
        return True
    except ValueError:
        return False


def https_url(value: str) -> str:
    if not re.match(r"^https://[a-z0-9.-]+(/[A-Za-z0-9._/-]*)?$", value):
        raise ValueError(value)
    return value


def matching(pattern: re.Pattern):
    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(value)
        return value
    return check


# output name -> (required, check)
SCALARS = {
    "acr_login_server": (True, matching(HOST)),
    "key_vault_name": (True, matching(VAULT)),
    "tenant_id": (True, matching(GUID)),
    "key_vault_reader_client_id": (True, matching(GUID)),
    "ingress_certificate_uri": (False, https_url),
    "backup_storage_account_url": (True, https_url),
    "blob_private_endpoint_ip": (True, ip),
    "kafka_brokers": (False, brokers),
    "backend_subnet_cidr": (False, cidr),
    "atlas_private_endpoint_ip": (False, ip),
}
SERVICE_ACCOUNTS = ("assets", "tokens", "ledger", "mongodb-backup")
# What an overlay on the backend VM (components/backend-vm) needs besides the required ones.
BACKEND_VM_OUTPUTS = ("kafka_brokers", "backend_subnet_cidr")


def uses_backend_vm(overlay: Path) -> bool:
    """Whether the overlay's env/kustomization.yaml lists the component backend-vm (a list item
    `- .../components/backend-vm`; read as text, so that the script needs no YAML library)."""
    path = overlay / "env" / "kustomization.yaml"
    try:
        text = path.read_text()
    except OSError as e:
        fail(f"{path}: {e}")
    return re.search(r"^\s*-\s*\S*components/backend-vm/?\s*(#.*)?$", text, re.MULTILINE) is not None


def values_from(outputs: dict) -> dict[str, str]:
    def value(name):
        entry = outputs.get(name)
        if entry is None:
            return None
        if not isinstance(entry, dict) or "value" not in entry:
            fail(f"{name}: not an output of `terraform output -json` (no \"value\")")
        if entry.get("sensitive"):
            fail(f"{name}: a sensitive output; nothing secret belongs in an overlay")
        return entry["value"]

    values: dict[str, str] = {}
    for name, (required, check) in SCALARS.items():
        v = value(name)
        if v is None:
            if required:
                fail(f"the output {name} is missing or null")
            continue
        if not isinstance(v, str):
            fail(f"{name}: expected a string, got {v!r}")
        try:
            values[name] = check(v)
        except ValueError:
            fail(f"{name}: {v!r} is not what the overlay expects")
    if "ingress_certificate_uri" not in values:
        values["ingress_certificate_uri"] = (
            f"https://{values['key_vault_name']}.vault.azure.net/certificates/libertum-tls")
    ids = value("workload_identity_client_ids")
    if not isinstance(ids, dict):
        fail("the output workload_identity_client_ids is missing or not a map")
    for account in SERVICE_ACCOUNTS:
        if account not in ids:
            fail(f"workload_identity_client_ids has no {account}")
    for account, client_id in sorted(ids.items()):
        if not SERVICE_ACCOUNT.match(account) or not isinstance(client_id, str) or not GUID.match(client_id):
            fail(f"workload_identity_client_ids[{account!r}] = {client_id!r} is not a client ID")
        values[f"workload_identity_client_id_{account}"] = client_id
    return values


def set_registry(text: str, registry: str, path: Path) -> str:
    lines = text.splitlines(keepends=True)
    changed = 0
    for i, line in enumerate(lines):
        m = NEW_NAME.match(line.rstrip("\n"))
        if m:
            lines[i] = f"{m['lead']}{registry}/{m['repo']}{m['tail']}\n"
            changed += 1
    if not changed:
        fail(f"{path} has no `newName: <registry>/<repository>` line to point at {registry}")
    return "".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("environment", help="an overlay under deploy/k8s/overlays")
    parser.add_argument("outputs", help="the JSON of `terraform output -json`")
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent),
                        help="the deploy/k8s directory to write into (default: this script's)")
    args = parser.parse_args()
    overlay = Path(args.root) / "overlays" / args.environment
    top = overlay / "kustomization.yaml"
    target = overlay / "env" / "terraform" / "terraform-values.env"
    if not top.is_file() or not target.parent.is_dir():
        fail(f"{overlay} is not an overlay with env/terraform/ (see deploy/k8s/README.md)")
    try:
        outputs = json.loads(Path(args.outputs).read_text())
    except (OSError, ValueError) as e:
        fail(f"{args.outputs}: {e}")
    if not isinstance(outputs, dict):
        fail(f"{args.outputs}: not the JSON object of `terraform output -json`")
    values = values_from(outputs)
    if uses_backend_vm(overlay):
        missing = [name for name in BACKEND_VM_OUTPUTS if name not in values]
        if missing:
            fail(f"{args.environment} runs on the backend VM (components/backend-vm), but the outputs lack "
                 f"{', '.join(missing)}: Terraform was applied with backend_vm_enabled = false")
    kustomization = set_registry(top.read_text(), values["acr_login_server"], top)
    header = (
        f"# The {args.environment} environment's values from Terraform (terraform output -json), written by\n"
        "# deploy/k8s/terraform-values.py: run it again after an apply rather than editing this file.\n"
        "# deploy/k8s/components/azure-values (and backend-vm, atlas) copy them into the objects.\n"
    )
    target.write_text(header + "".join(f"{k}={v}\n" for k, v in sorted(values.items())))
    top.write_text(kustomization)
    print(f"terraform-values: wrote {target} ({len(values)} values) and the registry of {top}")


if __name__ == "__main__":
    main()
