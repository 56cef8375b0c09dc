#!/usr/bin/env python3
"""Offline check of the backend VM's cloud-init template (cloud-init/backend.yaml.tftpl).

Terraform cannot run here, so this renders the template the way backend_vm.tf's templatefile()
does, with sample values, and checks what would reach the VM:

- the template uses exactly the variables backend_vm.tf passes (no missing, no unused one), and
  no template syntax other than ${name} and ${base64gzip(name)} (so the renderer below is exact);
- the template and the rendered document pass yamllint; the rendered one starts with
  #cloud-config, uses only the cloud-config keys listed below, and every write_files entry is
  well formed (the embedded backup tool and script decode back to deploy/backup byte for byte);
- the shell scripts it writes pass shellcheck and its JavaScript parses (node --check);
- the systemd units it writes pass `systemd-analyze verify` (systemd must be installed);
- the first boot survives a network that is not there yet: the setup runs as a systemd unit that
  restarts on failure until the script's marker file exists, every download in the script is
  retried, and backend_vm.tf makes the VM wait for its subnet's egress path;
- base64(gzip(rendered)) fits Azure's custom data limit (65,535 bytes, 87,380 base64 characters);
- `cloud-init schema` accepts it (cloud-init must be installed: without it the check fails).

Usage: check-cloud-init.py [--print]   (run with a Python that has PyYAML and yamllint, e.g.
$T/deploy/bin/python; --print writes the rendered document to stdout). Exit 1 on any failure.
"""

import base64
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml
from yamllint import config as yamllint_config
from yamllint import linter

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATE = os.path.join(HERE, "cloud-init", "backend.yaml.tftpl")
BACKEND_VM_TF = os.path.join(HERE, "backend_vm.tf")
SETUP_SCRIPT = "/usr/local/sbin/libertum-backend-setup"
SETUP_UNIT = "/etc/systemd/system/libertum-backend-setup.service"
# What the VM must not be created before (backend_vm.tf's depends_on): its subnet's egress.
VM_DEPENDS_ON = {
    "azurerm_subnet_nat_gateway_association.backend",
    "azurerm_subnet_route_table_association.backend",
    "azurerm_firewall_policy_rule_collection_group.main",
    "azurerm_nat_gateway_public_ip_association.main",
}
BACKUP_DIR = os.path.join(HERE, "..", "backup")
CUSTOM_DATA_MAX_BASE64 = 87380

KNOWN_KEYS = {"package_update", "package_upgrade", "packages", "write_files", "runcmd", "final_message"}
WRITE_FILES_KEYS = {"path", "content", "owner", "permissions", "encoding", "append", "defer"}

YAMLLINT_CONFIG = """
extends: default
rules:
  document-start: disable
  line-length:
    max: 120
    allow-non-breakable-inline-mappings: true
  comments:
    min-spaces-from-content: 1
"""

failures = []
# With --print the rendered document goes to stdout and the report to stderr.
REPORT = sys.stderr if "--print" in sys.argv else sys.stdout


def fail(message):
    failures.append(message)
    print(f"FAIL: {message}", file=REPORT)


def ok(message):
    print(f"ok: {message}", file=REPORT)


def sample_values():
    def read(name):
        path = os.path.join(BACKUP_DIR, name)
        with open(path, encoding="utf-8") as f:
            return f.read()

    return {
        "private_ip": "10.20.3.4",
        "mongodb_series": "7.0",
        "mongodb_cache_size_gb": "0.75",
        "mongodb_database_prefix": "libertum",
        "mongodb_admin_password": "A" * 32,
        "mongodb_app_password": "B" * 32,
        "mongodb_backup_password": "C" * 32,
        "redis_series": "7.2",
        "redis_password": "D" * 32,
        "redis_maxmemory": "256mb",
        "kafka_version": "3.8.1",
        "kafka_scala_version": "2.13",
        "kafka_heap": "1g",
        "kafka_log_retention_hours": "168",
        "storage_account_url": "https://libertumprodstabcde.blob.core.windows.net",
        "backup_container": "mongodb-backups",
        "backup_prefix": "mongodb-vm/",
        "backup_retention_days": "35",
        "backup_py": read("libertum-backup.py"),
        "backup_sh": read("backup-vm.sh"),
    }


