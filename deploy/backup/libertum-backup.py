#!/usr/bin/env python3
"""Libertum's MongoDB backup and restore through Azure Blob Storage.

The services keep one database each, `{LIBERTUM_MONGODB_DATABASE_PREFIX}_{service}`; this tool
dumps all of them into one gzip'd tar laid out like mongodump's directory format
(`dump/<db>/<coll>.bson` + `dump/<db>/<coll>.metadata.json`, plus a `manifest.json` beside
`dump/`), uploads it as `<prefix><UTC timestamp>.tar.gz` with its SHA-256 in the blob's metadata,
prunes backups older than the retention, restores one, or lists them. See README.md beside it.

    libertum-backup.py backup  --mongodb-uri URI --account-url URL --container C [--retention-days N]
    libertum-backup.py restore --mongodb-uri URI --account-url URL --container C --latest [--drop]
    libertum-backup.py list    --account-url URL --container C

Every option has an environment variable (see --help). Logs are JSON lines on stderr; a command's
result (backup's summary, list's table) is on stdout. Exit status 0 on success, 1 on any failure,
2 on a usage error.

Requires Python >= 3.11 (pymongo 4.20 does).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import io
import json
import logging
import os
import re
import sys
import tarfile
import tempfile
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import IO, Any, Iterator

FORMAT = "libertum-mongodb-backup/1"
TIMESTAMP = "%Y%m%dT%H%M%SZ"
# MiB: big enough that a day's backup is a few hundred blocks at most (a blob holds 50,000), small
# enough that the one buffer held in memory does not matter.
DEFAULT_BLOCK_MIB = 8
# Collections up to this size are spooled in memory, bigger ones in --work-dir: tar needs each
# member's size before its bytes.
SPOOL_IN_MEMORY = 16 * 1024 * 1024
RESTORE_BATCH_BYTES = 8 * 1024 * 1024


class Failure(Exception):
    """An expected failure: logged as one clear message, exit status 1."""


# --- logging -------------------------------------------------------------------------------------


class Redactor:
    """Replaces every registered secret in a text; everything logged goes through it, including
    error messages from the drivers, which may quote the URI they were given."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()

    def add(self, secret: str | None) -> None:
        # Very short values would blank out ordinary words; no real password or key is that short.
        if secret and len(secret) >= 4:
            self.secrets.add(secret)
            self.secrets.add(urllib.parse.unquote(secret))
            self.secrets.add(urllib.parse.quote(secret, safe=""))

    def __call__(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


REDACT = Redactor()


def log(level: str, msg: str, **fields: Any) -> None:
    record = {
        "ts": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": level,
        "msg": msg,
        **fields,
    }
    line = json.dumps(record, default=str, ensure_ascii=False)
    sys.stderr.write(REDACT(line) + "\n")
    sys.stderr.flush()


class JsonLogHandler(logging.Handler):
    """Turns the Azure SDK's and pymongo's own warnings into the same JSON lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log(record.levelname.lower(), record.getMessage(), logger=record.name)
        except Exception:  # a log line must never be what fails a backup
            pass


def redact_mongodb_uri(uri: str) -> str:
    """The URI with its password replaced, for messages: the hosts stay, they help."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return "(not a mongodb:// URI)"
    authority_end = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0] or [len(rest)])
    authority, tail = rest[:authority_end], rest[authority_end:]
    userinfo, at, hosts = authority.rpartition("@")
    if at:
        user = userinfo.partition(":")[0]
        authority = f"{user}:***@{hosts}"
    return f"{scheme}://{authority}{tail}"


def register_mongodb_uri(uri: str) -> None:
    rest = uri.partition("://")[2]
    authority_end = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0] or [len(rest)])
    userinfo, at, _ = rest[:authority_end].rpartition("@")
    if at:
        REDACT.add(userinfo.partition(":")[2])
    query = urllib.parse.parse_qs(rest.partition("?")[2])
    for key, values in query.items():
        if "password" in key.lower() or "token" in key.lower():
            for value in values:
                REDACT.add(value)


def register_connection_string(cs: str) -> None:
    for part in cs.split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() in ("accountkey", "sharedaccesssignature"):
            REDACT.add(value.strip())


# --- Azure Blob Storage --------------------------------------------------------------------------


