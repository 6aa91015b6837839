// History: the last 50 on connect, paging with before/after/limit, and
// `since` for a client that was away. One server and one conversation of 250
// messages for the whole file; the tests only read it.

import { describe, test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  TIMEOUT,
  startServer,
  cleanup,
  closeSockets,
  once,
  expectOnline,
  history,
  historyOk,
  fullHistory,
  ackWithin,
  assertMessage,
  assertTsIncreasing,
  MESSAGE_KEYS,
} from "./harness.mjs";

after(cleanup);
afterEach(closeSockets);

const N = 250;

describe("history", () => {
  let server;
  /** The 250 stored messages, as acked, in send order. */
  let sent;
  /** ts of message i */
  const ts = (i) => sent[i].ts;

  before(async () => {
    server = await startServer({ args: ["--rate-limit", "0"] });
    const writer = await server.connect("Hist-1", "Hist-2");
    assert.deepEqual(await once(writer, "history"), []);
    // The first 120 one by one, the rest in a burst.
    sent = [];
    for (let i = 0; i < 120; i++) {
      const r = await ackWithin(TIMEOUT, writer, "chat message", `message ${i}`);
      assert.equal(r.ok, true, JSON.stringify(r));
      sent.push(r.message);
    }
    const burst = await Promise.all(
      Array.from({ length: N - 120 }, (_, k) => ackWithin(20000, writer, "chat message", `message ${120 + k}`)),
    );
    for (const r of burst) {
      assert.equal(r.ok, true, JSON.stringify(r));
      sent.push(r.message);
    }
    sent.forEach((m, i) => assertMessage(m, { text: `message ${i}`, from: "Hist-1", to: "Hist-2", roomId: "dm:Hist-1_Hist-2" }));
    writer.disconnect();
  });

  test("acked messages have strictly increasing ts in send order", () => {
    assert.equal(sent.length, N);
    assertTsIncreasing(sent, "acks");
  });

  test("a fresh connection gets the last 50, oldest first", async () => {
    const reader = await server.connect("Hist-2", "Hist-1");
    const h = await once(reader, "history");
    assert.equal(h.length, 50);
    for (const m of h) assert.deepEqual(Object.keys(m), MESSAGE_KEYS);
    assert.deepEqual(h, sent.slice(N - 50));
    // The same from the other side of the room.
    const writerAgain = await server.connect("Hist-1", "Hist-2");
    assert.deepEqual(await once(writerAgain, "history"), sent.slice(N - 50));
  });

  test("another room's history is its own", async () => {
    const s = await server.connect("Hist-1", "Hist-3");
    assert.deepEqual(await once(s, "history"), []);
    assert.deepEqual(await historyOk(s, {}), []);
  });

  test("history request: default and limit", async () => {
    const s = await server.connect("Hist-2", "Hist-1");
    assert.deepEqual(await historyOk(s, {}), sent.slice(N - 50), "no bounds: the last 50");
    assert.deepEqual(await historyOk(s, { limit: 20 }), sent.slice(N - 20), "the last 20");
    assert.deepEqual(await historyOk(s, { limit: 1 }), sent.slice(N - 1));
    const capped = await historyOk(s, { limit: 1000 });
    assert.equal(capped.length, 200, "limit is capped at 200");
    assert.deepEqual(capped, sent.slice(N - 200));
  });

  test("history request: before pages backwards", async () => {
    const s = await server.connect("Hist-2", "Hist-1");
    assert.deepEqual(await historyOk(s, { before: ts(100) }), sent.slice(50, 100), "the newest 50 older than #100");
    assert.deepEqual(await historyOk(s, { before: ts(100), limit: 10 }), sent.slice(90, 100));
    assert.deepEqual(await historyOk(s, { before: ts(5), limit: 10 }), sent.slice(0, 5), "fewer left than the limit");
    assert.deepEqual(await historyOk(s, { before: ts(0) }), [], "nothing before the first");
    assert.deepEqual(await historyOk(s, { before: ts(N - 1) + 1, limit: 3 }), sent.slice(N - 3), "bounds are exclusive");

    // Paging backwards from the end walks the whole history exactly once.
    const pages = [];
    let cursor = ts(N - 1) + 1;
    for (;;) {
      const page = await historyOk(s, { before: cursor, limit: 64 });
      if (page.length === 0) break;
      pages.unshift(...page);
      cursor = page[0].ts;
    }
    assert.deepEqual(pages, sent);
  });

  test("history request: after pages forwards", async () => {
    const s = await server.connect("Hist-2", "Hist-1");
    assert.deepEqual(await historyOk(s, { after: ts(10) }), sent.slice(11, 61), "the oldest 50 newer than #10");
    assert.deepEqual(await historyOk(s, { after: ts(10), limit: 5 }), sent.slice(11, 16));
    assert.deepEqual(await historyOk(s, { after: ts(N - 3) }), sent.slice(N - 2), "fewer left than the limit");
    assert.deepEqual(await historyOk(s, { after: ts(N - 1) }), [], "nothing after the last");
    assert.deepEqual(await historyOk(s, { after: 0, limit: 1000 }), sent.slice(0, 200), "capped at 200");
    assert.deepEqual(await fullHistory(s), sent);
  });

  test("history request: both bounds give the oldest `limit` between them", async () => {
    const s = await server.connect("Hist-2", "Hist-1");
    assert.deepEqual(await historyOk(s, { after: ts(10), before: ts(20) }), sent.slice(11, 20));
    assert.deepEqual(await historyOk(s, { after: ts(10), before: ts(20), limit: 3 }), sent.slice(11, 14));
    assert.deepEqual(await historyOk(s, { after: ts(10), before: ts(11) }), [], "nothing strictly between neighbours");
    assert.deepEqual(await historyOk(s, { after: 0, before: ts(N - 1), limit: 1000 }), sent.slice(0, 200));
  });

  test("history request: `peer` picks the room; a connection without peer can use it", async () => {
    const s = await server.connect("Hist-2");
    await expectOnline(s, ["Hist-2"]);
    assert.deepEqual(await historyOk(s, { peer: "Hist-1", limit: 5 }), sent.slice(N - 5));
    assert.deepEqual(await historyOk(s, { peer: "Hist-1", after: ts(0), limit: 2 }), sent.slice(1, 3));
    const other = await server.connect("Hist-2", "Hist-3");
    assert.deepEqual(await historyOk(other, { peer: "Hist-1", limit: 2 }), sent.slice(N - 2));
  });

  test("history request with a bad peer fails with an error", async () => {
    const s = await server.connect("Hist-2", "Hist-1");
    const r = await history(s, { peer: "bad name!" });
    assert.equal(r.ok, false, JSON.stringify(r));
    assert.equal(typeof r.error, "string");
    assert.ok(r.error.length > 0);
  });

  test("`since` in the handshake: exactly the missed messages", async () => {
    // Missed the last 150: all of them.
    const a = await server.connect("Hist-2", "Hist-1", { since: ts(99) });
    assert.deepEqual(await once(a, "history"), sent.slice(100));
    // Missed 239: the oldest 200 of them; the rest by paging on with after.
    const b = await server.connect("Hist-2", "Hist-1", { since: ts(10) });
    const first = await once(b, "history");
    assert.deepEqual(first, sent.slice(11, 211));
    assert.deepEqual(await historyOk(b, { after: first[first.length - 1].ts, limit: 200 }), sent.slice(211));
    // Saw everything: nothing.
    const c = await server.connect("Hist-2", "Hist-1", { since: ts(N - 1) });
    assert.deepEqual(await once(c, "history"), []);
    // Saw nothing yet (since 0): the oldest 200.
    const d = await server.connect("Hist-1", "Hist-2", { since: 0 });
    assert.deepEqual(await once(d, "history"), sent.slice(0, 200));
  });

  test("`since` as a query parameter", async () => {
    const s = await server.connect("Hist-2", "Hist-1", { query: { since: String(ts(239)) } });
    assert.deepEqual(await once(s, "history"), sent.slice(240));
  });
});
