// The first screen of a chat app, with the stock socket.io-client:
// exactly-once send with `cid`, the `conversations` inbox with exact unread
// counts, `read` cursors and their events; all of it surviving a restart.

import { describe, test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  startServer,
  cleanup,
  closeSockets,
  once,
  expectOnline,
  send,
  sendOk,
  ack,
  drain,
  pending,
  fullHistory,
  assertMessage,
  refused,
  roomOf,
} from "./harness.mjs";

after(cleanup);
afterEach(closeSockets);

/** A `conversations` request that must succeed; resolves with the list. */
async function conversations(socket, request = {}) {
  const reply = await ack(socket, "conversations", request);
  assert.equal(reply?.ok, true, `conversations ${JSON.stringify(request)}: ${JSON.stringify(reply)}`);
  assert.ok(Array.isArray(reply.conversations), JSON.stringify(reply));
  return reply.conversations;
}

/** A `read` that must succeed; resolves with the cursor now. */
async function readOk(socket, request) {
  const reply = await ack(socket, "read", request);
  assert.equal(reply?.ok, true, `read ${JSON.stringify(request)}: ${JSON.stringify(reply)}`);
  return reply.read;
}

describe("exactly-once send with cid", () => {
  let server;
  before(async () => {
    server = await startServer({ args: ["--rate-limit", "0"] });
  });

  test("a repeated cid stores and delivers nothing and acks the original", async () => {
    const a = await server.connect("Cid-1", "Cid-2");
    const b = await server.connect("Cid-2", "Cid-1");
    await expectOnline(a, ["Cid-1"]);
    await expectOnline(a, ["Cid-1", "Cid-2"]);
    const first = await send(a, { text: "only once", cid: "m-1" });
    assert.equal(first.ok, true);
    assert.equal(first.duplicate, undefined, "the first send is no duplicate");
    assertMessage(first.message, { from: "Cid-1", to: "Cid-2", text: "only once" });
    assert.ok(!("cid" in first.message), "the message object does not carry cid");

    const again = await send(a, { text: "only once", cid: "m-1" });
    assert.deepEqual(again, { ok: true, message: first.message, duplicate: true });
    // Another connection of the same user, another room, another text: still the original.
    const a2 = await server.connect("Cid-1", "Cid-3");
    const elsewhere = await send(a2, { text: "something else", cid: "m-1" });
    assert.deepEqual(elsewhere, { ok: true, message: first.message, duplicate: true });
    // Another user may use the same cid.
    const theirs = await sendOk(b, { text: "mine", cid: "m-1" });
    assert.equal(theirs.from, "Cid-2");

    assert.deepEqual(await once(b, "chat message"), first.message);
    assert.deepEqual(
      (await fullHistory(b)).map((m) => m.text),
      ["only once", "mine"],
      "stored once",
    );
    assert.equal(pending(b, "chat message"), 0, "delivered once");
    assert.deepEqual(await fullHistory(a2), [], "nothing went to Cid-3");
  });

  test("socket.io-client's own retries: a lost ack is retried and answered once", async () => {
    const b = await server.connect("Retry-2", "Retry-1");
    const a = await server.connect("Retry-1", "Retry-2", { options: { retries: 3, ackTimeout: 1000 } });
    await expectOnline(b, ["Retry-2"]);
    await expectOnline(b, ["Retry-1", "Retry-2"]);
    // Lose the first acknowledgement on the way to the client: it times out
    // and the client sends the packet again, as it would after a lost ack.
    const onack = a.onack;
    let lost = 0;
    a.onack = function (packet) {
      if (lost++ === 0) return;
      return onack.call(this, packet);
    };
    const reply = await new Promise((resolve, reject) => {
      a.emit("chat message", { text: "retried", cid: "r-1" }, (err, answer) => (err ? reject(err) : resolve(answer)));
    });
    assert.equal(lost, 2, "the first ack was lost, the retry's arrived");
    assert.equal(reply.ok, true, JSON.stringify(reply));
    assert.equal(reply.duplicate, true, "the retry is answered with the original");
    const delivered = await once(b, "chat message");
    assert.deepEqual(reply.message, delivered);
    assert.deepEqual((await fullHistory(b)).map((m) => m.text), ["retried"]);
    assert.equal(pending(b, "chat message"), 0);
  });

  test("a malformed cid is refused as bad_payload", async () => {
    const a = await server.connect("Cid-4", "Cid-5");
    for (const cid of ["", "has space", "é", "x".repeat(65), 7, ["a"], { a: 1 }, true]) {
      assert.deepEqual(await send(a, { text: "hi", cid }), refused("bad_payload"), JSON.stringify(cid));
    }
    const ok = await send(a, { text: "hi", cid: "A-z_0.9:x" + "y".repeat(55) });
    assert.equal(ok.ok, true, JSON.stringify(ok));
    assert.deepEqual(await fullHistory(a), [ok.message]);
  });
});

