#!/usr/bin/env python3
"""Recomputes the ledger's hash chain from its public API, independently of the service.

usage: BEARER_TOKEN=... scripts/verify-ledger.py [BASE_URL]    (default http://127.0.0.1:8080)

BEARER_TOKEN is a bearer token allowed to read the ledger (an auditor's: `libertum token --role
auditor`). Not a LIBERTUM_* name: the product refuses to start with an unknown LIBERTUM_ variable
in its environment, and this one would often be exported in the same shell.

Each entry's hash is SHA-256(previous hash bytes || canonical bytes), the first chaining to 32 zero
bytes; the canonical bytes are compact JSON with keys in the order below and amounts as integers
(docs/ledger.md). Exits 0 and prints the head if every entry checks out, 1 at the first broken one.
"""
import calendar, hashlib, json, os, sys, urllib.request

base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
token = os.environ.get("BEARER_TOKEN") or sys.exit(
    "verify-ledger.py: set BEARER_TOKEN to an auditor's token (`libertum token --role auditor`)")


def unix_nanos(rfc3339: str) -> int:
    # Python's datetime stops at microseconds; the ledger keeps nanoseconds.
    date, clock = rfc3339.rstrip("Z").split("T")
    hms, _, frac = clock.partition(".")
    y, mo, d = map(int, date.split("-"))
    h, mi, s = map(int, hms.split(":"))
    seconds = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    return seconds * 1_000_000_000 + int((frac + "000000000")[:9])


def canonical(e: dict) -> bytes:
    obj = {
        "seq": e["seq"], "at_ns": unix_nanos(e["at"]), "event_id": e["event_id"],
        "event_type": e["event_type"], "subject": e["subject"], "actor": e["actor"],
        "postings": [{"from": p["from"], "to": p["to"], "unit": p["unit"], "amount": int(p["amount"])} for p in e["postings"]],
    }
    if e.get("reverses"):  # only reversing entries name what they reverse
        obj["reverses"] = {"token_id": e["reverses"]["token_id"], "version": e["reverses"]["version"]}
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


prev, expected, cursor = bytes(32), 1, None
while True:
    url = f"{base}/v1/ledger/entries?limit=200" + (f"&cursor={cursor}" if cursor else "")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    page = json.load(urllib.request.urlopen(request))
    for e in page["items"]:
        digest = hashlib.sha256(prev + canonical(e)).digest()
        if e["seq"] != expected or e["prev_hash"] != prev.hex() or e["hash"] != digest.hex():
            print(f"broken at entry {e['seq']}")
            sys.exit(1)
        prev, expected = digest, expected + 1
    cursor = page.get("next_cursor")
    if not cursor:
        break
print(f"chain intact: {expected - 1} entries, head {prev.hex()}")
