#!/usr/bin/env python3
"""Tests of set-image-tag.py, CD's overlay edit: only the tag changes, comments and layout stay.

    python3 -m unittest discover -s .github/scripts -p 'test_*.py'
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tempfile
import unittest

SCRIPT = pathlib.Path(__file__).with_name("set-image-tag.py")

OVERLAY = """\
# The dev environment. CD rewrites the tags below.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization

resources:
  - ../../base

# The environment's own registry.
images:
- name: libertumacr.azurecr.io/libertum
  newName: libertumdevacr.azurecr.io/libertum
  newTag: sha-0000000
- name: libertumacr.azurecr.io/libertum-backup
  newName: libertumdevacr.azurecr.io/libertum-backup
  newTag: "sha-0000000"  # quoted, with a comment

configMapGenerator:
  - name: libertum-config
    literals:
      - LIBERTUM_LOG=info
"""


class SetImageTag(unittest.TestCase):
    def run_script(self, text: str, *args: str) -> tuple[subprocess.CompletedProcess, str]:
        with tempfile.TemporaryDirectory() as tmp:
            path = pathlib.Path(tmp, "kustomization.yaml")
            path.write_text(text, encoding="utf-8")
            done = subprocess.run(
                [sys.executable, str(SCRIPT), str(path), *args],
                capture_output=True,
                text=True,
                check=False,
            )
            return done, path.read_text(encoding="utf-8")

    def test_changes_only_the_tag_lines(self) -> None:
        done, after = self.run_script(OVERLAY, "libertum", "sha-abc1234")
        self.assertEqual(done.returncode, 0, done.stderr)
        changed = [(a, b) for a, b in zip(OVERLAY.splitlines(), after.splitlines()) if a != b]
        self.assertEqual(changed, [("  newTag: sha-0000000", "  newTag: sha-abc1234")])
        done, after = self.run_script(after, "libertum-backup", "sha-abc1234")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn('  newTag: sha-abc1234  # quoted, with a comment\n', after)
        self.assertEqual(len(after.splitlines()), len(OVERLAY.splitlines()))

    def test_sets_a_full_commit_tag(self) -> None:
        # What CD writes: sha- and all 40 hex digits of the commit, the tag it locks in the registry.
        tag = "sha-" + "0123456789abcdef" * 2 + "01234567"
        done, after = self.run_script(OVERLAY, "libertum", tag)
        self.assertEqual(done.returncode, 0, done.stderr)
        done, after = self.run_script(after, "libertum-backup", tag)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(after.count(f"  newTag: {tag}\n"), 1)
        self.assertEqual(after.count(f"  newTag: {tag}  # quoted, with a comment\n"), 1)
        done, _ = self.run_script(after, "libertum")
        self.assertEqual((done.returncode, done.stdout), (0, tag + "\n"))

    def test_prints_the_current_tag(self) -> None:
        done, _ = self.run_script(OVERLAY, "libertum-backup")
        self.assertEqual((done.returncode, done.stdout), (0, "sha-0000000\n"))

    def test_adds_a_missing_tag_to_an_indented_entry(self) -> None:
        text = "images:\n  # services\n  - name: libertum\n    newName: r.azurecr.io/libertum\nlabels: []\n"
        done, after = self.run_script(text, "libertum", "sha-1")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(
            after,
            "images:\n  # services\n  - name: libertum\n    newName: r.azurecr.io/libertum\n"
            "    newTag: sha-1\nlabels: []\n",
        )

    def test_no_entry_is_exit_3_and_leaves_the_file(self) -> None:
        done, after = self.run_script(OVERLAY, "something-else", "sha-1")
        self.assertEqual(done.returncode, 3)
        self.assertEqual(after, OVERLAY)

    def test_refuses_a_bad_tag(self) -> None:
        for tag in ("sha 1; rm", "-sha", "sha-" + "a" * 125):  # the last is 129 characters
            with self.subTest(tag=tag):
                done, after = self.run_script(OVERLAY, "libertum", tag)
                self.assertEqual(done.returncode, 1)
                self.assertEqual(after, OVERLAY)

    def test_prints_nothing_for_an_entry_without_a_tag_and_refuses_two_tags(self) -> None:
        text = "images:\n- name: libertum\n"
        done, _ = self.run_script(text, "libertum")
        self.assertEqual((done.returncode, done.stdout), (0, "\n"))
        text = "images:\n- name: a/libertum\n  newTag: sha-1\n- name: b/libertum\n  newTag: sha-2\n"
        done, _ = self.run_script(text, "libertum")
        self.assertEqual(done.returncode, 1)

    def test_refuses_what_it_does_not_understand(self) -> None:
        done, _ = self.run_script("images:\n- name: libertum\n  newTag: [a, b]\n", "libertum", "sha-1")
        self.assertEqual(done.returncode, 1)


if __name__ == "__main__":
    unittest.main()
