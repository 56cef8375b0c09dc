#!/usr/bin/env python3
"""Tests of publish-manifests.sh, CD's publication of the manifests, end to end against a local
bare repository standing in for the manifests repository (a file:// URL): the first run makes
one commit with the expected tags, a second with the same inputs makes none, a new tag changes
only the tag lines, a push that loses a race is redone on the new tip, dev never goes back, the
tree never goes back, other overlays keep their tags, a promotion to preview sets preview's
tags (on preview's registry) and later dev runs keep them, and a wrong registry or a short SHA
changes nothing. Also the same with this repository as its own manifests repository (self), and
manifests-target.sh, which resolves the repository variable and refuses one that is not
deploy/argocd/base/repository.yaml's, and as-deploy-key.sh, which gives git the deploy key.

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
SCRIPT = HERE / "publish-manifests.sh"
TARGET = HERE / "manifests-target.sh"
DEPLOY_KEY = HERE / "as-deploy-key.sh"
ROOT = HERE.parent.parent
DEV = "libertumdevacr.azurecr.io"
PROD = "libertumprodacr.azurecr.io"
PREVIEW = "libertumpreviewacr.azurecr.io"
DEV_OVERLAY = "deploy/k8s/overlays/dev/kustomization.yaml"
PROD_OVERLAY = "deploy/k8s/overlays/prod/kustomization.yaml"
PREVIEW_OVERLAY = "deploy/k8s/overlays/preview/kustomization.yaml"
SET_TAG = HERE / "set-image-tag.py"
GIT = shutil.which("git") or "git"


class Base(unittest.TestCase):
    def setUp(self) -> None:
        for tool in ("git", "kubectl"):
            self.assertIsNotNone(shutil.which(tool), f"these tests need {tool}")
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.base = pathlib.Path(tmp.name)
        (self.base / "gitconfig").write_text("", encoding="utf-8")
        # The developer's own git configuration (signing, hooks, default branch) stays out.
        self.env = {
            **os.environ,
            "GIT_CONFIG_GLOBAL": str(self.base / "gitconfig"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "cd-test[bot]",
            "GIT_AUTHOR_EMAIL": "cd-test@example.invalid",
            "GIT_COMMITTER_NAME": "cd-test[bot]",
            "GIT_COMMITTER_EMAIL": "cd-test@example.invalid",
            "PUBLISH_RETRY_SECONDS": "0",
        }
        for name in [k for k in self.env if k.startswith(("GITHUB_", "MANIFESTS_"))]:
            del self.env[name]
        # The source: a repository holding this checkout's deploy/k8s, with its origin.
        self.source = self.base / "source"
        self.source_origin = self.base / "source.git"
        self.git("init", "--quiet", "--bare", str(self.source_origin), cwd=self.base)
        self.git("init", "--quiet", str(self.source), cwd=self.base)
        shutil.copytree(ROOT / "deploy/k8s", self.source / "deploy/k8s",
                        ignore=shutil.ignore_patterns("__pycache__"))
        self.git("add", "deploy")
        self.git("commit", "--quiet", "-m", "the manifests")
        self.git("branch", "-M", "main")
        self.git("remote", "add", "origin", str(self.source_origin))
        self.git("push", "--quiet", "origin", "main")

    def git(self, *args: str, cwd: pathlib.Path | None = None, strip: bool = True) -> str:
        done = subprocess.run(
            [GIT, *args], cwd=cwd or self.source, env=self.env,
            capture_output=True, text=True, check=False,
        )
        self.assertEqual(done.returncode, 0, f"git {' '.join(args)}: {done.stderr}")
        return done.stdout.strip() if strip else done.stdout

    def commit(self, message: str, change: str | None = None) -> str:
        """A new commit on the source's main (as if merged), whose images CD then deploys."""
        if change:
            path = self.source / change
            path.write_text(path.read_text(encoding="utf-8") + f"# {message}\n", encoding="utf-8")
            self.git("add", change)
        self.git("commit", "--quiet", "--allow-empty", "-m", message)
        self.git("push", "--quiet", "origin", "main")
        return self.git("rev-parse", "HEAD")

    def publish(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(SCRIPT), *args], cwd=self.source, env={**self.env, **env},
            capture_output=True, text=True, check=False,
        )


