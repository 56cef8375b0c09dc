#!/usr/bin/env python3
"""Tests of set-overlay-images.sh, CD's commit of new image tags, on a copy of deploy/k8s in a
scratch repository whose "origin" is a local bare repository: the overlay ends on sha-<full
commit>, the rendered manifests are checked, the commit reaches origin's main, dev never goes
back, and a wrong registry or a short SHA changes nothing.

    python3 -m unittest discover -s .github/scripts -p 'test_*.py'

Needs git and kubectl (its built-in kustomize renders the overlay), as CD's runner has.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile
import unittest

HERE = pathlib.Path(__file__).resolve().parent
SCRIPT = HERE / "set-overlay-images.sh"
ROOT = HERE.parent.parent
DEV = "libertumdevacr.azurecr.io"
OVERLAY = "deploy/k8s/overlays/dev/kustomization.yaml"


@unittest.skipUnless(shutil.which("git") and shutil.which("kubectl"), "needs git and kubectl")
class SetOverlayImages(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        base = pathlib.Path(tmp.name)
        (base / "gitconfig").write_text("", encoding="utf-8")
        # The developer's own git configuration (signing, hooks, default branch) stays out.
        self.env = {
            **os.environ,
            "GIT_CONFIG_GLOBAL": str(base / "gitconfig"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "cd-test[bot]",
            "GIT_AUTHOR_EMAIL": "cd-test@example.invalid",
            "GIT_COMMITTER_NAME": "cd-test[bot]",
            "GIT_COMMITTER_EMAIL": "cd-test@example.invalid",
        }
        for name in [k for k in self.env if k.startswith("GITHUB_")]:
            del self.env[name]
        self.origin = base / "origin.git"
        self.work = base / "work"
        self.git("init", "--quiet", "--bare", str(self.origin), cwd=base)
        self.git("init", "--quiet", str(self.work), cwd=base)
        shutil.copytree(ROOT / "deploy/k8s", self.work / "deploy/k8s")
        self.git("add", "deploy")
        self.git("commit", "--quiet", "-m", "the manifests")
        self.git("branch", "-M", "main")
        self.git("remote", "add", "origin", str(self.origin))
        self.git("push", "--quiet", "origin", "main")

    def git(self, *args: str, cwd: pathlib.Path | None = None) -> str:
        done = subprocess.run(
            ["git", *args], cwd=cwd or self.work, env=self.env,
            capture_output=True, text=True, check=False,
        )
        self.assertEqual(done.returncode, 0, f"git {' '.join(args)}: {done.stderr}")
        return done.stdout.strip()

    def commit(self, message: str) -> str:
        """A new commit on origin's main (as if merged), whose images CD then deploys."""
        self.git("fetch", "--quiet", "origin", "main")
        self.git("checkout", "--quiet", "-B", "main", "origin/main")
        self.git("commit", "--quiet", "--allow-empty", "-m", message)
        self.git("push", "--quiet", "origin", "main")
        return self.git("rev-parse", "HEAD")

    def run_script(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(SCRIPT), *args], cwd=self.work, env=self.env,
            capture_output=True, text=True, check=False,
        )

    def origin_main(self) -> str:
        return self.git("--git-dir", str(self.origin), "rev-parse", "main")

    def origin_overlay(self) -> str:
        return self.git("--git-dir", str(self.origin), "show", f"main:{OVERLAY}")

    def test_points_the_overlay_at_the_full_commit_and_pushes_it(self) -> None:
        before = self.origin_overlay()
        commit = self.commit("a change")
        done = self.run_script("dev", DEV, commit, "--forward-only")
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        after = self.origin_overlay()
        changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
        self.assertEqual(len(before.splitlines()), len(after.splitlines()))
        self.assertEqual([b for _, b in changed], [f"  newTag: sha-{commit}"] * 2)
        subject = self.git("--git-dir", str(self.origin), "log", "-1", "--format=%s", "main")
        self.assertEqual(subject, f"deploy(dev): libertum sha-{commit} [skip ci]")
        author = self.git("--git-dir", str(self.origin), "log", "-1", "--format=%an", "main")
        self.assertEqual(author, "cd-test[bot]")
        # Again: nothing to commit.
        pushed = self.origin_main()
        done = self.run_script("dev", DEV, commit, "--forward-only")
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertEqual(self.origin_main(), pushed)

    def test_forward_only_never_goes_back_and_promotion_may(self) -> None:
        older = self.commit("older")
        newer = self.commit("newer")
        done = self.run_script("dev", DEV, newer, "--forward-only")
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        pushed = self.origin_main()
        done = self.run_script("dev", DEV, older, "--forward-only")
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("nothing to do", done.stdout)
        self.assertEqual(self.origin_main(), pushed)
        done = self.run_script("dev", DEV, older)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn(f"newTag: sha-{older}", self.origin_overlay())

    def test_a_registry_the_overlay_does_not_name_changes_nothing(self) -> None:
        commit = self.commit("a change")
        pushed = self.origin_main()
        done = self.run_script("dev", "libertumprodacr.azurecr.io", commit)
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertIn("not libertumprodacr.azurecr.io/libertum:sha-", done.stdout)
        self.assertEqual(self.origin_main(), pushed)

    def test_refuses_a_short_commit(self) -> None:
        commit = self.commit("a change")
        pushed = self.origin_main()
        done = self.run_script("dev", DEV, commit[:7])
        self.assertEqual(done.returncode, 2)
        self.assertEqual(self.origin_main(), pushed)


if __name__ == "__main__":
    unittest.main()
