"""Tests of preflight.sh without Azure: a fake `az` on PATH answers from a scenario.

    python3 -m unittest discover -s deploy/terraform -p 'test_*.py'   (scripts/check-deploy)

Needs bash and jq (as preflight.sh does) and python-hcl2 (checkov's, in deploy/tools) to read
variables.tf's defaults.
"""

import json
import os
import re
import stat
import subprocess
import tempfile
import textwrap
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
PREFLIGHT = HERE / "preflight.sh"

# The fake Azure CLI: answers the commands preflight.sh runs from $FAKE_AZ_SCENARIO and logs
# each call to $FAKE_AZ_LOG. An unknown command fails loudly, so a new call needs a new answer.
FAKE_AZ = textwrap.dedent('''\
    #!/usr/bin/env python3
    import json, os, re, sys
    s = json.load(open(os.environ["FAKE_AZ_SCENARIO"]))
    args = sys.argv[1:]
    with open(os.environ["FAKE_AZ_LOG"], "a") as log:
        log.write(" ".join(args) + "\\n")
    def opt(name):
        return args[args.index(name) + 1] if name in args else None
    def out(value, tsv=False):
        print(value if tsv else json.dumps(value))
        sys.exit(0)
    def missing():
        print("ERROR: (ResourceNotFound) not found", file=sys.stderr)
        sys.exit(3)
    words = [a for a in args if not a.startswith("-")]
    cmd = " ".join(words[:3])
    if cmd.startswith("account show"):
        if not s.get("logged_in", True):
            print("ERROR: Please run 'az login' to setup account.", file=sys.stderr)
            sys.exit(1)
        out({"id": s["subscription"], "name": "Test", "user": {"name": "ops@example.com"}})
    if cmd.startswith("provider list"):
        out(s["registered"])
    if cmd.startswith("feature show"):
        out(s["feature"], tsv=True)
    if cmd.startswith("vm list-usage"):
        out(s["usage"])
    if cmd.startswith("vm list-skus"):
        size = opt("--size")
        sku = s["skus"].get(size)
        if sku is None:
            out([])
        out([{"name": size, "family": sku["family"],
              "capabilities": [{"name": "vCPUs", "value": str(sku["vcpus"])}],
              "restrictions": sku.get("restrictions", [])}])
    name = opt("--name")
    if cmd.startswith(("acr check-name", "storage account check-name")):
        free = name not in s["taken"] and name not in s["ours"]
        out({"nameAvailable": free, "message": None if free else f"The name {name} is already in use."})
    if cmd.startswith("rest"):
        name = json.loads(opt("--body"))["name"]
        free = name not in s["taken"] and name not in s["ours"] and name not in s["deleted_vaults"]
        out({"nameAvailable": free, "message": None if free else f"Vault name {name} is already in use."})
    if cmd.startswith("acr show") or cmd.startswith("keyvault show") or cmd.startswith("storage account show"):
        if name in s["ours"]:
            out("/subscriptions/x/resourceGroups/rg/providers/p/" + name, tsv=True)
        missing()
    if cmd.startswith("keyvault list-deleted"):
        out([{"name": n} for n in s["deleted_vaults"]])
    if cmd.startswith("network watcher list"):
        # Only the query preflight.sh sends: the watchers of one location.
        location = re.fullmatch(r"\[\?location=='([a-z0-9]+)'\]", opt("--query"))[1]
        out([w for w in s["watchers"] if w["location"] == location])
    if cmd.startswith("security pricing show") and opt("--name") == "Containers":
        if opt("--query") != "pricingTier" or opt("--output") != "tsv":
            sys.exit(98)
        out(s["defender"], tsv=True)
    print(f"fake az: no answer for: {' '.join(args)}", file=sys.stderr)
    sys.exit(99)
''')

GOOD = {
    "subscription": "00000000-0000-0000-0000-000000000001",
    "registered": [
        "Microsoft.Compute", "Microsoft.ContainerService", "Microsoft.ContainerRegistry",
        "Microsoft.KeyVault", "Microsoft.Network", "Microsoft.Storage",
        "Microsoft.OperationalInsights", "Microsoft.Insights", "Microsoft.Monitor",
        "Microsoft.AlertsManagement", "Microsoft.ManagedIdentity", "Microsoft.PolicyInsights",
        "Microsoft.Security", "Microsoft.Web",
    ],
    "feature": "Registered",
    "usage": [
        {"name": {"value": "cores"}, "currentValue": 4, "limit": 100},
        {"name": {"value": "standardDSv5Family"}, "currentValue": 0, "limit": 50},
        {"name": {"value": "standardDLSv5Family"}, "currentValue": 0, "limit": 10},
    ],
    "skus": {
        "Standard_D2s_v5": {"family": "standardDSv5Family", "vcpus": 2},
        "Standard_D2ls_v5": {"family": "standardDLSv5Family", "vcpus": 2},
    },
    "taken": [],
    "ours": [],
    "deleted_vaults": [],
    "watchers": [
        {"name": "NetworkWatcher_westeurope", "resourceGroup": "NetworkWatcherRG", "location": "westeurope"},
        {"name": "NetworkWatcher_northeurope", "resourceGroup": "NetworkWatcherRG", "location": "northeurope"},
    ],
    "defender": "Free",
}