class SeparateRepository(Base):
    def setUp(self) -> None:
        super().setUp()
        self.manifests = self.base / "manifests.git"
        self.git("init", "--quiet", "--bare", str(self.manifests), cwd=self.base)
        self.env["MANIFESTS_URL"] = self.manifests.as_uri()

    def m(self, *args: str, strip: bool = True) -> str:
        return self.git("--git-dir", str(self.manifests), *args, strip=strip)

    def show(self, path: str, rev: str = "main") -> str:
        return self.m("show", f"{rev}:{path}", strip=False)

    def ok(self, done: subprocess.CompletedProcess) -> None:
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)

    def test_end_to_end_one_commit_then_none_then_only_the_tags(self) -> None:
        first = self.commit("first")
        self.ok(self.publish("dev", DEV, first, "--forward-only"))
        # One commit, with deploy/k8s as in the source and dev's images on the commit.
        self.assertEqual(self.m("rev-list", "--count", "main"), "1")
        self.assertEqual(
            self.m("ls-tree", "-r", "--name-only", "main", "deploy/k8s"),
            self.git("ls-tree", "-r", "--name-only", "HEAD", "deploy/k8s"),
        )
        self.assertEqual(self.show("SOURCE_COMMIT"), first + "\n")
        self.assertIn("deploy/k8s/overlays/<environment>", self.show("README.md"))
        dev = self.show(DEV_OVERLAY)
        self.assertEqual(dev.count(f"  newTag: sha-{first}\n"), 2)
        self.assertEqual(self.show(PROD_OVERLAY), (self.source / PROD_OVERLAY).read_text(encoding="utf-8"))
        message = self.m("log", "-1", "--format=%B", "main")
        self.assertTrue(message.startswith(f"deploy(dev): libertum sha-{first} [skip ci]"), message)
        self.assertIn(f"at {first}.", message)
        self.assertEqual(self.m("log", "-1", "--format=%an", "main"), "cd-test[bot]")

        # The same inputs again: nothing to commit.
        pushed = self.m("rev-parse", "main")
        done = self.publish("dev", DEV, first, "--forward-only")
        self.ok(done)
        self.assertIn("up to date", done.stdout)
        self.assertEqual(self.m("rev-parse", "main"), pushed)

        # A new commit: only the two tag lines and the source commit change.
        second = self.commit("second")
        self.ok(self.publish("dev", DEV, second, "--forward-only"))
        self.assertEqual(self.m("rev-list", "--count", "main"), "2")
        changed = self.m("diff", "--name-only", pushed, "main").splitlines()
        self.assertEqual(sorted(changed), sorted([DEV_OVERLAY, "SOURCE_COMMIT"]))
        lines = [
            line for line in self.m("diff", "-U0", pushed, "main", "--", DEV_OVERLAY).splitlines()
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        ]
        self.assertEqual(sorted(lines), sorted([f"-  newTag: sha-{first}"] * 2 + [f"+  newTag: sha-{second}"] * 2))

    def test_other_overlays_keep_their_tags_and_manifest_changes_arrive(self) -> None:
        first = self.commit("first")
        self.ok(self.publish("prod", PROD, first))
        second = self.commit("a change of the base", change="deploy/k8s/base/kustomization.yaml")
        self.ok(self.publish("dev", DEV, second, "--forward-only"))
        self.assertEqual(self.show(PROD_OVERLAY).count(f"  newTag: sha-{first}\n"), 2)
        self.assertEqual(self.show(DEV_OVERLAY).count(f"  newTag: sha-{second}\n"), 2)
        self.assertIn("# a change of the base\n", self.show("deploy/k8s/base/kustomization.yaml"))
        # A file the source no longer has goes from the manifests too.
        self.git("rm", "--quiet", "deploy/k8s/README.md")
        third = self.commit("no README")
        self.ok(self.publish("dev", DEV, third, "--forward-only"))
        self.assertNotIn("deploy/k8s/README.md", self.m("ls-tree", "-r", "--name-only", "main").splitlines())

    def test_a_push_that_loses_a_race_is_redone_on_the_new_tip(self) -> None:
        first = self.commit("first")
        self.ok(self.publish("dev", DEV, first, "--forward-only"))
        # Someone else pushes between the script's fetch and its push: a git on PATH that, at the
        # script's first push, first pushes another commit from another clone.
        other = self.base / "other"
        self.git("clone", "--quiet", "--branch", "main", str(self.manifests), str(other), cwd=self.base)
        (other / "NOTES.md").write_text("someone else's change\n", encoding="utf-8")
        self.git("add", "NOTES.md", cwd=other)
        self.git("commit", "--quiet", "-m", "someone else", cwd=other)
        bin_dir = self.base / "bin"
        bin_dir.mkdir()
        (bin_dir / "git").write_text(
            "#!/bin/sh\n"
            'for a in "$@"; do\n'
            '  if [ "$a" = push ] && [ ! -e "$RACE_MARKER" ]; then\n'
            '    touch "$RACE_MARKER"; "$REAL_GIT" -C "$RACE_CLONE" push --quiet origin HEAD:main || exit 9\n'
            "  fi\n"
            "done\n"
            'exec "$REAL_GIT" "$@"\n',
            encoding="utf-8",
        )
        (bin_dir / "git").chmod(0o755)
        second = self.commit("second")
        done = self.publish(
            "dev", DEV, second, "--forward-only",
            PATH=f"{bin_dir}{os.pathsep}{self.env['PATH']}", REAL_GIT=GIT,
            RACE_MARKER=str(self.base / "raced"), RACE_CLONE=str(other),
        )
        self.ok(done)
        self.assertTrue((self.base / "raced").exists(), "the race did not happen")
        self.assertIn("push refused", done.stderr)
        # Both changes are on main: the other commit, then the script's on top of it.
        self.assertEqual(self.show("NOTES.md"), "someone else's change\n")
        self.assertEqual(self.m("log", "-1", "--format=%s", "main^"), "someone else")
        self.assertEqual(self.show(DEV_OVERLAY).count(f"  newTag: sha-{second}\n"), 2)

    def test_forward_only_never_goes_back_and_promotion_may(self) -> None:
        older = self.commit("older")
        newer = self.commit("newer")
        self.ok(self.publish("dev", DEV, newer, "--forward-only"))
        pushed = self.m("rev-parse", "main")
        done = self.publish("dev", DEV, older, "--forward-only")
        self.ok(done)
        self.assertIn("nothing to do", done.stdout)
        self.assertEqual(self.m("rev-parse", "main"), pushed)
        self.ok(self.publish("dev", DEV, older))
        self.assertIn(f"newTag: sha-{older}", self.show(DEV_OVERLAY))

    def test_the_tree_never_goes_back(self) -> None:
        older = self.commit("older")
        newer = self.commit("newer", change="deploy/k8s/base/kustomization.yaml")
        self.ok(self.publish("dev", DEV, newer, "--forward-only"))
        # A run from a checkout of the older commit (a late run) sets its tags, keeps the tree.
        self.git("checkout", "--quiet", older)
        done = self.publish("prod", PROD, older)
        self.ok(done)
        self.assertIn("only the tags change", done.stdout)
        self.assertEqual(self.show("SOURCE_COMMIT"), newer + "\n")
        self.assertIn("# newer\n", self.show("deploy/k8s/base/kustomization.yaml"))
        self.assertEqual(self.show(PROD_OVERLAY).count(f"  newTag: sha-{older}\n"), 2)
        self.assertIn("Manifests: unchanged.", self.m("log", "-1", "--format=%B", "main"))

    def test_tags_only_leaves_the_tree_as_dev_published_it(self) -> None:
        first = self.commit("first")
        self.ok(self.publish("dev", DEV, first, "--forward-only"))
        pushed = self.m("rev-parse", "main")
        second = self.commit("a change not yet in dev", change="deploy/k8s/base/kustomization.yaml")
        self.ok(self.publish("prod", PROD, first, "--tags-only"))
        self.assertEqual(self.m("diff", "--name-only", pushed, "main"), PROD_OVERLAY)
        self.assertEqual(self.show(PROD_OVERLAY).count(f"  newTag: sha-{first}\n"), 2)
        self.assertEqual(self.show("SOURCE_COMMIT"), first + "\n")
        self.assertNotEqual(first, second)

    def test_promotion_to_preview_sets_its_tags_and_dev_runs_keep_them(self) -> None:
        # As cd.yml's promote job with environment=preview: preview's overlay alone, on preview's
        # own registry (its terraform-values.env's acr_login_server).
        first = self.commit("first")
        self.ok(self.publish("dev", DEV, first, "--forward-only"))
        pushed = self.m("rev-parse", "main")
        self.assertNotIn(f"sha-{first}", self.show(PREVIEW_OVERLAY))
        done = self.publish("preview", PREVIEW, first, "--tags-only")
        self.ok(done)
        self.assertEqual(self.m("diff", "--name-only", pushed, "main"), PREVIEW_OVERLAY)
        self.assertEqual(self.show(PREVIEW_OVERLAY).count(f"  newTag: sha-{first}\n"), 2)
        self.assertIn(f"deploy(preview): libertum sha-{first}", self.m("log", "-1", "--format=%s", "main"))
        # A tag edited in the source (set-image-tag.py on its preview overlay) never reaches the
        # manifests repository: the dev run keeps the tags the manifests repository has.
        edited = "sha-" + "e" * 40
        for repository in ("libertum", "libertum-backup"):
            subprocess.run(["python3", str(SET_TAG), str(self.source / PREVIEW_OVERLAY), repository, edited],
                           check=True, env=self.env)
        self.git("add", PREVIEW_OVERLAY)
        second = self.commit("a hand edit of preview's tags, and a change", change="deploy/k8s/base/kustomization.yaml")
        self.assertIn(edited, self.git("show", f"HEAD:{PREVIEW_OVERLAY}"))
        self.ok(self.publish("dev", DEV, second, "--forward-only"))
        self.assertEqual(self.show("SOURCE_COMMIT"), second + "\n")
        self.assertEqual(self.show(PREVIEW_OVERLAY).count(f"  newTag: sha-{first}\n"), 2)
        self.assertNotIn(edited, self.show(PREVIEW_OVERLAY))
        self.assertEqual(self.show(DEV_OVERLAY).count(f"  newTag: sha-{second}\n"), 2)
        # The next promotion moves preview on; prod is untouched throughout.
        self.ok(self.publish("preview", PREVIEW, second, "--tags-only"))
        self.assertEqual(self.show(PREVIEW_OVERLAY).count(f"  newTag: sha-{second}\n"), 2)
        self.assertEqual(self.show(PROD_OVERLAY), (self.source / PROD_OVERLAY).read_text(encoding="utf-8"))

    def test_preview_is_not_on_the_dev_registry(self) -> None:
        # Preview pulls from its own registry: a promotion naming dev's (or prod's) is refused.
        first = self.commit("first")
        self.ok(self.publish("dev", DEV, first, "--forward-only"))
        pushed = self.m("rev-parse", "main")
        for registry in (DEV, PROD):
            with self.subTest(registry=registry):
                done = self.publish("preview", registry, first, "--tags-only")
                self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
                self.assertIn(f"renders libertum as '{PREVIEW}/libertum:sha-{first}', not {registry}/", done.stdout)
        self.assertEqual(self.m("rev-parse", "main"), pushed)

    def test_tags_only_needs_the_manifests_published(self) -> None:
        first = self.commit("first")
        done = self.publish("prod", PROD, first, "--tags-only")
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertIn("a dev run publishes the manifests first", done.stderr)
        self.assertEqual(self.m("for-each-ref"), "")

    def test_a_registry_the_overlay_does_not_name_changes_nothing(self) -> None:
        first = self.commit("first")
        self.ok(self.publish("dev", DEV, first))
        pushed = self.m("rev-parse", "main")
        second = self.commit("second")
        done = self.publish("dev", PROD, second)
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertIn(f"not {PROD}/libertum:sha-", done.stdout)
        self.assertEqual(self.m("rev-parse", "main"), pushed)

    def test_refuses_bad_arguments(self) -> None:
        first = self.commit("first")
        for args in (("dev", DEV, first[:7]), ("dev", DEV, first, "--backwards"), ("../dev", DEV, first)):
            with self.subTest(args=args):
                self.assertEqual(self.publish(*args).returncode, 2)
        self.assertEqual(self.m("for-each-ref"), "")

    def test_an_overlay_the_manifests_lack_fails(self) -> None:
        first = self.commit("first")
        done = self.publish("staging", DEV, first)
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertIn("no overlay deploy/k8s/overlays/staging", done.stderr)
        self.assertEqual(self.m("for-each-ref"), "")