def container_client(args: argparse.Namespace):
    from azure.storage.blob import BlobServiceClient

    if args.account_url and args.connection_string:
        raise Failure(
            "give either --account-url (AZURE_STORAGE_ACCOUNT_URL) or --connection-string "
            "(AZURE_STORAGE_CONNECTION_STRING), not both"
        )
    if args.connection_string:
        register_connection_string(args.connection_string)
        service = BlobServiceClient.from_connection_string(args.connection_string)
        auth = "shared key (connection string)"
    elif args.account_url:
        if "?" in args.account_url:  # a SAS token in the URL is a credential too
            REDACT.add(args.account_url.partition("?")[2])
        from azure.identity import DefaultAzureCredential

        # Workload identity in AKS (the webhook sets AZURE_CLIENT_ID, AZURE_TENANT_ID and
        # AZURE_FEDERATED_TOKEN_FILE), the managed identity on the VM.
        service = BlobServiceClient(args.account_url, credential=DefaultAzureCredential())
        auth = "Entra ID (DefaultAzureCredential)"
    else:
        raise Failure(
            "no storage account: give --account-url (AZURE_STORAGE_ACCOUNT_URL) or "
            "--connection-string (AZURE_STORAGE_CONNECTION_STRING)"
        )
    if not args.container:
        raise Failure("no container: give --container (BACKUP_CONTAINER)")
    log("info", "storage", account=service.account_name, container=args.container, auth=auth)
    return service.get_container_client(args.container)


@dataclass
class Backup:
    name: str
    taken_at: dt.datetime
    size: int | None = None
    tier: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def archive_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(re.escape(prefix) + r"(\d{8}T\d{6}Z)\.tar\.gz")


def sidecar_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(re.escape(prefix) + r"(\d{8}T\d{6}Z)\.manifest\.json")


def sidecar_name(archive_name: str) -> str:
    return archive_name.removesuffix(".tar.gz") + ".manifest.json"


def parse_stamp(stamp: str) -> dt.datetime:
    return dt.datetime.strptime(stamp, TIMESTAMP).replace(tzinfo=dt.timezone.utc)


def list_backups(container, prefix: str) -> tuple[list[Backup], list[Backup]]:
    """The archives and the sidecar manifests under the prefix, oldest first. Names that do not
    match the pattern are not ours and are ignored (never deleted)."""
    archives, sidecars = [], []
    archive_re, sidecar_re = archive_pattern(prefix), sidecar_pattern(prefix)
    for blob in container.list_blobs(name_starts_with=prefix, include=["metadata"]):
        for pattern, into in ((archive_re, archives), (sidecar_re, sidecars)):
            match = pattern.fullmatch(blob.name)
            if match:
                into.append(
                    Backup(
                        name=blob.name,
                        taken_at=parse_stamp(match.group(1)),
                        size=blob.size,
                        tier=str(blob.blob_tier) if blob.blob_tier else None,
                        metadata=dict(blob.metadata or {}),
                    )
                )
    archives.sort(key=lambda b: b.name)
    sidecars.sort(key=lambda b: b.name)
    return archives, sidecars


class BlockUpload(io.RawIOBase):
    """A write-only stream into a block blob: stages a block every `block_size` bytes and commits
    them all at the end, so memory holds one block whatever the backup's size. Until the commit
    nothing is visible under the name; staged blocks of a failed upload are discarded by the
    service after a week."""

    def __init__(self, blob, block_size: int) -> None:
        super().__init__()
        self.blob = blob
        self.block_size = block_size
        self.buffer = bytearray()
        self.blocks: list[str] = []
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.bytes = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        data = bytes(data)
        self.sha256.update(data)
        self.md5.update(data)
        self.bytes += len(data)
        self.buffer += data
        while len(self.buffer) >= self.block_size:
            self._stage(bytes(self.buffer[: self.block_size]))
            del self.buffer[: self.block_size]
        return len(data)

    def _stage(self, chunk: bytes) -> None:
        # Equal-length ids, as the service requires; the SDK base64-encodes them.
        block_id = f"{len(self.blocks):08d}-{uuid.uuid4().hex}"
        self.blob.stage_block(block_id=block_id, data=chunk, length=len(chunk))
        self.blocks.append(block_id)

    def commit(self, metadata: dict[str, str]) -> None:
        from azure.core import MatchConditions
        from azure.storage.blob import BlobBlock, ContentSettings

        if self.buffer:
            self._stage(bytes(self.buffer))
            self.buffer.clear()
        self.blob.commit_block_list(
            [BlobBlock(block_id=b) for b in self.blocks],
            metadata=metadata,
            content_settings=ContentSettings(
                content_type="application/gzip", content_md5=bytearray(self.md5.digest())
            ),
            # Never overwrite an existing backup (two runs in the same second).
            match_condition=MatchConditions.IfMissing,
        )