VARS = 'name_prefix = "acme"\nenvironment = "dev"\n'


class Preflight(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.tmp = Path(self.dir.name)
        bin_dir = self.tmp / "bin"
        bin_dir.mkdir()
        az = bin_dir / "az"
        az.write_text(FAKE_AZ)
        az.chmod(az.stat().st_mode | stat.S_IXUSR)
        self.log = self.tmp / "az.log"
        self.work = self.tmp / "work"  # the working directory: no terraform.tfvars of its own
        self.work.mkdir()
        self.path = f"{bin_dir}:{os.environ['PATH']}"

    def tearDown(self):
        self.dir.cleanup()

    def run_preflight(self, scenario=None, variables=VARS, *extra, env=None):
        scenario = GOOD if scenario is None else scenario
        (self.tmp / "scenario.json").write_text(json.dumps(scenario))
        (self.tmp / "test.tfvars").write_text(variables)
        extra_env = env or {}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_VAR_", "ARM_"))}
        env.update(PATH=self.path, FAKE_AZ_SCENARIO=str(self.tmp / "scenario.json"),
                   FAKE_AZ_LOG=str(self.log), **extra_env)
        return subprocess.run(
            ["bash", str(PREFLIGHT), f"-var-file={self.tmp / 'test.tfvars'}", *extra],
            cwd=self.work, env=env, capture_output=True, text=True, timeout=60)

    def lines(self, done, kind):
        return [line for line in done.stdout.splitlines() if line.startswith(kind)]

    def test_a_ready_subscription_passes(self):
        done = self.run_preflight()
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertEqual(self.lines(done, "FAIL"), [])
        out = done.stdout
        # Default node counts: system 3 + 1 surge, user 6 + 2 surge, 2 vCPUs each.
        self.assertIn("quota standardDSv5Family in westeurope: 24 vCPUs needed", out)
        self.assertIn("quota standardDLSv5Family in westeurope: 2 vCPUs needed", out)
        self.assertIn("quota cores in westeurope: 26 vCPUs needed", out)
        for name in ("acmedevacr", "acme-dev-kv", "acmedevst", "acmetfstate"):
            self.assertRegex(out, rf"PASS .* name {name} is free")
        self.assertIn("PASS  the Network Watcher NetworkWatcher_westeurope (NetworkWatcherRG) exists in westeurope", out)
        # Defender for Containers is off by default: its plan is not even read.
        self.assertIn("PASS  defender_for_containers_enabled is false", out)
        self.assertNotIn("security pricing", self.log.read_text())
        self.assertIn("every check passed", out)

    def test_each_problem_fails_and_says_what_to_do(self):
        scenario = json.loads(json.dumps(GOOD))
        scenario["registered"].remove("Microsoft.Security")
        scenario["feature"] = "Pending"
        scenario["usage"][1]["limit"] = 20
        scenario["taken"] = ["acmedevacr"]
        scenario["ours"] = ["acmetfstate"]
        scenario["deleted_vaults"] = ["acme-dev-kv"]
        done = self.run_preflight(scenario)
        self.assertEqual(done.returncode, 1, done.stdout)
        out = done.stdout
        self.assertIn("FAIL  resource providers not registered: Microsoft.Security", out)
        self.assertIn("az provider register --namespace", out)
        self.assertIn("FAIL  the feature Microsoft.Compute/EncryptionAtHost is Pending", out)
        self.assertIn("az feature register --namespace Microsoft.Compute --name EncryptionAtHost", out)
        self.assertIn("FAIL  quota standardDSv5Family in westeurope: 24 vCPUs needed", out)
        self.assertIn("request an increase to at least 24", out)
        self.assertIn("FAIL  registry name acmedevacr is taken outside this subscription", out)
        self.assertIn("choose another name_prefix", out)
        self.assertIn("PASS  Key Vault name acme-dev-kv is a soft-deleted vault of this subscription", out)
        self.assertIn("PASS  state storage account name acmetfstate already exists in this subscription", out)
        self.assertIn("PASS  storage account name acmedevst is free", out)
        self.assertIn("preflight: 4 check(s) failed", out)

    def test_not_logged_in_stops_at_once(self):
        done = self.run_preflight(dict(GOOD, logged_in=False))
        self.assertEqual(done.returncode, 1)
        self.assertIn("FAIL  the Azure CLI is not logged in", done.stdout)
        self.assertEqual(self.log.read_text().split("\n")[0], "account show --output json")
        self.assertEqual(len(self.log.read_text().splitlines()), 1)

    def test_a_prefix_that_cannot_fit_fails_before_asking_azure(self):
        done = self.run_preflight(GOOD, 'name_prefix = "acmecorporation"\nenvironment = "prod"\n',
                                  "--names-only")
        self.assertEqual(done.returncode, 1)
        self.assertIn('FAIL  name_prefix "acmecorporation": 2-12 lowercase letters', done.stdout)
        self.assertFalse(self.log.exists(), "--names-only must not call az")
        done = self.run_preflight(GOOD, 'name_prefix = "abcdefghijkl"\nenvironment = "staging1"\n',
                                  "--names-only")
        self.assertEqual(done.returncode, 0, done.stdout)
        self.assertIn("PASS  Key Vault name abcdefghijkl-staging1-kv is well formed", done.stdout)

    def test_sizes_zones_counts_and_subscription_come_from_the_variables(self):
        scenario = json.loads(json.dumps(GOOD))
        scenario["skus"]["Standard_D4s_v5"] = {
            "family": "standardDSv5Family", "vcpus": 4,
            "restrictions": [{"type": "Zone", "restrictionInfo": {"zones": ["3"]}}]}
        variables = VARS + textwrap.dedent('''\
            subscription_id  = "00000000-0000-0000-0000-000000000002"
            aks_node_vm_size = "Standard_D4s_v5" # bigger nodes
            aks_zones        = ["1", "3"]
            aks_system_node_count = { min = 1, max = 2 }
            aks_user_node_count = {
              min = 1
              max = 4
            }
        ''')
        done = self.run_preflight(scenario, variables)
        self.assertEqual(done.returncode, 1, done.stdout)
        out = done.stdout
        # 4 vCPUs x (2 + 1 surge + 4 + 2 surge) = 36.
        self.assertIn("quota standardDSv5Family in westeurope: 36 vCPUs needed", out)
        self.assertIn("FAIL  AKS node pools: Standard_D4s_v5 is not offered in zone 3", out)
        self.assertIn("az account set --subscription 00000000-0000-0000-0000-000000000002", out)

    def test_defender_for_containers_only_where_it_is_still_free(self):
        enabled = VARS + "defender_for_containers_enabled = true\n"
        done = self.run_preflight(GOOD, enabled)
        self.assertEqual(done.returncode, 0, done.stdout)
        self.assertIn("PASS  Defender for Containers is Free on this subscription", done.stdout)
        self.assertIn("security pricing show --name Containers --query pricingTier --output tsv",
                      self.log.read_text())

        on_already = dict(GOOD, defender="Standard")
        done = self.run_preflight(on_already, enabled)
        self.assertEqual(done.returncode, 1, done.stdout)
        self.assertIn("FAIL  Defender for Containers is on already in this subscription", done.stdout)
        self.assertIn("set defender_for_containers_enabled=false (it is on already), or terraform import "
                      "'azurerm_security_center_subscription_pricing.containers[0]' "
                      f"/subscriptions/{GOOD['subscription']}/providers/Microsoft.Security/pricings/Containers",
                      done.stdout)
        self.assertIn("preflight: 1 check(s) failed", done.stdout)

        # The same subscription, this environment leaving the plan to the other one.
        done = self.run_preflight(on_already, VARS + "defender_for_containers_enabled = false # dev has it\n")
        self.assertEqual(done.returncode, 0, done.stdout)
        self.assertIn("PASS  defender_for_containers_enabled is false", done.stdout)

        # TF_VAR_ is read too, and an unreadable plan fails.
        done = self.run_preflight(dict(GOOD, defender=""), VARS, env={"TF_VAR_defender_for_containers_enabled": "true"})
        self.assertEqual(done.returncode, 1, done.stdout)
        self.assertIn("FAIL  could not read the Defender for Containers plan", done.stdout)

    def test_flow_logs_need_the_regions_network_watcher(self):
        scenario = dict(GOOD, watchers=[w for w in GOOD["watchers"] if w["location"] != "westeurope"])
        done = self.run_preflight(scenario)
        self.assertEqual(done.returncode, 1, done.stdout)
        out = done.stdout
        self.assertIn("FAIL  no Network Watcher in westeurope, and the flow logs (flow_logs_enabled) need one", out)
        self.assertIn("az group create --name NetworkWatcherRG --location westeurope", out)
        self.assertIn("az network watcher configure --locations westeurope --enabled true "
                      "--resource-group NetworkWatcherRG", out)
        self.assertIn("preflight: 1 check(s) failed", out)

        done = self.run_preflight(scenario, VARS + "flow_logs_enabled = false\n")
        self.assertEqual(done.returncode, 0, done.stdout)
        self.assertIn("PASS  flow_logs_enabled is false: no Network Watcher needed", done.stdout)

        # The location as the portal writes it; a watcher of another name must be named.
        done = self.run_preflight(GOOD, VARS + 'location = "North Europe"\n')
        self.assertIn("PASS  the Network Watcher NetworkWatcher_northeurope (NetworkWatcherRG) exists in northeurope",
                      done.stdout)
        own = dict(GOOD, watchers=[{"name": "nw-weu", "resourceGroup": "rg-network", "location": "westeurope"}])
        done = self.run_preflight(own)
        self.assertEqual(done.returncode, 1, done.stdout)
        self.assertIn("FAIL  the Network Watcher of westeurope is nw-weu in rg-network, not "
                      "NetworkWatcher_westeurope in NetworkWatcherRG", done.stdout)
        done = self.run_preflight(own, VARS + 'network_watcher_name = "nw-weu"\n'
                                  'network_watcher_resource_group_name = "rg-network"\n')
        self.assertEqual(done.returncode, 0, done.stdout)

    def test_an_unknown_size_fails(self):
        done = self.run_preflight(GOOD, VARS + 'backend_vm_size = "Standard_X9"\n')
        self.assertEqual(done.returncode, 1)
        self.assertIn("FAIL  backend VM: the size Standard_X9 does not exist in westeurope", done.stdout)
        # Without the backend VM (preview), its size is not looked at at all.
        done = self.run_preflight(GOOD, VARS + 'backend_vm_size = "Standard_X9"\nbackend_vm_enabled = false\n')
        self.assertEqual(done.returncode, 0, done.stdout)
        self.assertNotIn("backend VM", done.stdout)


class AgreesWithTheTerraform(unittest.TestCase):
    """preflight.sh repeats a few of the Terraform's facts: they must not drift apart."""

    def config(self):
        done = subprocess.run(["bash", str(PREFLIGHT), "--print-config"], cwd=tempfile.gettempdir(),
                              env={k: v for k, v in os.environ.items() if not k.startswith("TF_VAR_")},
                              capture_output=True, text=True, check=True)
        return dict(line.split("=", 1) for line in done.stdout.splitlines())

    def test_defaults_are_variables_tf_defaults(self):
        import hcl2

        with open(HERE / "variables.tf") as f:
            variables = {name: body for block in hcl2.load(f)["variable"] for name, body in block.items()}

        def default(name):
            return variables[name]["default"][0]

        config = self.config()
        for name in ("location", "backend_vm_size", "backend_vm_zone", "aks_node_vm_size"):
            self.assertEqual(config[name], default(name), name)
        self.assertEqual(config["aks_zones"].split(), default("aks_zones"))
        self.assertEqual(int(config["aks_system_node_count_max"]), default("aks_system_node_count")["max"])
        self.assertEqual(int(config["aks_user_node_count_max"]), default("aks_user_node_count")["max"])
        for name in ("flow_logs_enabled", "defender_for_containers_enabled"):
            self.assertEqual(config[name], str(default(name)).lower(), name)
        self.assertEqual(config["network_watcher_resource_group_name"], default("network_watcher_resource_group_name"))
        self.assertIn(default("network_watcher_name"), (None, "null"), "network_watcher_name: null, NetworkWatcher_<location>")
        self.assertEqual(config["network_watcher_name"], "")
        self.assertNotIn("default", variables["name_prefix"], "name_prefix must have no default")

    def test_names_and_surge_are_the_terraform_ones(self):
        main = (HERE / "main.tf").read_text()
        self.assertIn('name = "${var.name_prefix}-${var.environment}"', main)
        self.assertIn('key_vault_name       = "${local.name}-kv"', main)
        self.assertIn('acr_name             = "${var.name_prefix}${var.environment}acr"', main)
        self.assertIn('storage_account_name = "${var.name_prefix}${var.environment}st"', main)
        # The examples show the names derived from one prefix.
        prefix = re.search(r'^name_prefix\s*=\s*"([a-z0-9]+)"', (HERE / "terraform.tfvars.example").read_text(), re.M)[1]
        backend = (HERE / "backend.hcl.example").read_text()
        self.assertRegex(backend, rf'(?m)^storage_account_name = "{prefix}tfstate"$')
        self.assertRegex(backend, rf'(?m)^resource_group_name  = "rg-{prefix}-tfstate"$')
        surges = set(re.findall(r'max_surge\s*=\s*"(\d+)%"', (HERE / "aks.tf").read_text()))
        self.assertEqual(surges, {re.search(r"surge_percent=(\d+)", PREFLIGHT.read_text())[1]})


if __name__ == "__main__":
    unittest.main()
