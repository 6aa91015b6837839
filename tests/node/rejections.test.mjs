// Every reason a `chat message` is refused. A refused message is answered
// with {ok:false, error:"Message is not accepted", reason} (or, without an
// ack callback, a `chat error` event with that object), is not delivered and
// is not stored. Each test uses its own user names, so tests sharing the
// server don't see each other's rooms.

import { describe, test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  TIMEOUT,
  startServer,
  cleanup,
  closeSockets,
  once,
  expectOnline,
  send,
  sendOk,
  refused,
  assertMessage,
  drain,
  pending,
  historyOk,
  fullHistory,
  collect,
  roomOf,
  ackWithin,
} from "./harness.mjs";

after(cleanup);
afterEach(closeSockets);

/** Two connected users in their room, past their `online` and `history` events. */
async function pair(server, a, b) {
  const sa = await server.connect(a, b);
  await once(sa, "history");
  await expectOnline(sa, [a]);
  const sb = await server.connect(b, a);
  await once(sb, "history");
  await expectOnline(sa, [a, b].sort());
  await expectOnline(sb, [a, b].sort());
  return [sa, sb];
}

/**
 * The barrier that proves nothing refused was delivered or stored: `from`
 * sends one more message; the peer's next `chat message` must be it, and the
 * room's history must be exactly `accepted` plus it.
 */
async function assertOnlyAccepted(from, to, accepted) {
  const last = await sendOk(from, "barrier");
  assert.deepEqual(await once(to, "chat message"), last, "the peer's next message is the barrier");
  assert.equal(pending(to, "chat message"), 0);
  assert.deepEqual(await fullHistory(from), [...accepted, last], "history holds only accepted messages");
  assert.deepEqual(drain(from, "chat message"), [], "the sender got none of its own messages");
}

describe("refused messages", () => {
  let server;
  before(async () => {
    server = await startServer({ args: ["--rate-limit", "0"] });
  });

  test("empty: no text, or only white space", async () => {
    const [a, b] = await pair(server, "Empty-1", "Empty-2");
    for (const payload of ["", "   ", " \t\n ", { text: "" }, { text: "  " }, { text: "  ", to: "Empty-2" }]) {
      assert.deepEqual(await send(a, payload), refused("empty"), `payload ${JSON.stringify(payload)}`);
    }
    await assertOnlyAccepted(a, b, []);
  });

  test("too_long: over 4096 bytes of UTF-8", async () => {
    const [a, b] = await pair(server, "Long-1", "Long-2");
    const accepted = [];

    // 4096 ASCII bytes: accepted, text intact.
    const exact = "x".repeat(4096);
    const m1 = await sendOk(a, exact);
    assert.equal(m1.text, exact);
    assert.deepEqual(await once(b, "chat message"), m1);
    accepted.push(m1);

    // 4096 bytes of 4-byte characters (2048 UTF-16 units): accepted.
    const emoji = "\u{1F600}".repeat(1024);
    assert.equal(Buffer.byteLength(emoji), 4096);
    const m2 = await sendOk(a, { text: emoji, to: "Long-2" });
    assert.equal(m2.text, emoji);
    assert.deepEqual(await once(b, "chat message"), m2);
    accepted.push(m2);

    // One byte over, ASCII.
    assert.deepEqual(await send(a, "x".repeat(4097)), refused("too_long"));
    // One byte over with a multibyte character: 4096 UTF-16 units, 4097 bytes.
    const multi = "x".repeat(4095) + "\u00e9";
    assert.equal(multi.length, 4096);
    assert.equal(Buffer.byteLength(multi), 4097);
    assert.deepEqual(await send(a, multi), refused("too_long"));
    // Over, as an object; and far over.
    assert.deepEqual(await send(a, { text: "\u20ac".repeat(1366) }), refused("too_long"));
    assert.deepEqual(await send(a, "y".repeat(20000)), refused("too_long"));

    await assertOnlyAccepted(a, b, accepted);
  });

  test("no_peer: no `to` and no handshake peer", async () => {
    const lonely = await server.connect("Lonely-1");
    assert.deepEqual(await once(lonely, "online"), ["Lonely-1"], "a connection without peer sees just itself");
    assert.deepEqual(await send(lonely, "is anyone there?"), refused("no_peer"));
    assert.deepEqual(await send(lonely, { text: "is anyone there?" }), refused("no_peer"));
    assert.equal(pending(lonely, "history"), 0, "no history for a connection without peer");

    // With `to`, the same connection can talk.
    const friend = await server.connect("Friend-1", "Lonely-1");
    assert.deepEqual(await once(friend, "history"), [], "the refused messages were not stored");
    const m = await sendOk(lonely, { text: "found you", to: "Friend-1" });
    assertMessage(m, { roomId: "dm:Friend-1_Lonely-1", id: lonely.id, from: "Lonely-1", to: "Friend-1", text: "found you" });
    assert.deepEqual(await once(friend, "chat message"), m);
  });

  test("invalid_peer: a bad name, or the sender itself", async () => {
    const [a, b] = await pair(server, "Inv-1", "Inv-2");
    const bad = ["bad name!", "-dash-first", ".dot-first", "x".repeat(33), "dm:Inv-2", "Inv_2", "Inv-1"];
    for (const to of bad) {
      assert.deepEqual(await send(a, { text: "hi", to }), refused("invalid_peer"), `to ${JSON.stringify(to)}`);
    }
    await assertOnlyAccepted(a, b, []);
  });

  test("bad_payload: anything but a string or an object with a text", async () => {
    const [a, b] = await pair(server, "Bad-1", "Bad-2");
    const payloads = [42, [1, 2], ["hello"], null, true, {}, { to: "Bad-2" }, { text: 5 }, { text: ["hi"] }];
    for (const payload of payloads) {
      assert.deepEqual(await send(a, payload), refused("bad_payload"), `payload ${JSON.stringify(payload)}`);
    }
    // A binary attachment, alone or as the text.
    assert.deepEqual(await send(a, Buffer.from("hello")), refused("bad_payload"), "a Buffer");
    assert.deepEqual(await send(a, { text: Buffer.from("hello") }), refused("bad_payload"), "a Buffer as text");
    // No payload at all.
    assert.deepEqual(await ackWithin(TIMEOUT, a, "chat message"), refused("bad_payload"), "no argument");
    await assertOnlyAccepted(a, b, []);
  });

  test("without an ack callback a refusal is a `chat error` event", async () => {
    const [a, b] = await pair(server, "Err-1", "Err-2");
    // An accepted message without ack: delivered, no chat error.
    a.emit("chat message", "fine");
    const m = assertMessage(await once(b, "chat message"), { text: "fine", from: "Err-1", id: a.id });

    a.emit("chat message", "");
    assert.deepEqual(await once(a, "chat error"), refused("empty"));
    a.emit("chat message", 42);
    assert.deepEqual(await once(a, "chat error"), refused("bad_payload"));
    a.emit("chat message", "z".repeat(5000));
    assert.deepEqual(await once(a, "chat error"), refused("too_long"));
    a.emit("chat message", { text: "hi", to: "Err-1" });
    assert.deepEqual(await once(a, "chat error"), refused("invalid_peer"));

    const lonely = await server.connect("Err-3");
    lonely.emit("chat message", "hello?");
    assert.deepEqual(await once(lonely, "chat error"), refused("no_peer"));

    await assertOnlyAccepted(a, b, [m]);
    assert.deepEqual(drain(a, "chat error"), [], "exactly one chat error per refusal");
    assert.deepEqual(drain(b, "chat error"), [], "the peer hears nothing of the refusals");
  });
});