# --- MongoDB -------------------------------------------------------------------------------------


def mongo_client(uri: str):
    from pymongo import MongoClient

    if not uri:
        raise Failure("no MongoDB URI: give --mongodb-uri (MONGODB_URI) or --mongodb-uri-file (MONGODB_URI_FILE)")
    register_mongodb_uri(uri)
    # Keyword arguments would override the URI's own options: only fill in what it leaves out.
    given = {k.lower() for k in urllib.parse.parse_qs(uri.partition("?")[2])}
    defaults = {"appname": "libertum-backup", "serverSelectionTimeoutMS": 15000, "connectTimeoutMS": 10000}
    client = MongoClient(uri, tz_aware=True, **{k: v for k, v in defaults.items() if k.lower() not in given})
    try:
        hello = client.admin.command("hello")
    except Exception as e:
        raise Failure(f"MongoDB at {redact_mongodb_uri(uri)} did not answer: {e}") from e
    return client, hello


def escape_name(name: str) -> str:
    """A collection name as mongodump spells it in a file name."""
    return name.replace("%", "%25").replace("/", "%2F")


def count_raw_documents(batch: bytes) -> int:
    """Documents in a run of concatenated BSON documents, by their length prefixes."""
    count, offset = 0, 0
    while offset < len(batch):
        if offset + 5 > len(batch):
            raise Failure("truncated BSON from the server")
        length = int.from_bytes(batch[offset : offset + 4], "little")
        if length < 5 or offset + length > len(batch):
            raise Failure("malformed BSON from the server")
        offset += length
        count += 1
    return count


def read_raw_documents(stream: IO[bytes]) -> Iterator[bytes]:
    """The documents of a mongodump .bson file, one by one, as raw bytes."""
    while True:
        head = stream.read(4)
        if not head:
            return
        if len(head) < 4:
            raise Failure("truncated .bson file in the backup")
        length = int.from_bytes(head, "little")
        if length < 5:
            raise Failure("malformed .bson file in the backup")
        body = stream.read(length - 4)
        if len(body) != length - 4:
            raise Failure("truncated .bson file in the backup")
        yield head + body


def choose_consistency(requested: str, hello: dict) -> str:
    """`snapshot` reads every collection of every database at one cluster time, which only a
    replica set or a sharded cluster of MongoDB >= 5.0 offers (the VM's single-node replica set
    rs0 does). A standalone server gets a causally consistent session with majority reads:
    each collection is read consistently with what came before, not at one point in time."""
    replicated = bool(hello.get("setName")) or hello.get("msg") == "isdbgrid"
    supports = replicated and int(hello.get("maxWireVersion", 0)) >= 13
    if requested == "auto":
        return "snapshot" if supports else "causal"
    if requested == "snapshot" and not supports:
        log(
            "warning",
            "snapshot reads requested from a server that does not announce a replica set; "
            "it may refuse them or ignore them",
            set_name=hello.get("setName"),
            max_wire_version=hello.get("maxWireVersion"),
        )
    return requested


# --- backup --------------------------------------------------------------------------------------


