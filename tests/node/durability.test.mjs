// Durability: an acked message survives a graceful restart and a crash.

import { test, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  startServer,
  cleanup,
  closeSockets,
  once,
  expectOnline,
  sendOk,
  ackWithin,
  fullHistory,
  disconnected,
  assertTsIncreasing,
} from "./harness.mjs";

after(cleanup);
afterEach(closeSockets);

test("acked messages survive SIGTERM and a restart on the same data directory", { timeout: 60000 }, async () => {
  const server = await startServer({ auth: true, args: ["--rate-limit", "0"] });
  const a = await server.connect("Dur-1", "Dur-2");
  const b = await server.connect("Dur-2", "Dur-1");
  await expectOnline(a, ["Dur-1"]);

  const acked = [];
  for (let i = 0; i < 30; i++) acked.push(await sendOk(i % 2 ? b : a, `before restart ${i}`));
  assertTsIncreasing(acked);

  // Graceful stop with clients connected: exit 0, and their connections
  // close as a network drop would, with no Socket.IO DISCONNECT (after one,
  // a stock client never reconnects on its own).
  await server.stop();
  assert.equal(await disconnected(a), "transport close");
  assert.equal(await disconnected(b), "transport close");

  const again = await server.restart();
  if (server.tls) {
    assert.deepEqual(again.ca, server.ca, "the generated certificate (DIR/tls/cert.pem) is kept across restarts");
  }
  const a2 = await again.connect("Dur-1", "Dur-2");
  assert.deepEqual(await once(a2, "history"), acked, "the history on connect holds all 30");
  assert.deepEqual(await fullHistory(a2), acked);

  // New messages go on after the old ones.
  const next = await sendOk(a2, "after restart");
  assert.ok(next.ts > acked[acked.length - 1].ts, "ts keeps increasing across a restart");
  assert.deepEqual(await fullHistory(a2), [...acked, next]);
  await again.stop();
});

test("every acked message survives kill -9 in the middle of a burst", { timeout: 60000 }, async (t) => {
  const server = await startServer({ args: ["--rate-limit", "0"] });
  const a = await server.connect("Crash-1", "Crash-2");
  await once(a, "history");

  const N = 5000;
  const KILL_AFTER = 100;
  const acked = new Map(); // index -> message
  let killed;
  const replies = Array.from({ length: N }, (_, i) =>
    ackWithin(30000, a, "chat message", `crash ${i}`).then(
      (r) => {
        assert.equal(r.ok, true, `ack ${i}: ${JSON.stringify(r)}`);
        acked.set(i, r.message);
        // Crash the server as soon as enough acks came back: mid-burst.
        if (acked.size === KILL_AFTER) killed = server.kill9();
      },
      () => undefined, // no ack: the connection died first
    ),
  );
  await Promise.all(replies); // every ack is settled: acked, or rejected on disconnect
  assert.ok(killed, `the server was killed (only ${acked.size} acks came back)`);
  const { signal } = await killed;
  assert.equal(signal, "SIGKILL");
  assert.ok(acked.size >= KILL_AFTER);
  // Acks already on their way when the kill came still count (they were
  // stored before they were sent); the kill normally lands mid-burst.
  t.diagnostic(`${acked.size} of ${N} messages acked before the crash`);

  const again = await server.restart();
  const r = await again.connect("Crash-2", "Crash-1");
  await once(r, "history");
  const stored = await fullHistory(r);
  assertTsIncreasing(stored, "history after the crash");

  const byText = new Map(stored.map((m) => [m.text, m]));
  for (const [i, m] of acked) {
    assert.deepEqual(byText.get(`crash ${i}`), m, `acked message ${i} is in history after the crash`);
  }
  // Whatever else is there was sent by us, in send order.
  const indices = stored.map((m) => {
    const match = /^crash (\d+)$/.exec(m.text);
    assert.ok(match, `unexpected message ${JSON.stringify(m)}`);
    return Number(match[1]);
  });
  for (let k = 1; k < indices.length; k++) assert.ok(indices[k] > indices[k - 1], "stored in send order");

  // And the restarted server works.
  const w = await again.connect("Crash-1", "Crash-2");
  const m = await sendOk(w, "still here");
  assert.deepEqual(await once(r, "chat message"), m);
  assert.ok(m.ts > stored[stored.length - 1].ts);
  await again.stop();
});
