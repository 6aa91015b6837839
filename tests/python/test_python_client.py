"""chatd with python-socketio, a second independent client implementation.

Starts `chatd run` (TLS with its generated certificate, auth on) on a fresh
data directory, connects two users with python-socketio's default transports
(HTTP long-polling, then the upgrade to websocket), verifying TLS against the
generated certificate, and checks a message with an ack and its delivery to
the peer. Prints `N passed, N failed`; exits non-zero on any failure.

Environment: CHATD_BIN (default <repo>/target/debug/chatd),
CHATD_TEST_TIMEOUT_S (default 10).
"""

import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import requests
import socketio

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHATD = os.environ.get("CHATD_BIN", os.path.join(REPO, "target", "debug", "chatd"))
# A ceiling for waits that take milliseconds, reached only on failure.
TIMEOUT = float(os.environ.get("CHATD_TEST_TIMEOUT_S", "30"))
ROOM = "dm:Dummy-1_Dummy-2"


class Chatd:
    """A `chatd run` process on a temporary data directory."""

    def __init__(self):
        self.data_dir = tempfile.mkdtemp(prefix="chatd-python-test-")
        self.proc = subprocess.Popen(
            [CHATD, "run", "--listen", "127.0.0.1:0", "--data-dir", self.data_dir],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + TIMEOUT
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if line is None:
                raise RuntimeError("chatd exited before listening")
            match = re.fullmatch(r"Listening at (\d+)", line)
            if match:
                self.url = f"https://127.0.0.1:{match.group(1)}"
                break
        self.ca = os.path.join(self.data_dir, "tls", "cert.pem")

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def token(self, user):
        out = subprocess.run(
            [CHATD, "token", user, "--data-dir", self.data_dir],
            check=True, capture_output=True, text=True, timeout=TIMEOUT,
        )
        return out.stdout.strip()

    def http(self):
        """A requests session that trusts the generated certificate."""
        http = requests.Session()
        http.verify = self.ca
        # REQUESTS_CA_BUNDLE (set on many machines) would replace `verify`.
        http.trust_env = False
        return http

    def connect(self, user, peer):
        """A connected client recording every event into per-event queues."""
        client = socketio.Client(http_session=self.http(), reconnection=False)
        events = {name: queue.Queue() for name in ("online", "history", "chat message")}
        for name, q in events.items():
            client.on(name, lambda *args, q=q: q.put(args[0] if args else None))
        client.connect(
            self.url,
            auth={"user": user, "peer": peer, "token": self.token(user)},
            wait_timeout=TIMEOUT,
        )
        return client, events

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def next_event(events, name):
    return events[name].get(timeout=TIMEOUT)


def wait_online(events, expected):
    """Waits for an `online` event with exactly `expected`."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        got = events["online"].get(timeout=max(0.01, deadline - time.monotonic()))
        if got == expected:
            return


def wait_for_transport(client, name):
    """python-engineio upgrades right after connecting and reports no event
    for it, so its transport is checked until it changes."""
    deadline = time.monotonic() + TIMEOUT
    while client.transport() != name:
        if time.monotonic() > deadline:
            raise AssertionError(f"transport is {client.transport()!r}, expected {name!r}")
        time.sleep(0.01)


def test_chat_over_polling_then_websocket(server):
    d1, e1 = server.connect("Dummy-1", "Dummy-2")
    d2, e2 = server.connect("Dummy-2", "Dummy-1")
    try:
        wait_for_transport(d1, "websocket")
        wait_for_transport(d2, "websocket")
        assert next_event(e1, "history") == []
        wait_online(e1, ["Dummy-1", "Dummy-2"])
        wait_online(e2, ["Dummy-1", "Dummy-2"])

        answer = d1.call("chat message", "Hello from python", timeout=TIMEOUT)
        assert answer["ok"] is True, answer
        message = answer["message"]
        assert list(message) == ["roomId", "id", "from", "text", "to", "time", "__v", "ts"]
        assert message["roomId"] == ROOM and message["from"] == "Dummy-1"
        assert message["text"] == "Hello from python"
        assert next_event(e2, "chat message") == message

        reply = d2.call("chat message", "Hi python", timeout=TIMEOUT)
        assert reply["ok"] is True, reply
        assert next_event(e1, "chat message") == reply["message"]

        refused = d1.call("chat message", "", timeout=TIMEOUT)
        assert refused == {"ok": False, "error": "Message is not accepted", "reason": "empty"}, refused
    finally:
        d1.disconnect()
        d2.disconnect()


def test_polling_only(server):
    client = socketio.Client(http_session=server.http(), reconnection=False)
    got = queue.Queue()
    client.on("history", got.put)
    client.connect(
        server.url,
        transports=["polling"],
        auth={"user": "Dummy-3", "peer": "Dummy-1", "token": server.token("Dummy-3")},
        wait_timeout=TIMEOUT,
    )
    try:
        assert client.transport() == "polling"
        assert got.get(timeout=TIMEOUT) == []
        answer = client.call("chat message", "polling only", timeout=TIMEOUT)
        assert answer["ok"] is True and answer["message"]["roomId"] == "dm:Dummy-1_Dummy-3", answer
    finally:
        client.disconnect()


def main():
    tests = [test_chat_over_polling_then_websocket, test_polling_only]
    passed = failed = 0
    server = Chatd()
    try:
        for test in tests:
            try:
                test(server)
                passed += 1
                print(f"ok   {test.__name__}")
            except Exception:  # report every failure, then go on
                failed += 1
                print(f"FAIL {test.__name__}")
                traceback.print_exc()
    finally:
        server.stop()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
