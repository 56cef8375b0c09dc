#!/usr/bin/env python3
"""scripts/check-deploy's check of components/atlas, rendered through this directory:

    check-atlas.py OUT OVERLAY...    OUT/atlas.yaml is this test rendered, OUT/<overlay>.yaml each overlay
    check-atlas.py --self-test OUT   the check must fail on broken copies (made under OUT)

In the rendered test: the NetworkPolicy carries the sample endpoint's address; each service
mounts its own class libertum-backends-atlas-<service>, which fetches atlas-mongodb-uri-<service>
(as mongodb-uri) and redis-url with the service's own identity and syncs the Secret
libertum-backends-<service> that LIBERTUM_MONGODB_URI and LIBERTUM_REDIS_URL read; the backup's
class fetches atlas-mongodb-backup-uri into the file the tool reads, with the backup's identity;
no class fetches the backend VM's MongoDB secrets. And Terraform (deploy/terraform/atlas.tf and
modules/atlas) grants each of those identities "Key Vault Secrets User" on exactly the secrets
its class fetches. No overlay renders the component's placeholder address.

The self-test breaks a copy of the component (the services' wiring, the backup's patch, the
removal of the shared class) and of the module (the redis-url grant) and expects each to fail.
Needs kubectl on PATH.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import hcl2
import yaml

HERE = Path(__file__).resolve().parent
K8S = HERE.parent.parent
TERRAFORM = K8S.parent / "terraform"
SERVICES = ("assets", "tokens", "ledger")
BACKUP = "mongodb-backup"
# The backend VM's MongoDB secrets (deploy/terraform/keyvault.tf): none may be fetched with Atlas.
VM_MONGODB_SECRETS = {"mongodb-uri", "mongodb-backup-uri", "mongodb-admin-uri"}
PLACEHOLDER = "192.0.2.1/"


def sample_values(k8s: Path) -> dict[str, str]:
    """The test's terraform-values literals (values/kustomization.yaml)."""
    kustomization = yaml.safe_load((k8s / "tests" / "atlas" / "values" / "kustomization.yaml").read_text())
    literals = next(g for g in kustomization["configMapGenerator"] if g["name"] == "terraform-values")["literals"]
    return dict(literal.split("=", 1) for literal in literals)


def objects_of(spc: dict) -> list[dict]:
    return [yaml.safe_load(item) for item in (yaml.safe_load(spc["spec"]["parameters"]["objects"]) or {}).get("array", [])]


def pod_spec(doc: dict) -> dict:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def mounted_class(doc: dict) -> str | None:
    for volume in pod_spec(doc).get("volumes", []):
        if volume["name"] == "secrets-store":
            return volume.get("csi", {}).get("volumeAttributes", {}).get("secretProviderClass")
    return None


def env_of(doc: dict, container: str) -> dict[str, dict]:
    c = next(c for c in pod_spec(doc)["containers"] if c["name"] == container)
    return {e["name"]: e for e in c.get("env", [])}


