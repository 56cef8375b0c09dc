#!/usr/bin/env python3
"""End-to-end test of libertum-backup.py: a real backup to Azure Blob Storage (Azurite) of a
MongoDB-wire server (nx-27017), a restore after dropping everything, and the failure paths
(corrupt blob, non-empty target, retention, failed backup, no password in the logs).

    $STACK_TOOLS_DIR/deploy/bin/python deploy/backup/test_backup.py [--tool PATH] [--keep]

Plain Python, no pytest: exits 0 and prints a summary, or exits 1 at the first failed check with
what differed. --tool runs another copy of the tool (to see this test fail on a broken one);
--keep leaves the scratch directory (server logs, the downloaded archive) for a post-mortem.

nx-27017 is a MongoDB-wire server over SQLite, not MongoDB: it cannot store Decimal128,
Timestamp or Regex values, reads a small Int64 back as Int32 and a UUID (binary subtype 4) as
subtype 0, ignores index names (it names them idx_<coll>_<fields>), directions and `sparse`, is
a standalone server (no replica set, so the tool's auto mode picks causal reads rather than a
snapshot) and accepts but ignores read concerns. The test therefore probes which values the
server keeps exactly, seeds only those (and says which it left out), and compares what the
server returns before the backup with what it returns after the restore, byte for byte. Against
a real MongoDB every probed type is kept and seeded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOOLS = Path(os.environ.get("STACK_TOOLS_DIR", Path.home() / ".cache" / "libertum-tools"))
NX = Path(os.environ.get("NX_27017", TOOLS / "nx" / "bin" / "nx-27017"))
AZURITE = Path(os.environ.get("AZURITE_BLOB", TOOLS / "npm" / "node_modules" / ".bin" / "azurite-blob"))
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONTAINER = "mongodb-backups"
PREFIX = "mongodb/"
DATABASES = ["libertum_assets", "libertum_ledger", "libertum_tokens"]
# Not backed up: another application's database, and one that starts with "libertum" without the
# "_" that the services' names have.
OTHERS = ["otherapp", "libertumarchive"]
PASSWORD = "S3cret-Passw0rd-never-logged"

try:
    import bson
    from azure.storage.blob import BlobServiceClient, ContentSettings
    from bson import Binary, Decimal128, Int64, ObjectId, Regex, Timestamp, json_util
    from bson.codec_options import CodecOptions
    from bson.raw_bson import RawBSONDocument
    from bson.son import SON
    from pymongo import ASCENDING, MongoClient
    from pymongo.errors import BulkWriteError, DuplicateKeyError
except ImportError as e:
    sys.exit(f"FAIL: {e}: run with the tools' Python ($STACK_TOOLS_DIR/deploy/bin/python), which has "
             "deploy/backup/requirements.txt installed")

RAW = CodecOptions(document_class=RawBSONDocument)


class TestFailure(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise TestFailure(message)


def free_ports(n: int) -> list[int]:
    """n distinct free ports: the sockets stay bound until all are picked, so the kernel cannot
    hand out the same one twice."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(what: str, probe, seconds: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            probe()
            return
        except Exception as e:  # not up yet
            last = e
            time.sleep(0.3)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    state = f"exited with {proc.returncode}" if proc.poll() is not None else f"did not come up in {seconds:.0f} s"
    raise TestFailure(f"{what} {state}: {last}\n{tail}")


# --- what the test stores --------------------------------------------------------------------------


def candidate_values() -> dict[str, object]:
    """Values of every BSON type the services' documents could hold, and the awkward ones."""
    return {
        "Int64 beyond 2^31": Int64(2**40 + 7),
        "negative Int64": Int64(-(2**50) - 3),
        "Int64 that fits in 32 bits": Int64(5),
        "Int32": 2**31 - 1,
        "double": 2.5,
        "double with no fraction": 3.0,
        "Decimal128": Decimal128("12345678901234567890.123456789"),
        "binary subtype 0": Binary(bytes(range(256)), 0),
        "UUID (binary subtype 4)": Binary(uuid.UUID("6f1d8c0e-9c1b-4c4e-8a53-3c0f5f3b7a01").bytes, 4),
        "datetime": dt.datetime(2024, 2, 29, 23, 59, 59, 999000, tzinfo=dt.timezone.utc),
        "ObjectId": ObjectId("65f0c0ffee0000000000beef"),
        "unicode string": "Grüße, 日本語, emoji 🚀, combining é, RTL שלום, nul-free \u2028",
        "nested document": {"a": {"b": {"c": [1, {"d": "e"}]}}, "z": None},
        "array of mixed": [1, "two", 3.0, None, True, {"k": [Int64(2**35)]}, []],
        "empty array": [],
        "empty document": {},
        "boolean": False,
        "null": None,
        "key order": SON([("z", 1), ("a", 2), ("m", 3)]),
        "Timestamp": Timestamp(1_700_000_000, 7),
        "Regex": Regex("^lib(ertum)?$", "i"),
    }