class ThisRepository(Base):
    """MANIFESTS_SELF=true: the source's own origin is the manifests repository."""

    def setUp(self) -> None:
        super().setUp()
        self.env["MANIFESTS_URL"] = self.source_origin.as_uri()
        self.env["MANIFESTS_SELF"] = "true"

    def test_only_the_tag_lines_change_and_a_second_run_changes_nothing(self) -> None:
        before = (self.source / DEV_OVERLAY).read_text(encoding="utf-8")
        commit = self.commit("a change")
        done = self.publish("dev", DEV, commit, "--forward-only")
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        origin = str(self.source_origin)
        self.assertEqual(self.git("--git-dir", origin, "rev-parse", "main^"), commit)
        self.assertEqual(self.git("--git-dir", origin, "diff", "--name-only", commit, "main"), DEV_OVERLAY)
        after = self.git("--git-dir", origin, "show", f"main:{DEV_OVERLAY}", strip=False)
        changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
        self.assertEqual(len(before.splitlines()), len(after.splitlines()))
        self.assertEqual([b for _, b in changed], [f"  newTag: sha-{commit}"] * 2)
        self.assertIn(f"deploy(dev): libertum sha-{commit} [skip ci]",
                      self.git("--git-dir", origin, "log", "-1", "--format=%s", "main"))
        pushed = self.git("--git-dir", origin, "rev-parse", "main")
        self.assertEqual(self.publish("dev", DEV, commit, "--forward-only").returncode, 0)
        self.assertEqual(self.git("--git-dir", origin, "rev-parse", "main"), pushed)
        # The source checkout itself is left as it was.
        self.assertEqual(self.git("rev-parse", "HEAD"), commit)
        self.assertEqual(self.git("status", "--porcelain"), "")