def passed_variables():
    """The keys of the map backend_vm.tf hands to templatefile()."""
    with open(BACKEND_VM_TF, encoding="utf-8") as f:
        text = f.read()
    start = text.index('templatefile("${path.module}/cloud-init/backend.yaml.tftpl", {')
    end = text.index("})", start)
    block = text[start:end]
    return set(re.findall(r"^\s*([a-z_0-9]+)\s*=", block, re.MULTILINE))


def render(template, values):
    """templatefile() for the subset the template may use; anything else is an error."""
    out = []
    used = set()
    i = 0
    while i < len(template):
        if template.startswith("$${", i):
            out.append("${")
            i += 3
        elif template.startswith("%%{", i):
            out.append("%{")
            i += 3
        elif template.startswith("%{", i):
            raise ValueError(f"template directive at offset {i}: not supported by this checker")
        elif template.startswith("${", i):
            end = template.index("}", i)
            expr = template[i + 2 : end].strip()
            m = re.fullmatch(r"([a-z_0-9]+)|base64gzip\(([a-z_0-9]+)\)", expr)
            if not m:
                raise ValueError(f"unsupported template expression ${{{expr}}}")
            name = m.group(1) or m.group(2)
            if name not in values:
                raise ValueError(f"${{{expr}}}: {name} is not passed by backend_vm.tf")
            used.add(name)
            value = values[name]
            if m.group(2):
                value = base64.b64encode(gzip.compress(value.encode("utf-8"))).decode("ascii")
            out.append(value)
            i = end + 1
        else:
            out.append(template[i])
            i += 1
    return "".join(out), used


def yamllint(text, what):
    # cloud-init requires the "#cloud-config" header verbatim, which yamllint's comments rule
    # (a space after "#") cannot know about; lint the rest as it is.
    if text.startswith("#cloud-config\n"):
        text = "# cloud-config\n" + text[len("#cloud-config\n"):]
    conf = yamllint_config.YamlLintConfig(YAMLLINT_CONFIG)
    problems = list(linter.run(text, conf))
    if problems:
        for p in problems:
            fail(f"yamllint {what}:{p.line}:{p.column}: {p.message} ({p.rule})")
    else:
        ok(f"yamllint {what}")


def check_first_boot(doc, files):
    """The setup is retried until it succeeds, and waits for the network instead of failing."""
    unit = files.get(SETUP_UNIT)
    script = files.get(SETUP_SCRIPT)
    if unit is None or script is None:
        fail(f"{SETUP_UNIT} and {SETUP_SCRIPT} must both be written")
        return
    runcmd = [" ".join(c) if isinstance(c, list) else c for c in doc.get("runcmd", [])]
    if not any("libertum-backend-setup.service" in c and "enable" in c and "--now" in c for c in runcmd):
        fail("runcmd does not enable and start libertum-backend-setup.service")
    elif any(SETUP_SCRIPT in c for c in runcmd):
        fail("runcmd runs the setup script itself: it must run only in its (retried) unit")
    else:
        ok("runcmd starts libertum-backend-setup.service")
    settings = dict(re.findall(r"^(\w+)=(.*)$", unit, re.MULTILINE))
    marker = re.search(r"^ConditionPathExists=!(\S+)$", unit, re.MULTILINE)
    if (settings.get("Restart") != "on-failure" or settings.get("StartLimitIntervalSec") != "0"
            or settings.get("ExecStart") != SETUP_SCRIPT or not marker):
        fail(f"{SETUP_UNIT}: needs ExecStart={SETUP_SCRIPT}, Restart=on-failure, "
             "StartLimitIntervalSec=0 and ConditionPathExists=!<marker>")
    elif not re.search(r"^done_marker=" + re.escape(marker.group(1)) + r"$", script, re.MULTILINE) \
            or 'date -u +%FT%TZ > "$done_marker"' not in script:
        fail(f"{SETUP_SCRIPT} does not write the marker {marker.group(1)} that stops its unit")
    else:
        ok(f"{SETUP_UNIT} restarts until the setup has written {marker.group(1)}")

    # Every use of the network outside the helpers' own bodies goes through retry.
    unretried = []
    in_function = False
    for number, line in enumerate(script.splitlines(), 1):
        text = line.strip()
        if re.fullmatch(r"[a-z_]+\(\) \{", text):
            in_function = True
            continue
        if in_function:
            in_function = not re.fullmatch(r"\}", text) or line.startswith("  ")
            continue
        if text.startswith("#"):
            continue
        if re.search(r"(^|[;&|(]\s*)(curl|apt-get|apt_get|fetch_key|pip)\b", text) and not text.startswith("retry "):
            unretried.append(f"{number}: {text}")
    if unretried:
        fail(f"{SETUP_SCRIPT}: downloads not wrapped in retry:\n  " + "\n  ".join(unretried))
    else:
        ok(f"{SETUP_SCRIPT}: every download is retried")

    with open(BACKEND_VM_TF, encoding="utf-8") as f:
        text = f.read()
    start = text.index('resource "azurerm_linux_virtual_machine" "backend"')
    end = text.find("\nresource ", start)
    block = text[start:end if end > 0 else len(text)]
    depends = re.search(r"depends_on\s*=\s*\[([^\]]*)\]", block)
    missing = VM_DEPENDS_ON - set(re.findall(r"[\w.]+", depends.group(1) if depends else ""))
    if missing:
        fail(f"backend_vm.tf: the VM's depends_on lacks {sorted(missing)}")
    else:
        ok("backend_vm.tf: the VM waits for its subnet's egress path")