def probe_types(client: MongoClient) -> tuple[dict[str, object], dict[str, str]]:
    """Which candidate values the server gives back exactly (raw BSON equality)."""
    kept, dropped = {}, {}
    coll = client.get_database("typeprobe", codec_options=RAW)["probe"]
    for i, (name, value) in enumerate(candidate_values().items()):
        encoded = bson.encode({"_id": i, "v": value})
        try:
            coll.insert_one(RawBSONDocument(encoded))
            back = coll.find_one({"_id": i})
        except Exception as e:
            dropped[name] = f"refused: {str(e).split(',')[0][:80]}"
            continue
        if back is not None and back.raw == encoded:
            kept[name] = value
        else:
            dropped[name] = "changed on the way back"
    client.drop_database("typeprobe")
    return kept, dropped


def seed(client: MongoClient, kept: dict[str, object]) -> int:
    """Three service databases shaped like the services' (events, idempotency, checkpoints) plus
    documents of every kept type, unique indexes, an empty collection; and the databases that must
    not be backed up."""
    rng = random.Random(20240229)
    total = 0
    values = list(kept.values())
    base = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    for db_name in DATABASES:
        db = client[db_name]
        service = db_name.removeprefix("libertum_")
        events = []
        n = 3000 if service == "assets" else 250  # a few thousand in one: several getMore batches
        for pos in range(1, n + 1):
            events.append({
                "_id": Int64(2**33 + pos),  # an Int64 nx-27017 keeps (positions past 2^31)
                "seq": Int64(2**33 + pos),
                "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "type": f"libertum.{service}.{rng.choice(['created', 'updated', 'transferred'])}",
                "partitionkey": f"{service}-{pos % 17}",
                "body": json.dumps({"id": pos, "data": {"name": f"Ünïcødé {pos} ✓", "amount": str(rng.random())}}),
                "value": values[pos % len(values)] if values else None,
                "tags": [rng.randint(0, 2**31 - 1) for _ in range(pos % 4)],
                "at": base + dt.timedelta(milliseconds=pos * 1001),
            })
        db.events.create_index("seq", unique=True, name="unique_seq")
        db.events.create_index("event_id", unique=True, name="unique_event_id")
        db.events.insert_many(events)
        total += len(events)
        idem = [
            {
                "_id": f"key-{service}-{i}",
                "fingerprint": Binary(hashlib.sha256(f"{service}{i}".encode()).digest(), 0),
                "status": 200 + i % 3,
                "body": {"nested": {"list": [i, str(i), [i * 1.5]]}},
                "created_at": base + dt.timedelta(seconds=i),
                "oid": ObjectId(),
            }
            for i in range(120)
        ]
        db.idempotency.create_index("created_at", name="created_at")
        db.idempotency.insert_many(idem)
        total += len(idem)
        # One document per kept type under its own name, so a lost type shows by name.
        db.types.insert_many([{"_id": f"{service}:{name}", "v": value} for name, value in kept.items()])
        total += len(kept)
        db.checkpoints.insert_one({"_id": "relay", "position": Int64(2**33 + n)})
        total += 1
    client.libertum_ledger.create_collection("reconciliations")  # empty, with a unique index
    client.libertum_ledger.reconciliations.create_index([("token", ASCENDING)], unique=True)
    for other in OTHERS:
        client[other].stuff.insert_many([{"_id": i, "secret": "must not be in the backup"} for i in range(10)])
    return total