REPOSITORY_YAML = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: manifests-repository
  annotations:
    config.kubernetes.io/local-config: "true"
data:
  url: {url}
  # The branch CD pushes to and Argo CD follows.
  revision: main
"""


class ManifestsTarget(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = pathlib.Path(tmp.name)
        # Argo CD's side, as deploy/argocd/base/repository.yaml says it: by default the repository
        # the variable's default names.
        self.argocd("https://github.com/acme/libertum-manifests.git")

    def argocd(self, url: str) -> None:
        (self.tmp / "repository.yaml").write_text(REPOSITORY_YAML.format(url=url), encoding="utf-8")

    def target(self, **env: str) -> tuple[int, dict[str, str], str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "MANIFESTS_"))}
        base.update(GITHUB_REPOSITORY="acme/libertum", GITHUB_REPOSITORY_OWNER="acme",
                    GITHUB_SERVER_URL="https://github.com", REPOSITORY_YAML=str(self.tmp / "repository.yaml"))
        done = subprocess.run(["bash", str(TARGET)], env={**base, **env},
                              capture_output=True, text=True, check=False)
        return done.returncode, dict(line.split("=", 1) for line in done.stdout.splitlines()), done.stderr

    def test_default_is_the_owners_libertum_manifests_through_the_app(self) -> None:
        rc, out, err = self.target()
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, {
            "repository": "acme/libertum-manifests", "owner": "acme", "name": "libertum-manifests",
            "self": "false", "auth": "app", "url": "https://github.com/acme/libertum-manifests.git",
        })

    def test_self_and_the_own_name_mean_this_repository(self) -> None:
        self.argocd("https://github.com/acme/libertum.git")
        for value in ("self", "acme/libertum", "Acme/Libertum"):
            with self.subTest(value=value):
                rc, out, err = self.target(MANIFESTS_REPOSITORY=value)
                self.assertEqual(rc, 0, err)
                self.assertEqual(out["self"], "true")
                self.assertEqual((out["owner"], out["name"]), tuple(out["repository"].split("/")))

    def test_a_deploy_key_uses_ssh(self) -> None:
        self.argocd("https://github.com/ops/k8s.git")
        rc, out, err = self.target(MANIFESTS_REPOSITORY="ops/k8s", MANIFESTS_AUTH="deploy-key")
        self.assertEqual(rc, 0, err)
        self.assertEqual((out["auth"], out["url"], out["self"]), ("deploy-key", "git@github.com:ops/k8s.git", "false"))

    def test_the_same_repository_in_any_form_is_accepted(self) -> None:
        # Argo CD's URL over SSH or https, with or without .git, any case; CD's through the App
        # (https) or a deploy key (SSH).
        for url in ("https://github.com/acme/libertum-manifests.git", "https://github.com/acme/libertum-manifests",
                    "https://github.com/Acme/Libertum-Manifests/", "git@github.com:acme/libertum-manifests.git",
                    "ssh://git@github.com/acme/libertum-manifests.git", '"https://github.com/acme/libertum-manifests.git"'):
            for auth in ("app", "deploy-key"):
                with self.subTest(url=url, auth=auth):
                    self.argocd(url)
                    rc, out, err = self.target(MANIFESTS_AUTH=auth)
                    self.assertEqual(rc, 0, err)
                    self.assertEqual(out["repository"], "acme/libertum-manifests")

    def test_another_repository_than_argo_cds_fails_and_says_so_in_the_summary(self) -> None:
        summary = self.tmp / "summary.md"
        cases = (
            ({}, "https://github.com/acme/other-manifests.git"),            # the variable unset
            ({"MANIFESTS_REPOSITORY": "acme/other-manifests"}, "https://github.com/acme/libertum-manifests.git"),
            ({"MANIFESTS_REPOSITORY": "self"}, "https://github.com/acme/libertum-manifests.git"),
            ({"MANIFESTS_AUTH": "deploy-key"}, "git@github.com:other/libertum-manifests.git"),
            ({}, "https://gitlab.com/acme/libertum-manifests.git"),         # same path, another host
        )
        for env, url in cases:
            with self.subTest(env=env, url=url):
                summary.write_text("", encoding="utf-8")
                self.argocd(url)
                rc, out, err = self.target(GITHUB_STEP_SUMMARY=str(summary), **env)
                self.assertEqual(rc, 1, err)
                self.assertEqual(out, {}, "nothing for $GITHUB_OUTPUT")
                self.assertIn(f"but Argo CD deploys from {url.strip(chr(34))}", err)
                self.assertIn("::error file=", err)
                self.assertIn(f"Argo CD deploys from {url.strip(chr(34))}", summary.read_text(encoding="utf-8"))

    def test_argo_cds_side_must_be_readable(self) -> None:
        (self.tmp / "repository.yaml").unlink()
        rc, _, err = self.target()
        self.assertEqual(rc, 1)
        self.assertIn("cannot tell which repository Argo CD deploys from", err)
        for text in ("data:\n  revision: main\n", REPOSITORY_YAML.format(url="x") + "  url: y\n",
                     REPOSITORY_YAML.format(url="libertum-manifests")):
            with self.subTest(text=text):
                (self.tmp / "repository.yaml").write_text(text, encoding="utf-8")
                self.assertEqual(self.target()[0], 1)

    def test_this_checkouts_repository_yaml_is_read_by_default(self) -> None:
        # The real deploy/argocd/base/repository.yaml: its owner's default repository passes, and
        # another owner's (same variable, unset) fails.
        url = yaml_url(ROOT / "deploy/argocd/base/repository.yaml")
        owner, name = url.removesuffix(".git").split("/")[-2:]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "MANIFESTS_", "REPOSITORY_"))}
        for repository, auth, rc in ((f"{owner}/{name}", "app", 0), (f"{owner}/{name}", "deploy-key", 0),
                                     (f"{owner}-not/{name}", "app", 1)):
            with self.subTest(repository=repository, auth=auth):
                done = subprocess.run(
                    ["bash", str(TARGET)], capture_output=True, text=True, check=False,
                    env={**env, "GITHUB_REPOSITORY": f"{owner}/libertum", "GITHUB_REPOSITORY_OWNER": owner,
                         "MANIFESTS_REPOSITORY": repository, "MANIFESTS_AUTH": auth},
                )
                self.assertEqual(done.returncode, rc, done.stderr)

    def test_refuses_what_it_does_not_understand(self) -> None:
        for env in ({"MANIFESTS_REPOSITORY": "https://github.com/a/b"}, {"MANIFESTS_REPOSITORY": "a/b;rm"},
                    {"MANIFESTS_AUTH": "password"}):
            with self.subTest(env=env):
                self.assertEqual(self.target(**env)[0], 1)


def yaml_url(path: pathlib.Path) -> str:
    """The `  url:` line of a repository.yaml, without a YAML parser."""
    urls = [line.split(":", 1)[1].strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.startswith("  url:")]
    assert len(urls) == 1, f"{path}: {urls}"
    return urls[0]


class AsDeployKey(unittest.TestCase):
    """The key reaches git through GIT_SSH_COMMAND only, in a private file deleted afterwards, and
    the host keys come from GitHub's API (here a curl on PATH that answers for it)."""

    def test_gives_git_the_key_and_the_host_keys_and_cleans_up(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            bin_dir = pathlib.Path(tmp, "bin")
            bin_dir.mkdir()
            (bin_dir / "curl").write_text(
                '#!/bin/sh\necho "$@" >"$CURL_ARGS"\n'
                'echo \'{"ssh_keys": ["ssh-ed25519 AAAAkey1", "ecdsa-sha2-nistp256 AAAAkey2"]}\'\n',
                encoding="utf-8",
            )
            (bin_dir / "curl").chmod(0o755)
            probe = (
                'key=$(echo "$GIT_SSH_COMMAND" | sed "s/.*-i \\([^ ]*\\) .*/\\1/"); '
                'hosts=$(echo "$GIT_SSH_COMMAND" | sed "s/.*UserKnownHostsFile=\\([^ ]*\\).*/\\1/"); '
                'echo "$key" >"$OUT/key-path"; stat -c %a "$key" >"$OUT/mode"; cat "$key" >"$OUT/key"; '
                'cat "$hosts" >"$OUT/hosts"; echo "$GIT_AUTHOR_EMAIL" >"$OUT/email"; echo "$GIT_SSH_COMMAND" >"$OUT/ssh"'
            )
            env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
            env.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", DEPLOY_KEY="-----KEY-----",
                       OUT=tmp, CURL_ARGS=str(pathlib.Path(tmp, "curl-args")), TMPDIR=tmp)
            done = subprocess.run(["bash", str(DEPLOY_KEY), "sh", "-c", probe], env=env,
                                  capture_output=True, text=True, check=False)
            self.assertEqual(done.returncode, 0, done.stderr)
            read = lambda name: pathlib.Path(tmp, name).read_text(encoding="utf-8")  # noqa: E731
            self.assertEqual(read("key"), "-----KEY-----\n")
            self.assertEqual(read("mode").strip(), "600")
            self.assertEqual(read("hosts"), "github.com ssh-ed25519 AAAAkey1\ngithub.com ecdsa-sha2-nistp256 AAAAkey2\n")
            self.assertIn("StrictHostKeyChecking=yes", read("ssh"))
            self.assertIn("https://api.github.com/meta", read("curl-args"))
            self.assertEqual(read("email").strip(), "41898282+github-actions[bot]@users.noreply.github.com")
            self.assertFalse(pathlib.Path(read("key-path").strip()).exists(), "the key was left behind")
            # Without a key: refused before anything runs.
            env.pop("DEPLOY_KEY")
            done = subprocess.run(["bash", str(DEPLOY_KEY), "true"], env=env,
                                  capture_output=True, text=True, check=False)
            self.assertNotEqual(done.returncode, 0)


if __name__ == "__main__":
    unittest.main()