describe("conversations and read cursors", () => {
  let server;
  before(async () => {
    server = await startServer({ args: ["--rate-limit", "0"] });
  });

  test("the inbox: most recent first, last message, exact unread, read and peerRead", async () => {
    const u = await server.connect("Inbox-U");
    const p1 = await server.connect("Inbox-P1", "Inbox-U");
    const p2 = await server.connect("Inbox-P2", "Inbox-U");
    assert.deepEqual(await conversations(u), [], "nobody has written yet");

    const m1 = await sendOk(p1, "one from P1");
    const m2 = await sendOk(p1, "two from P1");
    const m3 = await sendOk(p2, "one from P2");
    const m4 = await sendOk(p1, "three from P1");
    const list = await conversations(u);
    assert.deepEqual(list, [
      { roomId: roomOf("Inbox-U", "Inbox-P1"), peer: "Inbox-P1", last: m4, unread: 3, read: 0, peerRead: m4.ts },
      { roomId: roomOf("Inbox-U", "Inbox-P2"), peer: "Inbox-P2", last: m3, unread: 1, read: 0, peerRead: m3.ts },
    ]);

    // Reading up to m2 leaves m4 unread; the peer sees the cursor.
    assert.equal(await readOk(u, { peer: "Inbox-P1", ts: m2.ts }), m2.ts);
    const [first] = await conversations(u);
    assert.equal(first.unread, 1);
    assert.equal(first.read, m2.ts);
    const [ofP1] = await conversations(p1);
    assert.equal(ofP1.peerRead, m2.ts, "P1 sees how far U has read");
    assert.equal(ofP1.unread, 0, "P1's own messages are not unread to P1");

    // Replying moves the sender's cursor to the reply: all read before it.
    const reply = await sendOk(u, { text: "reply", to: "Inbox-P2" });
    const after = await conversations(u);
    assert.deepEqual(
      after.map((c) => [c.peer, c.unread, c.read]),
      [
        ["Inbox-P2", 0, reply.ts],
        ["Inbox-P1", 1, m2.ts],
      ],
    );
    assert.deepEqual(after[0].last, reply);
    assert.ok(m1.ts < m2.ts);
  });

  test("read moves forward only, clamps to the newest message, and tells both users", async () => {
    const u1 = await server.connect("Reader-U", "Reader-P");
    const u2 = await server.connect("Reader-U", "Reader-P");
    const p = await server.connect("Reader-P", "Reader-U");
    await expectOnline(p, ["Reader-P", "Reader-U"]);
    const room = roomOf("Reader-U", "Reader-P");
    const m1 = await sendOk(p, "first");
    const m2 = await sendOk(p, "second");
    await once(u1, "chat message");
    await once(u1, "chat message");

    assert.equal(await readOk(u1, { ts: m1.ts }), m1.ts);
    const event = { roomId: room, user: "Reader-U", ts: m1.ts };
    assert.deepEqual(await once(u2, "read"), event, "the reader's other device clears its badge");
    assert.deepEqual(await once(p, "read"), event, "the peer gets a read receipt");

    // Backwards: nothing moves, nobody is told.
    assert.equal(await readOk(u1, { ts: m1.ts - 1 }), m1.ts);
    // Past the newest: taken as the newest.
    assert.equal(await readOk(u1, { ts: m2.ts + 1_000_000_000 }), m2.ts);
    assert.deepEqual(await once(p, "read"), { roomId: room, user: "Reader-U", ts: m2.ts });
    assert.deepEqual(await once(u2, "read"), { roomId: room, user: "Reader-U", ts: m2.ts });
    // Without an ack it is applied all the same.
    u1.emit("read", { ts: m2.ts });
    const m3 = await sendOk(p, "barrier");
    await once(u2, "chat message");
    assert.equal(pending(u1, "read"), 0, "the sending connection gets no read event");
    assert.equal(pending(u2, "read"), 0, "nothing moved: no event");
    assert.equal(pending(p, "read"), 0);
    assert.equal((await conversations(u2))[0].unread, 1, `only ${m3.text} is unread`);
  });

  test("bad read and conversations requests are refused with an error", async () => {
    const u = await server.connect("Bad-U", "Bad-P");
    const p = await server.connect("Bad-P", "Bad-U");
    const m = await sendOk(p, "hello");
    for (const request of [
      { ts: -1 },
      { ts: "12" },
      { ts: 1.5 },
      {},
      { peer: "no such name!", ts: m.ts },
      { peer: "Bad-U", ts: m.ts },
      { peer: "Nobody-Here", ts: m.ts },
    ]) {
      const reply = await ack(u, "read", request);
      assert.equal(reply.ok, false, `read ${JSON.stringify(request)}: ${JSON.stringify(reply)}`);
      assert.equal(typeof reply.error, "string");
    }
    for (const request of [{ limit: 0 }, { limit: "5" }, { before: -3 }, { before: "x" }, { beforeRoom: 5 }, "all"]) {
      const reply = await ack(u, "conversations", request);
      assert.equal(reply.ok, false, `conversations ${JSON.stringify(request)}: ${JSON.stringify(reply)}`);
    }
    // The connection carries on.
    assert.equal(await readOk(u, { ts: m.ts }), m.ts);
  });

  test("paging with before and beforeRoom walks every conversation once", async () => {
    const u = await server.connect("Pager-U");
    const peers = [];
    for (let i = 0; i < 7; i++) {
      const p = await server.connect(`Pager-P${i}`, "Pager-U");
      await sendOk(p, `from ${i}`);
      peers.push(`Pager-P${i}`);
    }
    const seen = [];
    let request = { limit: 3 };
    for (;;) {
      const page = await conversations(u, request);
      seen.push(...page.map((c) => c.peer));
      if (page.length < 3) break;
      const last = page[page.length - 1];
      request = { limit: 3, before: last.last.ts, beforeRoom: last.roomId };
    }
    assert.deepEqual(seen, [...peers].reverse(), "newest first, each once");
    assert.equal((await conversations(u)).length, 7, "the default page holds them all");
  });
});

