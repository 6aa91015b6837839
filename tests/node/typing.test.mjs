// `typing`: relayed at once to every connection of the peer, never stored,
// capped at 5/s per user, and `typing: false` when the typist's last
// connection closes while a `typing: true` still holds.

import { describe, test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  startServer,
  cleanup,
  closeSockets,
  once,
  expectOnline,
  sendOk,
  drain,
  pending,
  close,
  fullHistory,
  roomOf,
} from "./harness.mjs";

after(cleanup);
afterEach(closeSockets);

describe("typing", () => {
  let server;
  before(async () => {
    server = await startServer();
  });

  test("goes to every connection of the peer, not to the typist's other ones", async () => {
    const a1 = await server.connect("Typist-1", "Reader-1");
    const a2 = await server.connect("Typist-1", "Reader-1");
    const b1 = await server.connect("Reader-1", "Typist-1");
    const b2 = await server.connect("Reader-1");
    await expectOnline(b1, ["Reader-1", "Typist-1"]);
    const room = roomOf("Typist-1", "Reader-1");

    a1.emit("typing", { typing: true });
    for (const b of [b1, b2]) {
      assert.deepEqual(await once(b, "typing"), { roomId: room, user: "Typist-1", typing: true });
    }
    a1.emit("typing", { typing: false });
    for (const b of [b1, b2]) {
      assert.deepEqual(await once(b, "typing"), { roomId: room, user: "Typist-1", typing: false });
    }
    // A message is the barrier: the typing events before it have arrived by then.
    await sendOk(a1, "done typing");
    await once(a2, "chat message");
    assert.equal(pending(a2, "typing"), 0, "the typist's own other connection is not told");
    assert.equal(pending(a1, "typing"), 0);
    const texts = (await fullHistory(b1)).map((m) => m.text);
    assert.deepEqual(texts, ["done typing"], "typing is never stored");
  });

  test("a peer named in the payload is told, without a handshake peer", async () => {
    const a = await server.connect("Typist-2");
    const b = await server.connect("Reader-2");
    a.emit("typing", { peer: "Reader-2", typing: true });
    assert.deepEqual(await once(b, "typing"), {
      roomId: roomOf("Typist-2", "Reader-2"),
      user: "Typist-2",
      typing: true,
    });
  });

  test("at most 5 per second per user are relayed, the rest dropped silently", async () => {
    const a = await server.connect("Typist-3", "Reader-3");
    const b = await server.connect("Reader-3", "Typist-3");
    await expectOnline(b, ["Reader-3", "Typist-3"]);
    for (let i = 0; i < 20; i++) a.emit("typing", { typing: i % 2 === 0 });
    // Malformed ones are dropped too, and the connection carries on.
    a.emit("typing", "yes");
    a.emit("typing", { typing: "yes" });
    a.emit("typing", { peer: "no such name!", typing: true });
    a.emit("typing", { peer: "Typist-3", typing: true });
    await sendOk(a, "barrier");
    await once(b, "chat message");
    const relayed = drain(b, "typing");
    assert.equal(relayed.length, 5, JSON.stringify(relayed));
    assert.deepEqual(
      relayed.map((t) => t.typing),
      [true, false, true, false, true],
    );
  });

  test("the peer is told typing:false when the typist's last connection closes", async () => {
    const a1 = await server.connect("Typist-4", "Reader-4");
    const a2 = await server.connect("Typist-4", "Reader-4");
    const b = await server.connect("Reader-4", "Typist-4");
    await expectOnline(b, ["Reader-4", "Typist-4"]);
    a1.emit("typing", { typing: true });
    assert.equal((await once(b, "typing")).typing, true);
    close(a1);
    // Still connected on a2: nothing to tell; a message from a2 is the barrier.
    await sendOk(a2, "still here");
    await once(b, "chat message");
    assert.equal(pending(b, "typing"), 0);
    close(a2);
    assert.deepEqual(await once(b, "typing"), {
      roomId: roomOf("Typist-4", "Reader-4"),
      user: "Typist-4",
      typing: false,
    });
    await expectOnline(b, ["Reader-4"]);
  });
});