def kubernetes_problems(docs: list[dict], values: dict[str, str]) -> tuple[list[str], dict[str, set[str]]]:
    """Problems of the rendered test, and what each identity's classes fetch (workload -> secrets)."""
    problems: list[str] = []
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    classes = {name: d for (kind, name), d in by.items() if kind == "SecretProviderClass"}
    fetched: dict[str, set[str]] = {}

    policy = by.get(("NetworkPolicy", "allow-atlas-egress"))
    want = [{"ipBlock": {"cidr": f"{values['atlas_private_endpoint_ip']}/32"}}]
    if policy is None or policy["spec"]["egress"][0]["to"] != want:
        problems.append(f"allow-atlas-egress does not admit exactly {want}")

    client_ids = {v: k.removeprefix("workload_identity_client_id_") for k, v in values.items()
                  if k.startswith("workload_identity_client_id_")}

    def check_class(workload: str, name: str, objects: list[dict], secret_objects: list[dict]) -> None:
        spc = classes.get(name)
        if spc is None:
            problems.append(f"{workload}: the SecretProviderClass {name} is not rendered")
            return
        params = spc["spec"]["parameters"]
        client_id = values[f"workload_identity_client_id_{workload}"]
        account = by[("ServiceAccount", workload)]["metadata"]["annotations"]["azure.workload.identity/client-id"]
        if params["clientID"] != client_id or account != client_id:
            problems.append(f"{workload}: class {name} has clientID {params['clientID']}, the ServiceAccount "
                            f"{account}; both must be the workload's own identity {client_id}")
        if (params["keyvaultName"], params["tenantId"]) != (values["key_vault_name"], values["tenant_id"]):
            problems.append(f"{workload}: class {name} reads vault {params['keyvaultName']} in tenant {params['tenantId']}")
        if sorted(map(str, objects_of(spc))) != sorted(map(str, objects)):
            problems.append(f"{workload}: class {name} fetches {objects_of(spc)}, not {objects}")
        if spc["spec"].get("secretObjects", []) != secret_objects:
            problems.append(f"{workload}: class {name} syncs {spc['spec'].get('secretObjects')}, not {secret_objects}")

    for service in SERVICES:
        deployment = by[("Deployment", service)]
        name, secret = f"libertum-backends-atlas-{service}", f"libertum-backends-{service}"
        if mounted_class(deployment) != name:
            problems.append(f"{service}: the Deployment mounts the class {mounted_class(deployment)}, not {name}")
        env = env_of(deployment, service)
        for variable, key in (("LIBERTUM_MONGODB_URI", "mongodb-uri"), ("LIBERTUM_REDIS_URL", "redis-url")):
            ref = env.get(variable, {}).get("valueFrom", {}).get("secretKeyRef")
            if ref != {"name": secret, "key": key}:
                problems.append(f"{service}: {variable} reads {ref}, not the key {key} of the Secret {secret}")
        check_class(service, name,
                    [{"objectName": f"atlas-mongodb-uri-{service}", "objectAlias": "mongodb-uri", "objectType": "secret"},
                     {"objectName": "redis-url", "objectType": "secret"}],
                    [{"secretName": secret, "type": "Opaque", "labels": {"app.kubernetes.io/part-of": "libertum"},
                      "data": [{"objectName": "mongodb-uri", "key": "mongodb-uri"},
                               {"objectName": "redis-url", "key": "redis-url"}]}])

    cronjob = by[("CronJob", BACKUP)]
    if mounted_class(cronjob) != BACKUP:
        problems.append(f"backup: the CronJob mounts the class {mounted_class(cronjob)}, not {BACKUP}")
    uri_file = env_of(cronjob, "backup").get("MONGODB_URI_FILE", {}).get("value")
    if uri_file != "/mnt/secrets-store/mongodb-backup-uri":
        problems.append(f"backup: MONGODB_URI_FILE is {uri_file}, not the file the class mounts")
    check_class(BACKUP, BACKUP,
                [{"objectName": "atlas-mongodb-backup-uri", "objectAlias": "mongodb-backup-uri", "objectType": "secret"}], [])

    for name, spc in sorted(classes.items()):
        names = {o["objectName"] for o in objects_of(spc)}
        if names & VM_MONGODB_SECRETS:
            problems.append(f"the class {name} still fetches the backend VM's {sorted(names & VM_MONGODB_SECRETS)}")
        workload = client_ids.get(spc["spec"]["parameters"]["clientID"], spc["spec"]["parameters"]["clientID"])
        fetched.setdefault(workload, set()).update(names)
    for (kind, name), d in sorted(by.items()):
        if kind in ("Deployment", "StatefulSet", "CronJob", "Job") and mounted_class(d) not in (None, *classes):
            problems.append(f"{kind} {name} mounts the class {mounted_class(d)}, which is not rendered")
    return problems, fetched


def terraform_grants(terraform: Path) -> tuple[list[str], dict[str, set[str]]]:
    """What deploy/terraform/atlas.tf and modules/atlas grant: workload -> Key Vault secrets."""
    problems: list[str] = []
    call = next(m["atlas"] for m in hcl2.load(open(terraform / "atlas.tf"))["module"] if "atlas" in m)
    identities = call["service_principal_ids"][0]
    if "azurerm_user_assigned_identity.workload[service].principal_id" not in identities \
            or not all(f"'{s}'" in identities or f'"{s}"' in identities for s in SERVICES):
        problems.append(f"atlas.tf: service_principal_ids is not each service's own workload identity: {identities}")
    if call["backup_principal_id"][0] != '${azurerm_user_assigned_identity.workload["mongodb-backup"].principal_id}':
        problems.append(f"atlas.tf: backup_principal_id is not the backup's workload identity: {call['backup_principal_id'][0]}")
    resources = hcl2.load(open(terraform / "modules" / "atlas" / "main.tf"))["resource"]
    grants: dict[str, set[str]] = {}
    for block in resources:
        for name, r in block.get("azurerm_role_assignment", {}).items():
            if r["role_definition_name"][0] != "Key Vault Secrets User":
                problems.append(f"modules/atlas: azurerm_role_assignment.{name} grants {r['role_definition_name'][0]}")
                continue
            principal, scope = r["principal_id"][0], r["scope"][0]
            if principal == "${each.value}" and r.get("for_each") == ["${var.service_principal_ids}"]:
                workloads = SERVICES
            elif principal == "${var.backup_principal_id}" and "for_each" not in r:
                workloads = (BACKUP,)
            else:
                problems.append(f"modules/atlas: azurerm_role_assignment.{name} grants {principal}, not a workload's identity")
                continue
            atlas = re.fullmatch(r'\$\{azurerm_key_vault_secret\.atlas\["([^"]+)"\]\.resource_versionless_id\}', scope)
            variable = re.fullmatch(r"\$\{var\.(\w+)\}", scope)
            root = variable and re.fullmatch(r'\$\{azurerm_key_vault_secret\.backend\["([^"]+)"\]\.resource_versionless_id\}',
                                             call.get(variable[1], [""])[0])
            if not (atlas or root):
                problems.append(f"modules/atlas: azurerm_role_assignment.{name} has a scope that is no single secret: {scope}")
                continue
            for workload in workloads:
                grants.setdefault(workload, set()).add(atlas[1].replace("${each.key}", workload) if atlas else root[1])
    return problems, grants