test("cursors and cids survive a restart; a purge forgets cids and leaves the inbox", { timeout: 60000 }, async () => {
  const server = await startServer();
  const a = await server.connect("Keep-1", "Keep-2");
  const b = await server.connect("Keep-2", "Keep-1");
  const m1 = await sendOk(a, { text: "kept", cid: "k-1" });
  await sendOk(a, "unread");
  await readOk(b, { ts: m1.ts });
  await server.stop();

  const again = await server.restart();
  const a2 = await again.connect("Keep-1", "Keep-2");
  const b2 = await again.connect("Keep-2", "Keep-1");
  assert.deepEqual(await send(a2, { text: "kept", cid: "k-1" }), { ok: true, message: m1, duplicate: true });
  const [conversation] = await conversations(b2);
  assert.deepEqual([conversation.read, conversation.unread], [m1.ts, 1]);

  const purged = await again.command(["purge", "--room", roomOf("Keep-1", "Keep-2")]);
  assert.match(purged.stdout, /2/);
  assert.deepEqual(await conversations(b2), [], "a room with nothing left leaves the inbox");
  const anew = await send(a2, { text: "kept", cid: "k-1" });
  assert.equal(anew.ok, true);
  assert.equal(anew.duplicate, undefined, "a purged message's cid is forgotten");
  const [fresh] = await conversations(b2);
  assert.deepEqual([fresh.read, fresh.unread], [0, 1], "the cursor was clamped with the purge");
  await again.stop();
});
