#!/usr/bin/env python3
"""Tests of .github/workflows/cd.yml's structure, for what its scripts' tests cannot see:

- the dev job pushes only what Trivy scanned: each image is built into the runner's engine
  (load, no push), scanned by ci.yml's Trivy action (same commit, same verdict: fixable
  CRITICAL fails) under the tag it is then pushed with (docker push), both scans before any push;
- the promote job can target prod or preview: the `environment` input's choices are overlays and
  Argo CD environments of this repository, each in its own GitHub environment, and the step that
  picks the target's identity and registry (run here with bash) takes that environment's
  variables, and refuses an unset one or another environment.

    python3 -m unittest discover -s .github/scripts -p 'test_*.py'

Needs PyYAML (scripts/check-deploy runs it in its tools' virtual environment, which has it).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import tempfile
import unittest

import yaml

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
IMAGES = {"libertum": "docker/Dockerfile", "libertum-backup": "docker/backup/Dockerfile"}


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / ".github/workflows" / name).read_text(encoding="utf-8"))


def triggers(workflow: dict) -> dict:
    # PyYAML reads the key `on` as the boolean true.
    return workflow.get("on", workflow.get(True))


class DevJobPushesWhatItScanned(unittest.TestCase):
    def setUp(self) -> None:
        self.steps = load("cd.yml")["jobs"]["dev"]["steps"]
        ci = load("ci.yml")["jobs"]["image"]["steps"]
        self.ci_trivy = [s for s in ci if str(s.get("uses", "")).startswith("aquasecurity/trivy-action@")]
        self.assertEqual(len(self.ci_trivy), 2, "ci.yml scans two images")

    def index(self, predicate, what: str) -> int:
        found = [i for i, step in enumerate(self.steps) if predicate(step)]
        self.assertEqual(len(found), 1, f"cd.yml's dev job: expected one step that {what}, found {len(found)}")
        return found[0]

    def test_no_step_builds_and_pushes_at_once(self) -> None:
        for step in self.steps:
            if str(step.get("uses", "")).startswith("docker/build-push-action@"):
                self.assertNotIn(step["with"].get("push"), (True, "true"), step.get("name"))

    def test_each_image_is_built_loaded_scanned_then_pushed(self) -> None:
        pushes = self.index(lambda s: "docker push" in str(s.get("run", "")), "runs docker push")
        push_script = self.steps[pushes]["run"]
        builds, scans = [], []
        for repository, dockerfile in IMAGES.items():
            with self.subTest(repository=repository):
                tag = f"${{{{ env.REGISTRY }}}}/{repository}:sha-${{{{ env.COMMIT }}}}"
                build = self.index(
                    lambda s: str(s.get("uses", "")).startswith("docker/build-push-action@")
                    and s["with"].get("file") == dockerfile,
                    f"builds {dockerfile}",
                )
                given = self.steps[build]["with"]
                self.assertEqual(given.get("tags"), tag)
                self.assertIs(given.get("load"), True, "built into the runner's engine, for the scan")
                self.assertIs(given.get("push"), False)
                scan = self.index(
                    lambda s: str(s.get("uses", "")).startswith("aquasecurity/trivy-action@")
                    and s["with"].get("image-ref") == tag,
                    f"scans {tag}",
                )
                trivy = self.steps[scan]
                # The very action and verdict of ci.yml's scans.
                for ci in self.ci_trivy:
                    self.assertEqual(trivy["uses"], ci["uses"], "not the commit of the action ci.yml uses")
                    for key in ("severity", "ignore-unfixed", "exit-code"):
                        self.assertEqual(trivy["with"].get(key), ci["with"].get(key), key)
                self.assertEqual(trivy["with"].get("severity"), "CRITICAL")
                self.assertIs(trivy["with"].get("ignore-unfixed"), True)
                self.assertEqual(str(trivy["with"].get("exit-code")), "1")
                # The local image, never a registry's copy.
                self.assertEqual(trivy.get("env", {}).get("TRIVY_IMAGE_SRC"), "docker")
                # The scan runs when this image was built, and the push only after every scan.
                build_id = self.steps[build].get("id")
                self.assertTrue(build_id)
                self.assertIn(f"steps.{build_id}.outcome == 'success'", str(trivy.get("if", "")))
                self.assertNotIn("always()", str(self.steps[pushes].get("if", "")))
                self.assertNotIn("!cancelled()", str(self.steps[pushes].get("if", "")))
                # What is pushed is the tag that was scanned.
                self.assertIn(f'docker push "$REGISTRY/{repository}:sha-$COMMIT"', push_script)
                self.assertEqual(self.steps[0]["with"]["ref"], "${{ github.event.workflow_run.head_sha }}")
                builds.append(build)
                scans.append(scan)
        self.assertLess(max(builds), min(scans))
        self.assertLess(max(scans), pushes, "an image is pushed before both are scanned")
        lock = self.index(lambda s: "--write-enabled false" in str(s.get("run", "")), "locks the tags")
        self.assertLess(pushes, lock)
        self.assertEqual(self.steps[pushes].get("env", {}).get("HELD_LIBERTUM"), "${{ steps.held.outputs.libertum }}")


class PromoteJobTargets(unittest.TestCase):
    def setUp(self) -> None:
        workflow = load("cd.yml")
        self.inputs = triggers(workflow)["workflow_dispatch"]["inputs"]
        self.job = workflow["jobs"]["promote"]

    def test_the_choices_are_this_repositorys_environments(self) -> None:
        choice = self.inputs["environment"]
        self.assertEqual(choice["type"], "choice")
        self.assertEqual(choice["options"], ["prod", "preview"])
        self.assertEqual(choice["default"], "prod")
        for environment in choice["options"]:
            with self.subTest(environment=environment):
                self.assertTrue((ROOT / f"deploy/k8s/overlays/{environment}/kustomization.yaml").is_file())
                self.assertTrue((ROOT / f"deploy/argocd/{environment}/kustomization.yaml").is_file())

    def test_each_target_runs_in_its_own_github_environment(self) -> None:
        self.assertEqual(self.job["environment"], "${{ inputs.environment == 'preview' && 'preview' || 'production' }}")
        self.assertEqual(self.job["concurrency"]["group"], "cd-${{ inputs.environment }}")
        self.assertEqual(self.job["env"]["TARGET"], "${{ inputs.environment }}")
        publish = [s for s in self.job["steps"] if "publish-manifests.sh" in str(s.get("run", ""))]
        self.assertEqual(len(publish), 1)
        self.assertIn('publish-manifests.sh "$TARGET" "$REGISTRY" "$FULL" --tags-only', publish[0]["run"])
        login = [s for s in self.job["steps"] if str(s.get("uses", "")).startswith("azure/login@")]
        self.assertEqual(login[0]["with"]["client-id"], "${{ steps.settings.outputs.client_id }}")
        self.assertEqual(login[0]["with"]["subscription-id"], "${{ steps.settings.outputs.subscription_id }}")

    def settings(self, target: str, **variables: str) -> tuple[int, dict[str, str], dict[str, str], str]:
        """Runs the step that picks the target's identity and registry, as the runner would."""
        step = next(s for s in self.job["steps"] if s.get("id") == "settings")
        for name, value in step["env"].items():
            self.assertEqual(value, f"${{{{ vars.{name} }}}}", "each variable from the variable of its name")
        with tempfile.TemporaryDirectory() as tmp:
            output, env_file = pathlib.Path(tmp, "output"), pathlib.Path(tmp, "env")
            output.touch()
            env_file.touch()
            env = {k: v for k, v in os.environ.items() if not k.startswith(("PROD_", "PREVIEW_", "GITHUB_"))}
            env.update({name: variables.get(name, "") for name in step["env"]})
            env.update(TARGET=target, GITHUB_OUTPUT=str(output), GITHUB_ENV=str(env_file))
            done = subprocess.run(["bash", "-e", "-c", step["run"]], env=env,
                                  capture_output=True, text=True, check=False)

            def read(path: pathlib.Path) -> dict[str, str]:
                return dict(line.split("=", 1) for line in path.read_text(encoding="utf-8").splitlines())

            return done.returncode, read(output), read(env_file), done.stdout + done.stderr

    ALL = {
        "PROD_AZURE_CLIENT_ID": "prod-client", "PROD_AZURE_SUBSCRIPTION_ID": "prod-sub", "PROD_ACR_NAME": "libertumprodacr",
        "PREVIEW_AZURE_CLIENT_ID": "preview-client", "PREVIEW_AZURE_SUBSCRIPTION_ID": "preview-sub",
        "PREVIEW_ACR_NAME": "libertumpreviewacr",
    }

    def test_the_target_takes_its_own_variables(self) -> None:
        for target in ("prod", "preview"):
            with self.subTest(target=target):
                rc, output, env, log = self.settings(target, **self.ALL)
                self.assertEqual(rc, 0, log)
                self.assertEqual(output, {"client_id": f"{target}-client", "subscription_id": f"{target}-sub"})
                self.assertEqual(env, {"ACR": f"libertum{target}acr", "REGISTRY": f"libertum{target}acr.azurecr.io"})
                # The registry is the one the target's overlay names (terraform-values.env), which
                # publish-manifests.sh checks again after the edit.
                values = (ROOT / f"deploy/k8s/overlays/{target}/env/terraform/terraform-values.env").read_text()
                self.assertIn(f"acr_login_server={env['REGISTRY']}\n", values)

    def test_an_unset_variable_of_the_target_fails_and_never_falls_back(self) -> None:
        for name in [n for n in self.ALL if n.startswith("PREVIEW_")]:
            with self.subTest(name=name):
                rc, output, env, log = self.settings("preview", **{**self.ALL, name: ""})
                self.assertNotEqual(rc, 0)
                self.assertIn(f"the repository variable {name} is not set", log)
                self.assertEqual((output, env), ({}, {}))
        # Prod's variables alone do for prod.
        prod = {k: v for k, v in self.ALL.items() if k.startswith("PROD_")}
        self.assertEqual(self.settings("prod", **prod)[0], 0)

    def test_another_environment_is_refused(self) -> None:
        for target in ("dev", "production", "", "prod; true"):
            with self.subTest(target=target):
                rc, output, env, log = self.settings(target, **self.ALL)
                self.assertNotEqual(rc, 0)
                self.assertIn("is prod or preview", log)
                self.assertEqual((output, env), ({}, {}))


if __name__ == "__main__":
    unittest.main()