def cmd_backup(args: argparse.Namespace) -> int:
    from bson import json_util
    from bson.binary import Binary, UuidRepresentation
    from bson.codec_options import CodecOptions
    from pymongo.errors import OperationFailure
    from pymongo.read_concern import ReadConcern

    if args.retention_days < 0:
        raise Failure("--retention-days must be 0 (keep everything) or more")
    started = time.monotonic()
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    name = f"{args.prefix}{now.strftime(TIMESTAMP)}.tar.gz"

    client, hello = mongo_client(args.mongodb_uri)
    container = container_client(args)
    db_prefix = args.databases_prefix + "_"
    databases = sorted(d for d in client.list_database_names() if d.startswith(db_prefix))
    if not databases:
        raise Failure(
            f"no database named {db_prefix}* on {redact_mongodb_uri(args.mongodb_uri)}: "
            "is --databases-prefix (MONGODB_DATABASES_PREFIX) the services' "
            "LIBERTUM_MONGODB_DATABASE_PREFIX?"
        )
    consistency = choose_consistency(args.consistency, hello)
    log("info", "backup starting", blob=name, databases=databases, consistency=consistency)

    if consistency == "snapshot":
        session = client.start_session(snapshot=True)
        read_concern = None  # the session sets readConcern level snapshot itself
    else:
        session = client.start_session(causal_consistency=True)
        read_concern = ReadConcern("majority")

    upload = BlockUpload(container.get_blob_client(name), args.block_mib * 1024 * 1024)
    gz = gzip.GzipFile(filename="", mode="wb", fileobj=upload, compresslevel=6, mtime=int(now.timestamp()))
    tar = tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT)
    uuid_codec = CodecOptions(uuid_representation=UuidRepresentation.STANDARD)

    def add(path: str, fileobj: IO[bytes], size: int) -> None:
        info = tarfile.TarInfo(path)
        info.size, info.mtime, info.mode = size, int(now.timestamp()), 0o644
        tar.addfile(info, fileobj)

    manifest_dbs = []
    totals = {"databases": 0, "collections": 0, "documents": 0, "bson_bytes": 0}
    skipped = []
    with session:
        for db_name in databases:
            db = client.get_database(db_name, codec_options=uuid_codec)
            # listCollections and listIndexes are not allowed in a snapshot session: the
            # catalogue is read as of now, the documents at the snapshot.
            entries = sorted(db.list_collections(), key=lambda c: c["name"])
            collections = []
            for entry in entries:
                coll_name = entry["name"]
                kind = entry.get("type", "collection")
                if coll_name.startswith("system.") or kind != "collection":
                    skipped.append(f"{db_name}.{coll_name} ({kind})")
                    log("warning", "not backed up: not a plain collection", namespace=f"{db_name}.{coll_name}", type=kind)
                    continue
                coll = db.get_collection(coll_name, read_concern=read_concern) if read_concern else db[coll_name]
                base = f"dump/{db_name}/{escape_name(coll_name)}"
                digest, documents, size = hashlib.sha256(), 0, 0
                with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, dir=args.work_dir) as spool:
                    # Raw batches: the server's bytes go into the archive undecoded, so no type
                    # (Int64, Decimal128, binary subtypes, key order) can be changed on the way.
                    try:
                        for batch in coll.find_raw_batches({}, session=session):
                            documents += count_raw_documents(batch)
                            digest.update(batch)
                            spool.write(batch)
                            size += len(batch)
                    except OperationFailure as e:
                        if e.code == 239:  # SnapshotTooOld
                            raise Failure(
                                f"reading {db_name}.{coll_name}: the snapshot the backup started at is "
                                "older than the server keeps (minSnapshotHistoryWindowInSeconds, 300 s "
                                "by default): raise that setting or use --consistency causal"
                            ) from e
                        raise
                    spool.seek(0)
                    add(f"{base}.bson", spool, size)
                indexes = [
                    {k: v for k, v in ix.items() if k != "ns"} for ix in coll.list_indexes()
                ]
                metadata: dict[str, Any] = {
                    "options": entry.get("options", {}),
                    "indexes": indexes,
                    "collectionName": coll_name,
                    "type": "collection",
                }
                info_uuid = (entry.get("info") or {}).get("uuid")
                if isinstance(info_uuid, uuid.UUID):
                    metadata["uuid"] = info_uuid.hex
                elif isinstance(info_uuid, Binary) and info_uuid.subtype == 4:
                    metadata["uuid"] = info_uuid.hex()
                meta_bytes = json_util.dumps(metadata, json_options=json_util.CANONICAL_JSON_OPTIONS).encode()
                add(f"{base}.metadata.json", io.BytesIO(meta_bytes), len(meta_bytes))
                collections.append(
                    {
                        "name": coll_name,
                        "documents": documents,
                        "bytes": size,
                        "sha256": digest.hexdigest(),
                        "indexes": len(indexes),
                        "bson": f"{base}.bson",
                        "metadata": f"{base}.metadata.json",
                    }
                )
                totals["collections"] += 1
                totals["documents"] += documents
                totals["bson_bytes"] += size
                log("info", "collection dumped", namespace=f"{db_name}.{coll_name}", documents=documents, bytes=size, indexes=len(indexes))
            manifest_dbs.append({"name": db_name, "collections": collections})
            totals["databases"] += 1
        snapshot_time = getattr(session, "_snapshot_time", None)

    manifest = {
        "format": FORMAT,
        "name": name,
        "created_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "databases_prefix": args.databases_prefix,
        "consistency": {
            "mode": consistency,
            "at_cluster_time": {"t": snapshot_time.time, "i": snapshot_time.inc} if snapshot_time else None,
        },
        "server": {
            "uri": redact_mongodb_uri(args.mongodb_uri),
            "set_name": hello.get("setName"),
            "max_wire_version": hello.get("maxWireVersion"),
        },
        "databases": manifest_dbs,
        "skipped": skipped,
        "totals": totals,
    }
    manifest_bytes = json.dumps(manifest, indent=2).encode()
    add("manifest.json", io.BytesIO(manifest_bytes), len(manifest_bytes))
    tar.close()
    gz.close()
    sha256 = upload.sha256.hexdigest()
    upload.commit(
        {
            "format": FORMAT,
            "sha256": sha256,
            "databases": str(totals["databases"]),
            "collections": str(totals["collections"]),
            "documents": str(totals["documents"]),
            "consistency": consistency,
        }
    )
    # Read back what the service holds before trusting it enough to prune older backups.
    props = container.get_blob_client(name).get_blob_properties()
    if props.size != upload.bytes or (props.metadata or {}).get("sha256") != sha256:
        raise Failure(
            f"uploaded {name} but the service reports {props.size} bytes / sha256 "
            f"{(props.metadata or {}).get('sha256')}, expected {upload.bytes} / {sha256}; "
            "older backups were not pruned"
        )
    # The names carry this machine's clock, and pruning compares them with it: a clock far off
    # (the storage service's is the reference) would date the new backup wrongly and could
    # prune every real one.
    skew = abs((props.last_modified - now).total_seconds()) if props.last_modified else 0
    if skew > 3600:
        raise Failure(
            f"uploaded {name}, but this machine's clock is {skew:.0f} s away from the storage "
            "service's; older backups were not pruned"
        )
    manifest["archive"] = {"bytes": upload.bytes, "sha256": sha256}
    container.get_blob_client(sidecar_name(name)).upload_blob(
        json.dumps(manifest, indent=2).encode(),
        overwrite=False,
        metadata={"format": FORMAT, "archive": name, "sha256": sha256},
    )
    log("info", "backup uploaded", blob=name, bytes=upload.bytes, sha256=sha256, blocks=len(upload.blocks), **totals)

    deleted, failed = prune(container, args.prefix, args.retention_days, keep=name, now=now)
    result = {
        "blob": name,
        "bytes": upload.bytes,
        "sha256": sha256,
        "consistency": consistency,
        **totals,
        "pruned": deleted,
        "seconds": round(time.monotonic() - started, 3),
    }
    print(json.dumps(result))
    if failed:
        raise Failure(f"backup {name} is uploaded but pruning failed for: {', '.join(failed)}")
    log("info", "backup done", **result)
    return 0


