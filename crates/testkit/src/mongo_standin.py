"""nx-27017 0.8.1, with the transaction semantics of MongoDB that the crash tests rely on.

nx-27017 runs every session of a database on one shared SQLite connection, and keeps a
session's transaction open when its client disappears. A service killed with `kill -9` in the
middle of a commit therefore leaves a half-written transaction that every other client reads
(its events without their idempotency records, say) and that is never committed nor rolled back.
MongoDB never shows another client an uncommitted write, and aborts a transaction its client
abandoned. This launcher gives the stand-in that second half: when the last connection that
carried a session's commands closes, the session's open transaction is rolled back, so what the
next process reads is what was committed.

It patches the installed server in memory and then runs its own entry point with the given
arguments; nothing on disk is changed.
"""

import sys
import threading

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


NeoSQLiteHandler.handle_insert = _carried(NeoSQLiteHandler.handle_insert)
NeoSQLiteHandler.handle_command = _carried(NeoSQLiteHandler.handle_command)

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
        with self._sessions_lock:
            open_ones = [
                (scope, s)
                for (sid, scope), s in self._sessions.items()
                if sid == session and s.in_transaction
            ]
        for scope, s in open_ones:
            # Lock order of the server: the database's lock before the sessions' lock.
            with self._lock_for(scope):
                if s.in_transaction:
                    s.abort_transaction()
                    print(
                        f"nx-27017 (libertum launcher): rolled back the open transaction of "
                        f"session {session} on {scope!r}: its client went away",
                        file=sys.stderr,
                        flush=True,
                    )


NeoSQLiteHandler.close_streams_for_connection = _close_and_abort_orphans

if __name__ == "__main__":
    sys.argv[0] = "nx-27017"
    sys.exit(nx_27017.main())