def check(rendered: Path, k8s: Path, terraform: Path) -> list[str]:
    docs = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    problems, fetched = kubernetes_problems(docs, sample_values(k8s))
    tf_problems, grants = terraform_grants(terraform)
    problems += tf_problems
    for workload in sorted(set(fetched) | set(grants)):
        if fetched.get(workload, set()) != grants.get(workload, set()):
            problems.append(f"{workload}: its classes fetch {sorted(fetched.get(workload, set()))}, Terraform grants "
                            f"its identity {sorted(grants.get(workload, set()))}")
    return problems


def render(k8s: Path, path: Path) -> Path:
    path.write_text(subprocess.run(["kubectl", "kustomize", str(k8s / "tests" / "atlas")],
                                   check=True, capture_output=True, text=True).stdout)
    return path


def self_test(out: Path) -> None:
    base = out / "atlas-self-test"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    k8s, terraform = base / "k8s", base / "terraform"
    shutil.copytree(K8S, k8s)
    (terraform / "modules").mkdir(parents=True)
    shutil.copy(TERRAFORM / "atlas.tf", terraform)
    shutil.copytree(TERRAFORM / "modules" / "atlas", terraform / "modules" / "atlas")
    assert not check(render(k8s, base / "atlas.yaml"), k8s, terraform), "the unchanged copy fails"

    component = k8s / "components" / "atlas" / "kustomization.yaml"
    original = component.read_text()

    def without(keep_patch, keep_replacement) -> None:
        c = yaml.safe_load(original)
        c["patches"] = [p for p in c["patches"] if keep_patch(p)]
        c["replacements"] = [r for r in c["replacements"] if keep_replacement(r)]
        component.write_text(yaml.safe_dump(c, sort_keys=False))

    broken = {
        "the services' wiring": (lambda p: True, lambda r: r["source"]["kind"] != "SecretProviderClass",
                                 ["assets: the Deployment mounts", "ledger: LIBERTUM_REDIS_URL reads"]),
        "the backup's patch": (lambda p: p.get("target", {}).get("name") != BACKUP, lambda r: True,
                               ["mongodb-backup: class mongodb-backup fetches",
                                "the class mongodb-backup still fetches the backend VM's"]),
        "the shared class's removal": (lambda p: "name: libertum-backends\n" not in p.get("patch", ""), lambda r: True,
                                       ["the class libertum-backends still fetches the backend VM's"]),
    }
    for what, (keep_patch, keep_replacement, expected) in broken.items():
        without(keep_patch, keep_replacement)
        problems = check(render(k8s, base / "broken.yaml"), k8s, terraform)
        for text in expected:
            assert any(text in p for p in problems), f"without {what}, no problem says {text!r}: {problems}"
    component.write_text(original)

    module = terraform / "modules" / "atlas" / "main.tf"
    text = module.read_text()
    cut = re.sub(r'resource "azurerm_role_assignment" "service_redis" \{.*?\n\}\n', "", text, flags=re.S)
    assert cut != text, "the self-test found no redis-url grant to remove"
    module.write_text(cut)
    problems = check(base / "atlas.yaml", k8s, terraform)
    assert any("assets: its classes fetch" in p and "redis-url" in p for p in problems), \
        f"without the redis-url grant: {problems}"
    shutil.rmtree(base)
    print("check-atlas: self-test passed (4 broken copies failed)")


def main() -> None:
    if sys.argv[1:2] == ["--self-test"]:
        self_test(Path(sys.argv[2]))
        return
    out, overlays = Path(sys.argv[1]), sys.argv[2:]
    problems = check(out / "atlas.yaml", K8S, TERRAFORM)
    for overlay in overlays:
        if PLACEHOLDER in (out / f"{overlay}.yaml").read_text():
            problems.append(f"the {overlay} overlay renders the Atlas placeholder {PLACEHOLDER}")
    for problem in problems:
        print(f"check-atlas: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print("check-atlas: the services and the backup read their Atlas secrets, as Terraform grants them")


if __name__ == "__main__":
    main()