def snapshot(client: MongoClient) -> dict:
    """Every collection of the service databases as the server returns it: raw documents by
    _id, and index specs. Keys are the raw BSON of the _id: nx-27017 orders _id as text, so the
    comparison does not rely on the server's order."""
    state = {}
    for db_name in sorted(client.list_database_names()):
        if not db_name.startswith("libertum_"):
            continue
        db = client.get_database(db_name, codec_options=RAW)
        for coll_name in sorted(db.list_collection_names()):
            docs = {}
            for doc in db[coll_name].find():
                key = bson.encode({"_id": doc["_id"]})
                check(key not in docs, f"{db_name}.{coll_name}: duplicate _id {doc['_id']!r}")
                docs[key] = doc.raw
            # Canonical extended JSON keeps the types (an index's 1 and Int64(1) differ).
            indexes = sorted(
                json_util.dumps({k: v for k, v in ix.items() if k != "ns"},
                                json_options=json_util.CANONICAL_JSON_OPTIONS)
                for ix in db[coll_name].list_indexes()
            )
            state[f"{db_name}.{coll_name}"] = {"docs": docs, "indexes": indexes}
    return state


def compare(before: dict, after: dict, label: str) -> int:
    check(sorted(before) == sorted(after),
          f"{label}: collections differ: missing {sorted(set(before) - set(after))}, "
          f"extra {sorted(set(after) - set(before))}")
    compared = 0
    for ns in sorted(before):
        b, a = before[ns], after[ns]
        check(b["indexes"] == a["indexes"], f"{label}: {ns} indexes differ:\n  before {b['indexes']}\n  after  {a['indexes']}")
        missing = set(b["docs"]) - set(a["docs"])
        extra = set(a["docs"]) - set(b["docs"])
        check(not missing and not extra,
              f"{label}: {ns}: {len(missing)} documents missing, {len(extra)} extra "
              f"(e.g. {[bson.decode(k) for k in list(missing or extra)[:3]]})")
        for key, raw in b["docs"].items():
            if a["docs"][key] != raw:
                raise TestFailure(f"{label}: {ns} document {bson.decode(key)} differs:\n  before {bson.decode(raw)}\n  after  {bson.decode(a['docs'][key])}")
        compared += len(b["docs"])
    return compared


# --- the test --------------------------------------------------------------------------------------


class Stack:
    def __init__(self, scratch: Path, tool: Path) -> None:
        self.scratch, self.tool = scratch, tool
        self.procs: list[subprocess.Popen] = []
        self.mongo_port, self.blob_port, self.dead_port = free_ports(3)
        self.uri = f"mongodb://127.0.0.1:{self.mongo_port}/?directConnection=true"
        self.cs = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
                   f"BlobEndpoint=http://127.0.0.1:{self.blob_port}/devstoreaccount1;")

    def start(self) -> None:
        mongo_log, blob_log = self.scratch / "nx-27017.log", self.scratch / "azurite.log"
        (self.scratch / "mongo").mkdir()
        (self.scratch / "blob").mkdir()
        self.procs.append(subprocess.Popen(
            [str(NX), "--data-dir", str(self.scratch / "mongo"), "--port", str(self.mongo_port),
             "--log-file", str(mongo_log), "--pid-file", str(self.scratch / "nx.pid")],
            stdout=(self.scratch / "nx.out").open("wb"), stderr=subprocess.STDOUT))
        self.procs.append(subprocess.Popen(
            [str(AZURITE), "--silent", "--location", str(self.scratch / "blob"), "--blobHost", "127.0.0.1",
             "--blobPort", str(self.blob_port), "--skipApiVersionCheck", "--loose"],
            stdout=blob_log.open("wb"), stderr=subprocess.STDOUT))
        self.client = MongoClient(self.uri, serverSelectionTimeoutMS=2000)
        wait_for("nx-27017", lambda: self.client.admin.command("ping"), 60, self.procs[0], self.scratch / "nx.out")
        self.container = BlobServiceClient.from_connection_string(self.cs).get_container_client(CONTAINER)
        wait_for("azurite", self.container.create_container, 120, self.procs[1], blob_log)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def run(self, *args: str, uri: str | None = None, uri_file: bool = False, expect: int = 0) -> tuple[str, str]:
        cmd = [sys.executable, str(self.tool), *args]
        env = dict(os.environ, MONGODB_URI=uri or self.uri, AZURE_STORAGE_CONNECTION_STRING=self.cs,
                   BACKUP_CONTAINER=CONTAINER, BACKUP_WORK_DIR=str(self.scratch))
        for name in ("AZURE_STORAGE_ACCOUNT_URL", "MONGODB_URI_FILE", "BACKUP_PREFIX", "MONGODB_DATABASES_PREFIX"):
            env.pop(name, None)
        if uri_file:  # as in the pod: the URI in a file the CSI driver mounts
            path = self.scratch / "mongodb-uri"
            path.write_text(env.pop("MONGODB_URI") + "\n")
            env["MONGODB_URI_FILE"] = str(path)
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        for line in p.stderr.splitlines():  # every log line is one JSON object
            try:
                json.loads(line)
            except ValueError:
                raise TestFailure(f"`{' '.join(args)}` logged a line that is not JSON: {line!r}")
        check(AZURITE_KEY not in p.stdout + p.stderr, f"`{' '.join(args)}` printed the storage account key")
        if p.returncode != expect:
            raise TestFailure(f"`{' '.join(args)}` exited {p.returncode}, expected {expect}\n"
                              f"stdout: {p.stdout[-3000:]}\nstderr: {p.stderr[-3000:]}")
        return p.stdout, p.stderr

    def blob_names(self) -> set[str]:
        return {b.name for b in self.container.list_blobs()}


