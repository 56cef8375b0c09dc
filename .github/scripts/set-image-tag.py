#!/usr/bin/env python3
"""CD's edit of an overlay's kustomization.yaml: the tag of one image, and nothing else.

`kustomize edit set image` would do it, but it re-serialises the whole file (reorders fields and
moves or drops comments: kubernetes-sigs/kustomize#4481), and the overlays explain themselves in
their comments. This rewrites only the `newTag:` value of the `images:` entries whose target
repository (the last path segment of `newName`, or of `name` without one) is REPOSITORY, and
adds `newTag:` to such an entry that has none.

    set-image-tag.py FILE REPOSITORY        prints the entries' current tag (empty if none)
    set-image-tag.py FILE REPOSITORY TAG    sets it; exit 3 when FILE has no such entry

Exit 1 on anything it does not understand, so that CD stops rather than commit a broken overlay.
"""

from __future__ import annotations

import re
import sys

IMAGES = re.compile(r"^images:\s*(#.*)?$")
TOP_LEVEL = re.compile(r"^[A-Za-z_][\w-]*:")
ITEM = re.compile(r"^(?P<indent>\s*)-\s+(?P<rest>\S.*)$")
KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_]\w*):\s*(?P<value>[^#\s]*)\s*(#.*)?$")
NEW_TAG = re.compile(r"newTag:[ \t]*[^#\s]*")
VALID_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def fail(message: str) -> None:
    print(f"set-image-tag: {message}", file=sys.stderr)
    sys.exit(1)


def entries(lines: list[str]) -> list[dict]:
    """The `images:` entries, each as {"indent": its keys' indentation, "keys": {key: (line, value)}}."""
    start = next((i for i, line in enumerate(lines) if IMAGES.match(line)), None)
    if start is None:
        return []
    found: list[dict] = []
    for i in range(start + 1, len(lines)):
        line = lines[i].rstrip("\n")
        if TOP_LEVEL.match(line):
            break
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        item = ITEM.match(line)
        if item:
            # `- name: x`: the entry's first key sits on the item's own line, two columns in.
            line = item["indent"] + "  " + item["rest"]
        key = KEY.match(line)
        if key is None:
            fail(f"line {i + 1}: not a plain `key: value` line under images: {line.strip()!r}")
        if item:
            found.append({"indent": key["indent"], "keys": {}})
        elif not found or key["indent"] != found[-1]["indent"]:
            fail(f"line {i + 1}: unexpected indentation under images:")
        found[-1]["keys"][key["key"]] = (i, key["value"].strip("'\""))
    return found


def repository(entry: dict) -> str:
    target = entry["keys"].get("newName") or entry["keys"].get("name")
    if target is None:
        fail("an images: entry has neither name nor newName")
    return target[1].rsplit("/", 1)[-1]


def mine(lines: list[str], repo: str) -> list[dict]:
    return [e for e in entries(lines) if repository(e) == repo]


def set_tag(lines: list[str], repo: str, tag: str) -> bool:
    """Sets the tag in every entry for repo, one at a time (an insertion moves later lines)."""
    while True:
        found = mine(lines, repo)
        if not found:
            return False
        todo = [e for e in found if e["keys"].get("newTag", (0, None))[1] != tag]
        if not todo:
            return True
        entry = todo[0]
        if "newTag" in entry["keys"]:
            n = entry["keys"]["newTag"][0]
            lines[n] = NEW_TAG.sub(f"newTag: {tag}", lines[n], count=1)
        else:
            last = max(n for n, _ in entry["keys"].values())
            lines.insert(last + 1, f"{entry['indent']}newTag: {tag}\n")


def main() -> None:
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    path, repo = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    if len(sys.argv) == 3:
        tags = {e["keys"]["newTag"][1] for e in mine(lines, repo) if "newTag" in e["keys"]}
        if len(tags) > 1:
            fail(f"{path}: {repo} has several tags: {sorted(tags)}")
        print(tags.pop() if tags else "")
        return
    tag = sys.argv[3]
    if not VALID_TAG.match(tag):
        fail(f"not a valid image tag: {tag!r}")
    if not set_tag(lines, repo, tag):
        print(f"set-image-tag: {path} has no images: entry for {repo}", file=sys.stderr)
        sys.exit(3)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)


if __name__ == "__main__":
    main()