def prune(container, prefix: str, retention_days: int, keep: str, now: dt.datetime) -> tuple[list[str], list[str]]:
    """Deletes the archives (and their manifests) whose name's timestamp is older than the
    retention. Runs only after a verified upload; never touches `keep`, nor a name it does not
    recognise."""
    if retention_days == 0:
        log("info", "retention disabled: nothing pruned")
        return [], []
    cutoff = now - dt.timedelta(days=retention_days)
    archives, sidecars = list_backups(container, prefix)
    if keep not in {a.name for a in archives}:
        raise Failure(f"{keep} is not listed after its upload; nothing pruned")
    doomed = [a.name for a in archives if a.taken_at < cutoff and a.name != keep]
    doomed += [s.name for s in sidecars if s.taken_at < cutoff and s.name != sidecar_name(keep)]
    deleted, failed = [], []
    for blob_name in doomed:
        try:
            container.delete_blob(blob_name, delete_snapshots="include")
            deleted.append(blob_name)
            log("info", "pruned", blob=blob_name, older_than_days=retention_days)
        except Exception as e:
            failed.append(blob_name)
            log("error", "could not prune", blob=blob_name, error=str(e))
    return deleted, failed


# --- restore -------------------------------------------------------------------------------------


def cmd_restore(args: argparse.Namespace) -> int:
    from bson import json_util
    from bson.codec_options import CodecOptions
    from bson.raw_bson import RawBSONDocument
    from bson.son import SON

    if args.batch_size < 1:
        raise Failure("--batch-size must be at least 1")
    container = container_client(args)
    if args.latest:
        archives, _ = list_backups(container, args.prefix)
        if not archives:
            raise Failure(f"no backup under {args.container}/{args.prefix}")
        blob_name = archives[-1].name
    elif args.blob:
        blob_name = args.blob
    else:
        raise Failure("say which backup: --blob NAME (RESTORE_BLOB) or --latest")
    blob = container.get_blob_client(blob_name)
    try:
        props = blob.get_blob_properties()
    except Exception as e:
        raise Failure(f"cannot read {args.container}/{blob_name}: {e}") from e
    tier = str(props.blob_tier or "")
    if tier.lower() == "archive":
        raise Failure(
            f"{blob_name} is in the Archive tier: rehydrate it first (az storage blob set-tier "
            "--tier Cool --rehydrate-priority High), which takes hours"
        )
    expected = (props.metadata or {}).get("sha256")
    if not expected:
        raise Failure(f"{blob_name} has no sha256 metadata: not a backup this tool wrote")
    log("info", "restore starting", blob=blob_name, bytes=props.size, drop=args.drop, target_prefix=args.target_prefix)

    with tempfile.TemporaryFile(dir=args.work_dir) as archive:
        digest, size = hashlib.sha256(), 0
        for chunk in blob.download_blob(max_concurrency=2).chunks():
            digest.update(chunk)
            archive.write(chunk)
            size += len(chunk)
        if digest.hexdigest() != expected or size != props.size:
            raise Failure(
                f"{blob_name} is corrupt: sha256 {digest.hexdigest()} ({size} bytes), its "
                f"metadata says {expected} ({props.size} bytes); nothing was restored"
            )
        log("info", "downloaded and verified", blob=blob_name, bytes=size, sha256=expected)
        archive.seek(0)
        try:
            tar = tarfile.open(fileobj=archive, mode="r:gz")
            manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        except (tarfile.TarError, KeyError, OSError, ValueError) as e:
            raise Failure(f"{blob_name} is not a readable backup archive: {e}") from e
        if manifest.get("format") != FORMAT:
            raise Failure(f"{blob_name} has format {manifest.get('format')!r}, this tool reads {FORMAT}")

        source_prefix = manifest["databases_prefix"] + "_"
        wanted = set(args.database or [])
        plan = []
        for entry in manifest["databases"]:
            if wanted and entry["name"] not in wanted:
                continue
            target = entry["name"]
            if args.target_prefix:
                target = args.target_prefix + "_" + entry["name"][len(source_prefix):]
            plan.append((entry, target))
        missing = wanted - {e["name"] for e, _ in plan}
        if missing:
            raise Failure(f"not in {blob_name}: {', '.join(sorted(missing))}")

        client, _ = mongo_client(args.mongodb_uri)
        raw = CodecOptions(document_class=RawBSONDocument)
        # Refuse before writing anything, so that a refusal leaves the server untouched.
        occupied = []
        for entry, target in plan:
            db = client[target]
            for coll in entry["collections"]:
                if db[coll["name"]].find_one({}, projection={"_id": 1}) is not None:
                    occupied.append(f"{target}.{coll['name']}")
        if occupied and not args.drop:
            raise Failure(
                "refusing to restore into non-empty collections (use --drop to replace them): "
                + ", ".join(occupied)
            )

        restored = 0
        for entry, target in plan:
            db = client.get_database(target, codec_options=raw)
            for coll in entry["collections"]:
                ns = f"{target}.{coll['name']}"
                if args.drop:
                    db.drop_collection(coll["name"])
                metadata = json_util.loads(
                    tar.extractfile(coll["metadata"]).read(),  # type: ignore[union-attr]
                    json_options=json_util.CANONICAL_JSON_OPTIONS.with_options(document_class=SON),
                )
                options = metadata.get("options") or {}
                if options and coll["name"] not in db.list_collection_names():
                    db.command(SON([("create", coll["name"])] + list(options.items())))
                indexes = [ix for ix in metadata.get("indexes", []) if ix.get("name") != "_id_"]
                if indexes:
                    db.command(SON([("createIndexes", coll["name"]), ("indexes", indexes)]))
                target_coll = db[coll["name"]]
                digest, count = hashlib.sha256(), 0
                batch: list[RawBSONDocument] = []
                batch_bytes = 0
                member = tar.extractfile(coll["bson"])
                if member is None:
                    raise Failure(f"{coll['bson']} is missing from {blob_name}")
                try:
                    for doc in read_raw_documents(member):
                        digest.update(doc)
                        batch.append(RawBSONDocument(doc))
                        batch_bytes += len(doc)
                        if len(batch) >= args.batch_size or batch_bytes >= RESTORE_BATCH_BYTES:
                            target_coll.insert_many(batch, ordered=True)
                            count += len(batch)
                            batch, batch_bytes = [], 0
                    if batch:
                        target_coll.insert_many(batch, ordered=True)
                        count += len(batch)
                except Failure:
                    raise
                except Exception as e:
                    raise Failure(
                        f"restoring {ns} failed after {count} documents: {e}; the target is "
                        "partly restored, run again with --drop"
                    ) from e
                if digest.hexdigest() != coll["sha256"] or count != coll["documents"]:
                    raise Failure(
                        f"{ns}: restored {count} documents (sha256 {digest.hexdigest()}), the "
                        f"manifest says {coll['documents']} ({coll['sha256']})"
                    )
                on_server = target_coll.count_documents({})
                if on_server != count:
                    raise Failure(f"{ns}: inserted {count} documents but the server counts {on_server}")
                restored += count
                log("info", "collection restored", namespace=ns, documents=count, indexes=len(indexes))
        tar.close()
    result = {
        "blob": blob_name,
        "databases": [t for _, t in plan],
        "documents": restored,
        "backup_taken_at": manifest.get("created_at"),
        "consistency": manifest.get("consistency", {}).get("mode"),
    }
    print(json.dumps(result))
    log("info", "restore done", **result)
    return 0