def check_units(files, tmp):
    """systemd-analyze verify on every unit written (drop-ins are checked by their own rules)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        # scripts/check-deploy installs it (Debian's systemd): a check that cannot run fails.
        fail("systemd-analyze is not installed (apt-get install systemd)")
        return
    units = {p: c for p, c in files.items() if p.startswith("/etc/systemd/system/")
             and re.search(r"\.(service|timer)$", p)}
    unit_dir = os.path.join(tmp, "units")
    os.makedirs(unit_dir)
    local = []
    for path, content in units.items():
        # The commands exist only on the VM: check them by their paths above, run /bin/true here.
        content = re.sub(r"^(ExecStart(Pre|Post)?=)(?!/bin/sh )\S+.*$", r"\1/bin/true", content, flags=re.MULTILINE)
        name = os.path.join(unit_dir, os.path.basename(path))
        with open(name, "w", encoding="utf-8") as f:
            f.write(content)
        local.append(name)
    result = subprocess.run([tool, "verify", *sorted(local)], capture_output=True, text=True,
                            env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0 or output:
        fail(f"systemd-analyze verify:\n{output}")
    else:
        ok(f"systemd-analyze verify: {', '.join(sorted(os.path.basename(p) for p in units))}")


def main():
    with open(TEMPLATE, encoding="utf-8") as f:
        template = f.read()

    values = sample_values()
    passed = passed_variables()
    if passed != set(values):
        fail(f"backend_vm.tf passes {sorted(passed)}, this checker samples {sorted(values)}: update one")
    try:
        rendered, used = render(template, values)
    except ValueError as e:
        fail(str(e))
        return
    unused = passed - used
    if unused:
        fail(f"backend_vm.tf passes variables the template never uses: {sorted(unused)}")
    else:
        ok(f"the template uses exactly the {len(passed)} variables backend_vm.tf passes")

    if "--print" in sys.argv:
        sys.stdout.write(rendered)

    yamllint(template, "cloud-init/backend.yaml.tftpl")
    yamllint(rendered, "rendered cloud-config")

    if not rendered.startswith("#cloud-config\n"):
        fail("the rendered document does not start with #cloud-config")
    doc = yaml.safe_load(rendered)
    unknown = set(doc) - KNOWN_KEYS
    if unknown:
        fail(f"unexpected cloud-config keys {sorted(unknown)} (add them to KNOWN_KEYS if intended)")
    else:
        ok(f"cloud-config keys: {sorted(doc)}")

    scripts = {}
    files = {}
    for entry in doc["write_files"]:
        path = entry.get("path", "?")
        extra = set(entry) - WRITE_FILES_KEYS
        if extra or "content" not in entry or not path.startswith("/"):
            fail(f"write_files {path}: malformed entry (keys {sorted(entry)})")
            continue
        content = entry["content"]
        if entry.get("encoding") == "gz+b64":
            content = gzip.decompress(base64.b64decode(content)).decode("utf-8")
        elif "encoding" in entry:
            fail(f"write_files {path}: unexpected encoding {entry['encoding']}")
        files[path] = content
        if "permissions" in entry and not re.fullmatch(r"0[0-7]{3}", str(entry["permissions"])):
            fail(f"write_files {path}: permissions must be a quoted octal string")
        if content.startswith("#!/usr/bin/env bash") or content.startswith("#!/bin/bash"):
            scripts[path] = content
        if path.endswith(".js"):
            scripts[path] = content
    for name, path in (("backup-vm.sh", "/usr/local/lib/libertum-backup/backup-vm.sh"),
                       ("libertum-backup.py", "/usr/local/lib/libertum-backup/libertum-backup.py")):
        entry = next((e for e in doc["write_files"] if e["path"] == path), None)
        if entry is None:
            fail(f"{path} is not written")
            continue
        decoded = gzip.decompress(base64.b64decode(entry["content"])).decode("utf-8")
        if decoded != values["backup_py" if name.endswith(".py") else "backup_sh"]:
            fail(f"{path} does not decode to deploy/backup/{name}")
        else:
            ok(f"{path} decodes to deploy/backup/{name}")

    check_first_boot(doc, files)

    with tempfile.TemporaryDirectory() as tmp:
        check_units(files, tmp)

        # The env files are sourced by bash (set -a; . file): every value must come out as
        # written, e.g. a URI's "&" must not end the assignment.
        for entry in doc["write_files"]:
            if not entry["path"].endswith(".env"):
                continue
            expected = {}
            for line in entry["content"].splitlines():
                m = re.fullmatch(r"([A-Z_][A-Z0-9_]*)='([^']*)'", line)
                if not m:
                    fail(f"{entry['path']}: line is not KEY='value': {line!r}")
                    continue
                expected[m.group(1)] = m.group(2)
            local = os.path.join(tmp, "file.env")
            with open(local, "w", encoding="utf-8") as f:
                f.write(entry["content"])
            script = 'set -a; . "$1"; shift; for k in "$@"; do printf "%s\\0" "${!k}"; done'
            result = subprocess.run(["bash", "-c", script, "bash", local, *expected],
                                    capture_output=True, text=True)
            got = dict(zip(expected, result.stdout.split("\0")))
            if result.returncode != 0 or got != expected:
                fail(f"{entry['path']}: sourcing it with bash does not give the written values")
            else:
                ok(f"{entry['path']}: {len(expected)} values survive `. file` in bash")

        for path, content in scripts.items():
            local = os.path.join(tmp, os.path.basename(path) + (".js" if path.endswith(".js") else ""))
            with open(local, "w", encoding="utf-8") as f:
                f.write(content)
            if path.endswith(".js"):
                tool = shutil.which("node")
                cmd = [tool, "--check", local] if tool else None
            else:
                tool = shutil.which("shellcheck")
                cmd = [tool, "--shell=bash", local] if tool else None
            if cmd is None:
                fail(f"{path}: {'node' if path.endswith('.js') else 'shellcheck'} is not installed")
                continue
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                fail(f"{path}: {os.path.basename(cmd[0])} failed:\n{result.stdout}{result.stderr}")
            else:
                ok(f"{os.path.basename(cmd[0])} {path}")

        cloud_init = shutil.which("cloud-init")
        if cloud_init:
            local = os.path.join(tmp, "user-data")
            with open(local, "w", encoding="utf-8") as f:
                f.write(rendered)
            result = subprocess.run([cloud_init, "schema", "--config-file", local], capture_output=True, text=True)
            if result.returncode != 0:
                fail(f"cloud-init schema:\n{result.stdout}{result.stderr}")
            else:
                ok("cloud-init schema")
        else:
            # scripts/check-deploy installs it (Debian's cloud-init): a check that cannot run fails.
            fail("cloud-init schema: cloud-init is not installed (apt-get install cloud-init)")

    custom_data = base64.b64encode(gzip.compress(rendered.encode("utf-8")))
    if len(custom_data) > CUSTOM_DATA_MAX_BASE64:
        fail(f"custom data is {len(custom_data)} base64 characters, over Azure's {CUSTOM_DATA_MAX_BASE64}")
    else:
        ok(f"custom data: {len(rendered)} bytes rendered, {len(custom_data)} base64 characters gzipped "
           f"(limit {CUSTOM_DATA_MAX_BASE64})")


if __name__ == "__main__":
    main()
    if failures:
        print(f"{len(failures)} failed", file=REPORT)
        sys.exit(1)
    print("cloud-init template: all checks passed", file=REPORT)