describe("configured message limit", () => {
  test("--max-message-bytes sets the too_long limit", async () => {
    const server = await startServer({ args: ["--max-message-bytes", "10", "--rate-limit", "0"] });
    const [a, b] = await pair(server, "Max-1", "Max-2");
    const m = await sendOk(a, "0123456789");
    assert.deepEqual(await once(b, "chat message"), m);
    assert.deepEqual(await send(a, "0123456789a"), refused("too_long"));
    assert.deepEqual(await send(a, "012345678\u00e9"), refused("too_long"), "11 bytes, 10 characters");
    await assertOnlyAccepted(a, b, [m]);
    await server.stop();
  });
});

describe("rate limit", () => {
  test("a burst over the limit is partly refused with rate_limited; the accepted ones are stored", async () => {
    const server = await startServer({ args: ["--rate-limit", "5"] });
    const [a, b] = await pair(server, "Rate-1", "Rate-2");

    // 300 messages at once: far over any burst allowance at 5 messages/s.
    const N = 300;
    const replies = await Promise.all(
      Array.from({ length: N }, (_, i) => ackWithin(20000, a, "chat message", `burst ${i}`)),
    );
    const accepted = [];
    let limited = 0;
    replies.forEach((r, i) => {
      if (r.ok) {
        assert.equal(r.message.text, `burst ${i}`);
        accepted.push(r.message);
      } else {
        assert.deepEqual(r, refused("rate_limited"), `reply ${i}`);
        limited++;
      }
    });
    assert.ok(limited > 0, "at least one message was rate limited");
    assert.ok(accepted.length > 0, "the first messages of the burst were accepted");
    // Accepted ones keep their send order.
    for (let i = 1; i < accepted.length; i++) {
      assert.ok(accepted[i].ts > accepted[i - 1].ts);
      assert.ok(Number(accepted[i].text.split(" ")[1]) > Number(accepted[i - 1].text.split(" ")[1]));
    }

    // The peer receives exactly the accepted ones, in order; the history holds them.
    assert.deepEqual(await collect(b, "chat message", accepted.length, 10000), accepted);
    assert.deepEqual(await fullHistory(b), accepted);

    // The limit is per user: the peer can still talk.
    const back = await sendOk(b, "you are talking too much");
    assert.deepEqual(await once(a, "chat message"), back);
    assert.deepEqual(await historyOk(b, { after: accepted[accepted.length - 1].ts }), [back]);
    assert.equal(back.roomId, roomOf("Rate-1", "Rate-2"));
    await server.stop();
  });
});