# --- list ----------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    container = container_client(args)
    archives, _ = list_backups(container, args.prefix)
    if args.json:
        for a in archives:
            print(json.dumps({
                "blob": a.name,
                "taken_at": a.taken_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "bytes": a.size,
                "tier": a.tier,
                "documents": a.metadata.get("documents"),
                "sha256": a.metadata.get("sha256"),
            }))
        return 0
    print(f"{'BLOB':<48} {'TAKEN AT (UTC)':<20} {'SIZE':>12} {'TIER':<8} {'DOCUMENTS':>10}")
    for a in archives:
        print(
            f"{a.name:<48} {a.taken_at.strftime('%Y-%m-%d %H:%M:%S'):<20} {a.size or 0:>12} "
            f"{a.tier or '-':<8} {a.metadata.get('documents', '-'):>10}"
        )
    log("info", "listed", container=args.container, prefix=args.prefix, backups=len(archives))
    return 0


# --- command line --------------------------------------------------------------------------------


def env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def env_int(name: str, default: int) -> int:
    value = env(name)
    try:
        return int(value) if value is not None else default
    except ValueError:
        raise SystemExit(f"{name} must be a whole number, not {value!r}")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="libertum-backup",
        description="Back up Libertum's MongoDB databases to Azure Blob Storage, restore or list them.",
    )
    sub = top.add_subparsers(dest="command", required=True)

    def storage(p: argparse.ArgumentParser) -> None:
        p.add_argument("--account-url", default=env("AZURE_STORAGE_ACCOUNT_URL"),
                       help="https://ACCOUNT.blob.core.windows.net, authenticated with Entra ID "
                            "(workload or managed identity) [AZURE_STORAGE_ACCOUNT_URL]")
        p.add_argument("--connection-string", default=env("AZURE_STORAGE_CONNECTION_STRING"),
                       help="shared-key connection string, for Azurite [AZURE_STORAGE_CONNECTION_STRING]")
        p.add_argument("--container", default=env("BACKUP_CONTAINER"), help="blob container [BACKUP_CONTAINER]")
        p.add_argument("--prefix", default=env("BACKUP_PREFIX", "mongodb/"),
                       help="blob name prefix [BACKUP_PREFIX, default mongodb/]")

    def mongo(p: argparse.ArgumentParser) -> None:
        p.add_argument("--mongodb-uri", default=env("MONGODB_URI"), help="mongodb:// URI [MONGODB_URI]")
        p.add_argument("--mongodb-uri-file", default=env("MONGODB_URI_FILE"),
                       help="a file holding the URI, e.g. the Key Vault secret the CSI driver mounts "
                            "[MONGODB_URI_FILE]")
        p.add_argument("--work-dir", default=env("BACKUP_WORK_DIR", tempfile.gettempdir()),
                       help="scratch space for big collections and downloads [BACKUP_WORK_DIR, default $TMPDIR]")

    b = sub.add_parser("backup", help="dump the databases, upload, prune old backups")
    mongo(b)
    storage(b)
    b.add_argument("--databases-prefix", default=env("MONGODB_DATABASES_PREFIX", "libertum"),
                   help="back up the databases named PREFIX_* (the services' "
                        "LIBERTUM_MONGODB_DATABASE_PREFIX) [MONGODB_DATABASES_PREFIX, default libertum]")
    b.add_argument("--retention-days", type=int, default=env_int("BACKUP_RETENTION_DAYS", 35),
                   help="delete backups older than this after a successful upload; 0 keeps all "
                        "[BACKUP_RETENTION_DAYS, default 35]")
    b.add_argument("--consistency", choices=["auto", "snapshot", "causal"],
                   default=env("BACKUP_CONSISTENCY", "auto"),
                   help="auto: snapshot on a replica set, causal otherwise [BACKUP_CONSISTENCY, default auto]")
    b.add_argument("--block-mib", type=int, default=env_int("BACKUP_BLOCK_MIB", DEFAULT_BLOCK_MIB),
                   help=f"upload block size in MiB [BACKUP_BLOCK_MIB, default {DEFAULT_BLOCK_MIB}]")
    b.set_defaults(func=cmd_backup)

    r = sub.add_parser("restore", help="download a backup, verify it and restore it")
    mongo(r)
    storage(r)
    which = r.add_mutually_exclusive_group()
    which.add_argument("--blob", default=env("RESTORE_BLOB"), help="the backup's blob name [RESTORE_BLOB]")
    which.add_argument("--latest", action="store_true", default=env("RESTORE_LATEST") == "true",
                       help="the newest backup under the prefix [RESTORE_LATEST=true]")
    r.add_argument("--drop", action="store_true", default=env("RESTORE_DROP") == "true",
                   help="drop each target collection first instead of refusing a non-empty one [RESTORE_DROP=true]")
    r.add_argument("--target-prefix", default=env("RESTORE_TARGET_PREFIX"),
                   help="restore PREFIX_x as TARGET_x, e.g. to inspect a backup beside the live data "
                        "[RESTORE_TARGET_PREFIX]")
    r.add_argument("--database", action="append",
                   help="restore only this database (as named in the backup); repeatable")
    r.add_argument("--batch-size", type=int, default=env_int("RESTORE_BATCH_SIZE", 1000),
                   help="documents per insert_many [RESTORE_BATCH_SIZE, default 1000]")
    r.set_defaults(func=cmd_restore)

    ls = sub.add_parser("list", help="list the backups with their size and time")
    storage(ls)
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=cmd_list)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    root = logging.getLogger()
    root.handlers[:] = [JsonLogHandler()]
    root.setLevel(logging.WARNING)
    try:
        if getattr(args, "mongodb_uri_file", None):
            if args.mongodb_uri:
                raise Failure("give either --mongodb-uri (MONGODB_URI) or --mongodb-uri-file (MONGODB_URI_FILE), not both")
            try:
                with open(args.mongodb_uri_file, encoding="utf-8") as f:
                    args.mongodb_uri = f.read().strip()
            except OSError as e:
                raise Failure(f"cannot read the MongoDB URI from {args.mongodb_uri_file}: {e.strerror}") from e
        return args.func(args)
    except Failure as e:
        log("error", f"{args.command} failed: {e}")
    except KeyboardInterrupt:
        log("error", f"{args.command} interrupted")
    except Exception as e:  # the drivers' errors: one line, redacted, with the type for searching
        log("error", f"{args.command} failed: {type(e).__name__}: {e}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
