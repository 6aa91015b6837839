"""How often python-socketio's clients lose a frame on a websocket to chatd.

The measurement behind the suite's choice of clients (see the docstring of
test_python_client.py): SESSIONS sessions, each on a fresh server, of two
users exchanging the suite's ROUND_TRIPS acked messages each way after the
default polling -> websocket upgrade: the threaded client over wss, the
threaded client over plain ws, the asyncio client over wss. Prints how many
sessions failed for each; the threaded client over wss is the one expected
to (python-engineio issue #461).

Usage: tests/python/.venv/bin/python tests/python/wss_stress.py [SESSIONS]
(default 100; CHATD_BIN as for the suite).
"""

import asyncio
import sys

import test_python_client as suite

suite.TIMEOUT = 3.0  # a lost frame shows as a timeout: keep it short


def failed(run, tls):
    """True if one session on a fresh server fails, however it fails."""
    server = suite.Chatd(tls=tls)
    try:
        run(server)
        return False
    except Exception:  # any failure counts; its kind is not the question
        return True
    finally:
        server.stop()


def main():
    sessions = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    asyncio_chat = lambda server: asyncio.run(suite.chat_over_polling_then_websocket(server))
    for label, tls, run in (
        ("threaded client, wss", True, suite.threaded_chat),
        ("threaded client, ws", False, suite.threaded_chat),
        ("asyncio client, wss", True, asyncio_chat),
    ):
        count = sum(failed(run, tls) for _ in range(sessions))
        print(f"{label}: {count} of {sessions} sessions failed", flush=True)


if __name__ == "__main__":
    main()