def stamp(when: dt.datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%SZ")


def check_pins() -> None:
    """The VM script repeats the pins (cloud-init installs it without requirements.txt): they
    must not drift from requirements.txt, nor from the tools' list this test runs with."""
    pins = lambda text: sorted(re.findall(r"^\s*[\"']?([A-Za-z0-9_.-]+==[0-9][^\s\"']*)", text, re.M))
    ours = pins((HERE / "requirements.txt").read_text())
    check(len(ours) == 3, f"deploy/backup/requirements.txt pins {ours}")
    vm = pins((HERE / "backup-vm.sh").read_text())
    check(vm == ours, f"backup-vm.sh pins {vm}, requirements.txt pins {ours}")
    tools_req = HERE.parent / "tools" / "requirements.txt"
    if tools_req.exists():
        tools = pins(tools_req.read_text())
        check(set(ours) <= set(tools), f"deploy/tools/requirements.txt lacks {sorted(set(ours) - set(tools))}")


def check_archive(stack: Stack, name: str, before: dict) -> int:
    """The archive as mongorestore would see it: dump/<db>/<coll>.bson holding exactly the
    server's documents, .metadata.json with the indexes, manifest.json, and nothing else."""
    blob = stack.container.get_blob_client(name)
    props = blob.get_blob_properties()
    data = blob.download_blob().readall()
    check(hashlib.sha256(data).hexdigest() == props.metadata["sha256"], f"{name}: sha256 metadata does not match the bytes")
    check(props.content_settings.content_type == "application/gzip", f"{name}: content type {props.content_settings.content_type}")
    (stack.scratch / "backup.tar.gz").write_bytes(data)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        expected = {"manifest.json"}
        for ns in before:
            db_name, coll_name = ns.split(".", 1)
            expected |= {f"dump/{db_name}/{coll_name}.bson", f"dump/{db_name}/{coll_name}.metadata.json"}
        check(set(members) == expected, f"archive members: extra {sorted(set(members) - expected)}, missing {sorted(expected - set(members))}")
        check(all(m.isfile() for m in members.values()), "archive has non-file members")
        manifest = json.load(tar.extractfile("manifest.json"))
        for ns, state in before.items():
            db_name, coll_name = ns.split(".", 1)
            raw = tar.extractfile(f"dump/{db_name}/{coll_name}.bson").read()
            docs = [d.raw for d in bson.decode_file_iter(io.BytesIO(raw), RAW)]
            check(sorted(docs) == sorted(state["docs"].values()),
                  f"{ns}: the .bson in the archive is not the server's documents byte for byte")
            meta = json_util.loads(tar.extractfile(f"dump/{db_name}/{coll_name}.metadata.json").read())
            check(meta["collectionName"] == coll_name and meta["type"] == "collection", f"{ns}: metadata names {meta.get('collectionName')}")
            check(sorted(ix["name"] for ix in meta["indexes"]) == sorted(json.loads(i)["name"] for i in state["indexes"]),
                  f"{ns}: metadata indexes {meta['indexes']}")
            entry = next(c for d in manifest["databases"] if d["name"] == db_name for c in d["collections"] if c["name"] == coll_name)
            check(entry["documents"] == len(docs) and entry["sha256"] == hashlib.sha256(raw).hexdigest(),
                  f"{ns}: manifest says {entry['documents']} documents / {entry['sha256']}")
    sidecar = json.loads(stack.container.get_blob_client(name.removesuffix(".tar.gz") + ".manifest.json").download_blob().readall())
    check(sidecar["archive"]["sha256"] == props.metadata["sha256"], "sidecar manifest names another archive")
    return len(data)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tool", type=Path, default=HERE / "libertum-backup.py")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    opts = ap.parse_args()
    started = time.monotonic()
    try:
        check_pins()
        for binary, what, installer in ((NX, "nx-27017 (the MongoDB-wire test server)", "need_nx27017"),
                                        (AZURITE, "azurite-blob", "need_deploy_tools")):
            check(os.access(binary, os.X_OK), f"{what} is missing at {binary}: scripts/lib.sh's "
                                              f"{installer} installs it under $STACK_TOOLS_DIR")
    except TestFailure as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    scratch = Path(tempfile.mkdtemp(prefix="libertum-backup-test-"))
    stack = Stack(scratch, opts.tool.resolve())
    summary: dict[str, object] = {}
    try:
        stack.start()
        client = stack.client
        kept, dropped = probe_types(client)
        check(len(kept) >= 12, f"the server keeps too few types for a meaningful test: {dropped}")
        seeded = seed(client, kept)
        before = snapshot(client)
        check(sorted({ns.split('.')[0] for ns in before}) == DATABASES, f"seeded databases: {sorted(before)}")
        check(sum(len(s["docs"]) for s in before.values()) == seeded, "the server lost seeded documents")

        # 1. Backup, then check the archive itself.
        out, _ = stack.run("backup", "--retention-days", "35")
        first = json.loads(out.strip().splitlines()[-1])
        check(first["documents"] == seeded and first["databases"] == 3, f"backup reported {first}")
        check(first["consistency"] == ("snapshot" if client.admin.command("hello").get("setName") else "causal"),
              f"consistency {first['consistency']}")
        uploaded = check_archive(stack, first["blob"], before)
        check(uploaded == first["bytes"], f"blob is {uploaded} bytes, the tool reported {first['bytes']}")
        out, _ = stack.run("list")
        check(first["blob"] in out, f"list does not show {first['blob']}:\n{out}")

        # 2. Lose everything, restore the latest, compare.
        for db_name in DATABASES + OTHERS:
            client.drop_database(db_name)
        check(not [d for d in client.list_database_names() if d.startswith("libertum")], "drop left databases")
        stack.run("restore", "--latest")
        compared = compare(before, snapshot(client), "restore --latest")
        check(not set(OTHERS) & set(client.list_database_names()), "restore created databases that were not backed up")
        duplicates = 0
        for db_name in DATABASES:
            first_event = client[db_name].events.find_one({"_id": Int64(2**33 + 1)})
            try:
                client[db_name].events.insert_one({"_id": "dup", "seq": first_event["seq"], "event_id": "fresh"})
                raise TestFailure(f"{db_name}.events: unique index on seq not enforced after the restore")
            except DuplicateKeyError as e:
                check(e.code == 11000, f"duplicate key error code {e.code}")
                duplicates += 1
        try:
            client.libertum_ledger.reconciliations.insert_many([{"token": "t"}, {"token": "t"}])
            raise TestFailure("libertum_ledger.reconciliations: unique index not enforced on the restored empty collection")
        except BulkWriteError as e:
            codes = [w.get("code") for w in e.details.get("writeErrors", [])]
            check(codes == [11000], f"duplicate token refused with codes {codes}")
            client.libertum_ledger.reconciliations.delete_many({})

        # 3. A non-empty target is refused without --drop, and nothing is written.
        client.libertum_tokens.idempotency.insert_one({"_id": "written-after-the-backup"})
        _, err = stack.run("restore", "--latest", expect=1)
        check("refusing to restore into non-empty collections" in err, f"refusal not explained: {err[-500:]}")
        check(client.libertum_tokens.idempotency.count_documents({}) == 121, "a refused restore changed a collection")
        stack.run("restore", "--latest", "--drop", uri_file=True)
        compare(before, snapshot(client), "restore --latest --drop")

        # 4. A restore into other names leaves the originals alone.
        stack.run("restore", "--blob", first["blob"], "--target-prefix", "inspect", "--database", "libertum_assets")
        check(client.inspect_assets.events.count_documents({}) == 3000, "target-prefix restore")
        check(not [d for d in client.list_database_names() if d in ("inspect_tokens", "inspect_ledger")], "--database ignored")
        client.drop_database("inspect_assets")

        # 5. A corrupt blob (one byte flipped, the original's sha256 in its metadata) is refused
        # before anything is written.
        good = stack.container.get_blob_client(first["blob"])
        data = bytearray(good.download_blob().readall())
        data[len(data) // 2] ^= 0x01
        recent = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
        corrupt = f"{PREFIX}{stamp(recent)}.tar.gz"
        stack.container.upload_blob(corrupt, bytes(data), metadata=good.get_blob_properties().metadata,
                                    content_settings=ContentSettings(content_type="application/gzip"))
        _, err = stack.run("restore", "--blob", corrupt, "--target-prefix", "corrupt", expect=1)
        check("is corrupt" in err and "nothing was restored" in err, f"corruption not reported: {err[-500:]}")
        check(not [d for d in client.list_database_names() if d.startswith("corrupt")], "a corrupt backup wrote data")

        # 6. A failed backup (MongoDB unreachable) exits non-zero, never prunes, never logs the password.
        now = dt.datetime.now(dt.timezone.utc)
        old = [f"{PREFIX}{stamp(now - dt.timedelta(days=d))}" for d in (36, 400)]
        for stem in old:
            stack.container.upload_blob(stem + ".tar.gz", b"old", metadata={"sha256": "0" * 64})
            stack.container.upload_blob(stem + ".manifest.json", b"{}")
        foreign = [f"{PREFIX}README.txt", f"other/{stamp(now - dt.timedelta(days=400))}.tar.gz"]
        for name in foreign:
            stack.container.upload_blob(name, b"not ours")
        dead = f"mongodb://backup:{PASSWORD}@127.0.0.1:{stack.dead_port}/?directConnection=true&serverSelectionTimeoutMS=1500"
        out, err = stack.run("backup", "--retention-days", "35", uri=dead, expect=1)
        check(PASSWORD not in out + err, "a failed backup printed the MongoDB password")
        check("did not answer" in err and "backup:***@" in err, f"failure not explained: {err[-500:]}")
        check(all(stem + ".tar.gz" in stack.blob_names() for stem in old), "a failed backup pruned old backups")

        # 7. Retention: the next backup (a snapshot session this time) prunes what is older than
        # 35 days, archives and manifests, and keeps itself, the first backup, the day-old blob and
        # every name it does not recognise.
        while stamp(dt.datetime.now(dt.timezone.utc)) <= first["blob"][len(PREFIX):-len(".tar.gz")]:
            time.sleep(0.2)
        out, _ = stack.run("backup", "--retention-days", "35", "--consistency", "snapshot")
        second = json.loads(out.strip().splitlines()[-1])
        names = stack.blob_names()
        pruned = sorted(s + ext for s in old for ext in (".tar.gz", ".manifest.json"))
        check(sorted(second["pruned"]) == pruned, f"pruned {second['pruned']}, expected {pruned}")
        check(not names & set(pruned), f"still there: {sorted(names & set(pruned))}")
        for kept_name in [first["blob"], second["blob"], corrupt, *foreign,
                          first["blob"].replace(".tar.gz", ".manifest.json")]:
            check(kept_name in names, f"retention deleted {kept_name}")
        check(second["documents"] == seeded, f"second backup has {second['documents']} documents")

        # 8. Retention 0 keeps everything, even ancient backups.
        ancient = f"{PREFIX}{stamp(now - dt.timedelta(days=4000))}.tar.gz"
        stack.container.upload_blob(ancient, b"old")
        while stamp(dt.datetime.now(dt.timezone.utc)) <= second["blob"][len(PREFIX):-len(".tar.gz")]:
            time.sleep(0.2)
        out, _ = stack.run("backup", "--retention-days", "0")
        check(json.loads(out.strip().splitlines()[-1])["pruned"] == [] and ancient in stack.blob_names(), "retention 0 pruned")

        summary = {
            "result": "PASS",
            "documents_compared": compared,
            "documents_per_backup": seeded,
            "collections": len(before),
            "bytes_uploaded_first_backup": uploaded,
            "duplicate_keys_refused": duplicates + 1,
            "types_seeded": sorted(kept),
            "types_the_server_cannot_keep": dropped,
            "seconds": round(time.monotonic() - started, 1),
        }
    except Exception as e:
        if not isinstance(e, TestFailure):
            traceback.print_exc()
        print(f"FAIL: {e}", file=sys.stderr)
        print(f"(scratch directory with the servers' logs: {scratch})", file=sys.stderr)
        opts.keep = True
        return 1
    finally:
        stack.stop()
        if not opts.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
