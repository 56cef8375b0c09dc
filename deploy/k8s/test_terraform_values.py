#!/usr/bin/env python3
"""scripts/check-deploy's test of terraform-values.py, on a copy of deploy/k8s in OUT/k8s:

    test_terraform_values.py OUT

Bad outputs are refused, and so are the outputs of an environment without the backend VM for
dev, which runs on it; from sample outputs, the rendered dev and preview overlays carry every
value where the components put it (identities, vault, tenant, certificate, storage, blob
endpoint, registry; for dev also the backend VM's address and subnet); a value missing from
terraform-values.env fails the render, naming it. Needs kubectl on PATH.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
IDS = {
    "assets": "aaaaaaaa-1111-2222-3333-444444444444",
    "tokens": "bbbbbbbb-1111-2222-3333-444444444444",
    "ledger": "cccccccc-1111-2222-3333-444444444444",
    "mongodb-backup": "dddddddd-1111-2222-3333-444444444444",
}
VALUES = {
    "acr_login_server": "sampleacr.azurecr.io",
    "key_vault_name": "sample-kv",
    "tenant_id": "eeeeeeee-1111-2222-3333-444444444444",
    "key_vault_reader_client_id": "ffffffff-1111-2222-3333-444444444444",
    "workload_identity_client_ids": IDS,
    "kafka_brokers": "10.99.3.7:9092",
    "backend_subnet_cidr": "10.99.3.0/24",
    "blob_private_endpoint_ip": "10.99.2.9",
    "backup_storage_account_url": "https://samplest.blob.core.windows.net",
    "ingress_certificate_uri": "https://sample-kv.vault.azure.net/certificates/libertum-tls",
}


def run(out: Path, env: str, outputs: dict) -> subprocess.CompletedProcess:
    path = out / f"outputs-{env}.json"
    path.write_text(json.dumps({k: {"value": v, "type": "string", "sensitive": False} for k, v in outputs.items()}))
    return subprocess.run([sys.executable, str(HERE / "terraform-values.py"), "--root", str(out / "k8s"), env, str(path)],
                          capture_output=True, text=True)


def render(out: Path, env: str) -> dict:
    text = subprocess.run(["kubectl", "kustomize", str(out / "k8s" / "overlays" / env)],
                          check=True, capture_output=True, text=True).stdout
    objects = {}
    for d in yaml.safe_load_all(text):
        if d:
            name = d["metadata"]["name"]
            if d["kind"] == "ConfigMap" and name.startswith("libertum-config-"):
                name = "libertum-config"
            objects[(d["kind"], name)] = d
    return objects


def main() -> None:
    out = Path(sys.argv[1])
    without_vm = {k: v for k, v in VALUES.items() if k not in ("kafka_brokers", "backend_subnet_cidr")}
    # Terraform with backend_vm_enabled = false: the VM's outputs are null (or absent).
    null_vm = {**without_vm, "kafka_brokers": None, "backend_subnet_cidr": None}
    bad_outputs = {
        "dev without the backend VM's outputs": without_vm,
        "dev with the backend VM's outputs null": null_vm,
        "a tenant that is no GUID": {**VALUES, "tenant_id": "not-a-guid"},
        "no key_vault_name": {k: v for k, v in VALUES.items() if k != "key_vault_name"},
        "an identity missing": {**VALUES, "workload_identity_client_ids": {"assets": IDS["assets"]}},
        "a subnet that is no CIDR": {**VALUES, "backend_subnet_cidr": "10.99.3.1/24"},
    }
    for what, outputs in bad_outputs.items():
        done = run(out, "dev", outputs)
        assert done.returncode == 1 and "terraform-values:" in done.stderr, f"{what} was accepted: {done.stdout}{done.stderr}"
        if "backend VM" in what:
            assert "backend_vm_enabled" in done.stderr, done.stderr

    done = run(out, "preview", null_vm)
    assert done.returncode == 0, f"preview refused the null outputs of an environment without the VM: {done.stderr}"
    for env, outputs in (("dev", VALUES), ("preview", without_vm)):
        done = run(out, env, outputs)
        assert done.returncode == 0, done.stderr
        r = render(out, env)
        for account, client_id in IDS.items():
            got = r[("ServiceAccount", account)]["metadata"]["annotations"]["azure.workload.identity/client-id"]
            assert got == client_id, f"{env}: ServiceAccount {account} has {got}"
        config = r[("ConfigMap", "libertum-config")]["data"]
        tenant = VALUES["tenant_id"]
        assert config["LIBERTUM_AUTH_JWKS_URL"] == f"https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys", config
        assert config["LIBERTUM_AUTH_ISSUER"] == f"https://login.microsoftonline.com/{tenant}/v2.0", config
        uri = r[("Ingress", "libertum")]["metadata"]["annotations"]["kubernetes.azure.com/tls-cert-keyvault-uri"]
        assert uri == VALUES["ingress_certificate_uri"], uri
        storage = r[("ConfigMap", "mongodb-backup")]["data"]["AZURE_STORAGE_ACCOUNT_URL"]
        assert storage == VALUES["backup_storage_account_url"], storage
        backup = r[("NetworkPolicy", "mongodb-backup")]["spec"]["egress"]
        assert backup[2]["to"] == [{"ipBlock": {"cidr": "10.99.2.9/32"}}], backup
        images = set()
        for d in r.values():
            if d["kind"] in ("Deployment", "CronJob"):
                pod = d["spec"]["template"] if d["kind"] == "Deployment" else d["spec"]["jobTemplate"]["spec"]["template"]
                images |= {c["image"] for c in pod["spec"]["containers"]}
        assert images and all(i.startswith("sampleacr.azurecr.io/") for i in images), images
        assert not any(d["kind"] == "ConfigMap" and d["metadata"]["name"] == "terraform-values" for d in r.values()), \
            f"{env}: terraform-values is rendered (it must stay local-config)"
        if env == "dev":
            assert config["LIBERTUM_KAFKA_BROKERS"] == VALUES["kafka_brokers"], config
            services = r[("NetworkPolicy", "allow-backends-egress")]["spec"]["egress"]
            assert services[0]["to"] == [{"ipBlock": {"cidr": "10.99.3.0/24"}}], services
            assert backup[1]["to"] == [{"ipBlock": {"cidr": "10.99.3.0/24"}}], backup
            classes = [d for d in r.values() if d["kind"] == "SecretProviderClass"]
            assert len(classes) == 3, classes
            for c in classes:
                p = c["spec"]["parameters"]
                assert (p["keyvaultName"], p["tenantId"]) == ("sample-kv", tenant), p
            reader = r[("SecretProviderClass", "libertum-backends")]["spec"]["parameters"]["clientID"]
            assert reader == VALUES["key_vault_reader_client_id"], reader
            for name in ("mongodb-backup", "mongodb-restore"):
                got = r[("SecretProviderClass", name)]["spec"]["parameters"]["clientID"]
                assert got == IDS["mongodb-backup"], f"{name}: {got}"
        else:
            assert config["LIBERTUM_KAFKA_BROKERS"].startswith("kafka-0.kafka."), config

    env_file = out / "k8s" / "overlays" / "dev" / "env" / "terraform" / "terraform-values.env"
    env_file.write_text("".join(l for l in env_file.read_text().splitlines(keepends=True) if not l.startswith("kafka_brokers=")))
    done = subprocess.run(["kubectl", "kustomize", str(out / "k8s" / "overlays" / "dev")], capture_output=True, text=True)
    assert done.returncode != 0 and "kafka_brokers" in done.stderr, done.stderr
    print("terraform-values: the sample outputs reach every object; bad outputs and a missing value fail")


if __name__ == "__main__":
    main()
