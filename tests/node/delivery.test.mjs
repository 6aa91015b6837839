// Delivery: ordering under bursts, several connections of one user, and
// `to` reaching a user connected in another room.

import { describe, test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  startServer,
  cleanup,
  closeSockets,
  once,
  expectOnline,
  sendOk,
  ackWithin,
  collect,
  drain,
  pending,
  close,
  fullHistory,
  assertMessage,
  assertTsIncreasing,
  roomOf,
} from "./harness.mjs";

after(cleanup);
afterEach(closeSockets);

describe("delivery", () => {
  let server;
  before(async () => {
    server = await startServer({ args: ["--rate-limit", "0"] });
  });

  test("a burst of 200 arrives complete and in send order", async () => {
    const a = await server.connect("Burst-1", "Burst-2");
    const b = await server.connect("Burst-2", "Burst-1");
    await expectOnline(a, ["Burst-1"]);
    await expectOnline(a, ["Burst-1", "Burst-2"]);

    const N = 200;
    // Emit all without waiting for any ack.
    const acks = Array.from({ length: N }, (_, i) => ackWithin(20000, a, "chat message", `burst ${i}`));
    const received = await collect(b, "chat message", N, 20000);
    const replies = await Promise.all(acks);

    assert.deepEqual(
      received.map((m) => m.text),
      Array.from({ length: N }, (_, i) => `burst ${i}`),
      "the peer receives every message in send order",
    );
    assertTsIncreasing(received, "received");
    replies.forEach((r, i) => {
      assert.equal(r.ok, true, `ack ${i}: ${JSON.stringify(r)}`);
      assert.deepEqual(r.message, received[i], `ack ${i} carries the delivered object`);
    });
    for (const m of received) assertMessage(m, { from: "Burst-1", to: "Burst-2", id: a.id });
    assert.deepEqual(await fullHistory(b), received);
    assert.equal(pending(a, "chat message"), 0, "the sender gets none of its own");
  });

  test("both sides bursting at once: each sees the other in order, all in ts order", async () => {
    const a = await server.connect("Both-1", "Both-2");
    const b = await server.connect("Both-2", "Both-1");
    await expectOnline(a, ["Both-1"]);
    await expectOnline(a, ["Both-1", "Both-2"]);
    const N = 100;
    const acksA = Array.from({ length: N }, (_, i) => ackWithin(20000, a, "chat message", `a${i}`));
    const acksB = Array.from({ length: N }, (_, i) => ackWithin(20000, b, "chat message", `b${i}`));
    const [gotA, gotB] = await Promise.all([collect(a, "chat message", N, 20000), collect(b, "chat message", N, 20000)]);
    const [repA, repB] = await Promise.all([Promise.all(acksA), Promise.all(acksB)]);

    assert.deepEqual(gotB.map((m) => m.text), repA.map((r) => r.message.text));
    assert.deepEqual(gotA.map((m) => m.text), repB.map((r) => r.message.text));
    assert.deepEqual(gotB, repA.map((r) => r.message));
    assert.deepEqual(gotA, repB.map((r) => r.message));
    assertTsIncreasing(gotA, "Both-1's stream");
    assertTsIncreasing(gotB, "Both-2's stream");

    const all = [...repA, ...repB].map((r) => r.message).sort((x, y) => x.ts - y.ts);
    assertTsIncreasing(all, "all messages (ts unique)");
    assert.deepEqual(await fullHistory(a), all);
  });

  test("two connections of one user: both receive; the user is online once, until the last one closes", async () => {
    const a1 = await server.connect("Multi-1", "Multi-2");
    await expectOnline(a1, ["Multi-1"]);
    const b = await server.connect("Multi-2", "Multi-1");
    await expectOnline(b, ["Multi-1", "Multi-2"]);
    await expectOnline(a1, ["Multi-1", "Multi-2"]);

    const mark = server.mark();
    const a2 = await server.connect("Multi-1", "Multi-2");
    await expectOnline(a2, ["Multi-1", "Multi-2"]);
    assert.deepEqual(await once(a2, "history"), []);
    await server.waitForLine("Multi-1 is connected in room : dm:Multi-1_Multi-2", { from: mark });
    for (const line of server.linesSince(0)) {
      assert.doesNotMatch(line, /'Multi-1'.*'Multi-1'/, "a user is listed once however many connections");
    }

    // The peer's message reaches both connections.
    const fromB = await sendOk(b, "to both of you");
    assert.deepEqual(await once(a1, "chat message"), fromB);
    assert.deepEqual(await once(a2, "chat message"), fromB);

    // A message from a1 reaches the peer and a2, not a1 itself.
    const fromA1 = await sendOk(a1, "from my laptop");
    assertMessage(fromA1, { id: a1.id, from: "Multi-1", to: "Multi-2" });
    assert.deepEqual(await once(b, "chat message"), fromA1);
    assert.deepEqual(await once(a2, "chat message"), fromA1);
    // Barrier: the next message a1 receives is the peer's next one.
    const fromB2 = await sendOk(b, "got it");
    assert.deepEqual(await once(a1, "chat message"), fromB2, "a1 did not receive its own message");
    assert.deepEqual(await once(a2, "chat message"), fromB2);

    // a1 leaves: Multi-1 is still online through a2.
    // Barrier: the server logged a1's disconnect, then handled b's message;
    // whatever it had to tell b about a1 leaving came before b's ack.
    const leave1 = server.mark();
    const a1id = close(a1);
    await server.waitForLine(`Client disconnect with id:  ${a1id}`, { from: leave1 });
    const stillThere = await sendOk(b, "still there?");
    assert.deepEqual(await once(a2, "chat message"), stillThere);
    // b's ack came after anything the server sent b about a1's disconnect.
    for (const set of drain(b, "online")) {
      assert.deepEqual(set, ["Multi-1", "Multi-2"], "Multi-1 stays online while a2 is connected");
    }

    // a2 leaves: now Multi-1 is offline.
    const leave2 = server.mark();
    const a2id = close(a2);
    await expectOnline(b, ["Multi-2"]);
    await server.waitForLine(`Client disconnect with id:  ${a2id}`, { from: leave2 });
  });

  test("`to` reaches a user connected with another peer, on all their connections", async () => {
    const a = await server.connect("To-A", "To-B");
    const aOther = await server.connect("To-A", "To-X");
    const b = await server.connect("To-B", "To-A");
    const c = await server.connect("To-C", "To-D");
    const d = await server.connect("To-D", "To-C");
    for (const s of [a, aOther, b, c, d]) await once(s, "history");

    const m = await sendOk(a, { text: "psst, C", to: "To-C" });
    assertMessage(m, { roomId: roomOf("To-A", "To-C"), id: a.id, from: "To-A", to: "To-C", text: "psst, C" });
    assert.equal(m.roomId, "dm:To-A_To-C");
    assert.deepEqual(await once(c, "chat message"), m, "C receives it though connected with peer D");
    assert.deepEqual(await once(aOther, "chat message"), m, "the sender's other connection receives it");

    // Barriers: B's and D's next messages are the ones sent to them next.
    const toB = await sendOk(a, "hi B");
    assert.deepEqual(await once(b, "chat message"), toB, "B did not get the message for C");
    assert.deepEqual(await once(aOther, "chat message"), toB);
    const toD = await sendOk(c, "hi D");
    assert.deepEqual(await once(d, "chat message"), toD, "D did not get the message for C");

    // C answers A through `to` too; it lands in the A–C room.
    const back = await sendOk(c, { text: "hi A", to: "To-A" });
    assert.equal(back.roomId, "dm:To-A_To-C");
    assert.deepEqual(await once(a, "chat message"), back);
    assert.deepEqual(await once(aOther, "chat message"), back);
    assert.deepEqual(await fullHistory(a, { peer: "To-C" }), [m, back]);
    assert.deepEqual(drain(a, "chat message"), [], "A got none of its own messages");
  });

  test("room ids order the names by bytes", async () => {
    // 'Z' (0x5A) sorts before 'a' (0x61) in bytes, though not in a locale.
    const z = await server.connect("Zed", "amy");
    const a = await server.connect("amy", "Zed");
    const m = await sendOk(a, "hello Zed");
    assert.equal(m.roomId, "dm:Zed_amy");
    assert.deepEqual(await once(z, "chat message"), m);
    await expectOnline(z, ["Zed"]);
    await expectOnline(z, ["Zed", "amy"]);
  });
});
