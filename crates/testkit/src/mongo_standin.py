"""nx-27017 0.8.1, with the transaction semantics of MongoDB that the crash tests rely on.

nx-27017 runs every session of a database on one shared SQLite connection, and keeps a
session's transaction open when its client disappears. A service killed with `kill -9` in the
middle of a commit therefore leaves a half-written transaction that every other client reads
(its events without their idempotency records, say) and that is never committed nor rolled back.
MongoDB never shows another client an uncommitted write, and aborts a transaction its client
abandoned. This launcher gives the stand-in that second half: when the last connection that
carried a session's commands closes, the session's open transaction is rolled back, so what the
next process reads is what was committed.

It also keeps one transaction at a time per database. nx-27017 runs a second session's
transaction as a savepoint inside the first one's SQLite transaction, and another session's
plain writes inside it too, so that aborting the first (its client killed, a duplicate key)
silently rolls back what the others were told was committed. MongoDB isolates them: two
transactions writing the same documents conflict, and a plain write to a document a
transaction holds waits for it. So while a session's transaction is open on a database, another
session's transaction or write there waits until it ends (answered with MongoDB's WriteConflict,
112, labelled TransientTransactionError in a transaction, if that takes longer than a
transaction may live); and, as MongoDB's transactionLifetimeLimitSeconds does, a transaction
open longer than LIFETIME seconds (its client paused or gone) is aborted. Reads are not
isolated: another session may still read what an open transaction wrote.

It patches the installed server in memory and then runs its own entry point with the given
arguments; nothing on disk is changed.
"""

import asyncio
import concurrent.futures
import contextvars
import functools
import sys
import threading
import time

from nx_27017 import nx_27017
from nx_27017.handler import NeoSQLiteHandler
from nx_27017.wire_protocol import _extract_session_id

# lsid -> the ids of the connections that carried its commands and are still open.
_carriers: dict[str, set] = {}
_carriers_lock = threading.Lock()


def _note_carrier(msg):
    conn = msg.get("_conn_id") if isinstance(msg, dict) else None
    if conn is None:
        return
    for kind, section in msg.get("sections", ()):
        if kind == "body" and isinstance(section, dict) and section.get("lsid"):
            session = _extract_session_id(section["lsid"])
            if session:
                with _carriers_lock:
                    _carriers.setdefault(session, set()).add(conn)


def _carried(original):
    def handle(self, msg, *args, **kwargs):
        _note_carrier(msg)
        return original(self, msg, *args, **kwargs)

    return handle


# The server runs each request on asyncio's default thread pool (6 threads on 2 cores); with
# writes waiting for a transaction (below), that could leave none for the transaction's own
# next command. A larger pool of its own:
_pool = concurrent.futures.ThreadPoolExecutor(max_workers=64)


async def _to_thread(func, /, *args, **kwargs):
    call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_pool, call)


asyncio.to_thread = _to_thread

# One open transaction per database: db -> (lsid, when it began).
LIFETIME = 5.0
_open_tx: dict[str, tuple[str, float]] = {}
_open_tx_lock = threading.Lock()
_open_tx_changed = threading.Condition(_open_tx_lock)
_WRITES = {"insert", "update", "delete", "findandmodify"}
_handler = None


def _body(msg):
    for kind, section in msg.get("sections", ()) if isinstance(msg, dict) else ():
        if kind == "body" and isinstance(section, dict):
            return section
    return None


def _write_conflict(msg, in_transaction):
    reply = {
        "ok": 0,
        "code": 112,
        "codeName": "WriteConflict",
        "errmsg": "WriteConflict: another transaction is open on this database",
    }
    if in_transaction:
        reply["errorLabels"] = ["TransientTransactionError"]
    return msg.get("request_id", 0), reply


def _admit(msg):
    """None once `msg` may run, or the WriteConflict to answer: another session's transaction
    or write waits while a transaction is open on its database (reads do not), for at most the
    lifetime of a transaction."""
    body = _body(msg)
    if body is None:
        return None
    command = next(iter(body), "").lower()
    session = _extract_session_id(body["lsid"]) if body.get("lsid") else None
    if command in ("committransaction", "aborttransaction"):
        return None
    db = body.get("$db", "")
    in_transaction = "txnNumber" in body and body.get("autocommit") is False
    deadline = time.monotonic() + LIFETIME + 1.0
    with _open_tx_changed:
        while True:
            holder = _open_tx.get(db)
            if holder is None or holder[0] == session:
                break
            if not (in_transaction or command in _WRITES):
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return _write_conflict(msg, in_transaction)
            _open_tx_changed.wait(left)
        if body.get("startTransaction") and holder is None:
            _open_tx[db] = (session, time.monotonic())
    return None


def _ended(msg):
    """Forgets the open transaction a commit or an abort ended."""
    body = _body(msg)
    if body is None:
        return
    command = next(iter(body), "").lower()
    if command not in ("committransaction", "aborttransaction") or not body.get("lsid"):
        return
    _release(_extract_session_id(body["lsid"]))


def _release(session):
    with _open_tx_changed:
        for db, (holder, _) in list(_open_tx.items()):
            if holder == session:
                del _open_tx[db]
        _open_tx_changed.notify_all()


def _guarded(original):
    def handle(self, msg, *args, **kwargs):
        global _handler
        _handler = self
        refused = _admit(msg)
        if refused is not None:
            return refused
        try:
            return original(self, msg, *args, **kwargs)
        finally:
            _ended(msg)

    return handle


def _abort_session(handler, session, why):
    with handler._sessions_lock:
        open_ones = [
            (scope, s)
            for (sid, scope), s in handler._sessions.items()
            if sid == session and s.in_transaction
        ]
    for scope, s in open_ones:
        # Lock order of the server: the database's lock before the sessions' lock.
        with handler._lock_for(scope):
            if s.in_transaction:
                s.abort_transaction()
                print(
                    f"nx-27017 (libertum launcher): rolled back the open transaction of "
                    f"session {session} on {scope!r}: {why}",
                    file=sys.stderr,
                    flush=True,
                )
    _release(session)


def _expire_transactions():
    while True:
        time.sleep(0.5)
        now = time.monotonic()
        with _open_tx_lock:
            expired = [s for s, began in _open_tx.values() if now - began > LIFETIME]
        if _handler is not None:
            for session in expired:
                _abort_session(_handler, session, f"open for more than {LIFETIME:.0f} s")


NeoSQLiteHandler.handle_insert = _guarded(_carried(NeoSQLiteHandler.handle_insert))
NeoSQLiteHandler.handle_command = _guarded(_carried(NeoSQLiteHandler.handle_command))
threading.Thread(target=_expire_transactions, daemon=True).start()

_close = NeoSQLiteHandler.close_streams_for_connection


def _close_and_abort_orphans(self, conn_id):
    _close(self, conn_id)
    orphans = []
    with _carriers_lock:
        for session, conns in list(_carriers.items()):
            conns.discard(conn_id)
            if not conns:
                del _carriers[session]
                orphans.append(session)
    for session in orphans:
        _abort_session(self, session, "its client went away")
        _release(session)


NeoSQLiteHandler.close_streams_for_connection = _close_and_abort_orphans

if __name__ == "__main__":
    sys.argv[0] = "nx-27017"
    sys.exit(nx_27017.main())
