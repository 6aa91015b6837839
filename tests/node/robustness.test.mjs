// Robustness: one misbehaving client loses its own connection and nothing
// else. (Raw, malformed frames are covered by the Rust tests; these use the
// stock client, pushed out of line where needed.)

import { describe, test, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  startServer,
  cleanup,
  closeSockets,
  once,
  expectOnline,
  sendOk,
  send,
  refused,
  disconnected,
  handshakeOf,
  close,
  withTimeout,
  TIMEOUT,
} from "./harness.mjs";

after(cleanup);
afterEach(closeSockets);

describe("robustness", () => {
  test("the Engine.IO open packet announces the documented defaults", async () => {
    const server = await startServer();
    const s = await server.connect("Open-1", "Open-2");
    const hs = handshakeOf(s);
    assert.ok(hs, "the handshake was recorded");
    assert.equal(hs.pingInterval, 25000);
    assert.equal(hs.pingTimeout, 20000);
    assert.equal(hs.maxPayload, 65536);
    assert.equal(typeof hs.sid, "string");
    await server.stop();
  });

  test("a packet over maxPayload closes that connection only", async () => {
    const server = await startServer({ args: ["--max-payload", "1000", "--rate-limit", "0"] });
    const a = await server.connect("Big-1", "Big-2");
    const b = await server.connect("Big-2", "Big-1");
    const c = await server.connect("Calm-1", "Calm-2");
    const d = await server.connect("Calm-2", "Calm-1");
    assert.equal(handshakeOf(a).maxPayload, 1000, "the open packet announces the configured maxPayload");
    await expectOnline(b, ["Big-1", "Big-2"]);

    // Under the limit: fine.
    const small = await sendOk(a, "small");
    assert.deepEqual(await once(b, "chat message"), small);

    // Over it: a's connection is closed, without an ack.
    const mark = server.mark();
    const aid = a.id;
    const reply = send(a, "x".repeat(2000), TIMEOUT).then(
      (r) => ({ r }),
      (err) => ({ err }),
    );
    await disconnected(a);
    const outcome = await reply;
    assert.ok(outcome.err, `no ack expected, got ${JSON.stringify(outcome.r)}`);
    await server.waitForLine(`Client disconnect with id:  ${aid}`, { from: mark });

    // Everyone else carries on: b sees a go, c and d chat, newcomers connect.
    await expectOnline(b, ["Big-2"]);
    const calm = await sendOk(c, "all quiet here");
    assert.deepEqual(await once(d, "chat message"), calm);
    const a2 = await server.connect("Big-1", "Big-2");
    const history = await once(a2, "history");
    assert.deepEqual(history, [small], "the oversized message was not stored");
    const back = await sendOk(a2, "back, and brief");
    assert.deepEqual(await once(b, "chat message"), back);
    await server.stop();
  });

  test("a client that stops answering pings is dropped and its presence updated", async () => {
    const server = await startServer({ args: ["--ping-interval", "200", "--ping-timeout", "300"] });
    const mute = await server.connect("Mute-1", "Mute-2");
    const peer = await server.connect("Mute-2", "Mute-1");
    await expectOnline(peer, ["Mute-1", "Mute-2"]);
    assert.equal(handshakeOf(peer).pingInterval, 200);
    assert.equal(handshakeOf(peer).pingTimeout, 300);

    // Make the client swallow its pongs (engine.io-client answers a ping
    // with _sendPacket("pong")). It still receives the server's pings, so
    // its own watchdog stays content: it is the server that must notice.
    const engine = mute.io.engine;
    const sendPacket = engine._sendPacket.bind(engine);
    engine._sendPacket = (type, ...rest) => (type === "pong" ? undefined : sendPacket(type, ...rest));

    // The well-behaved peer sees the mute user go, and keeps its own
    // connection through several pings.
    let pings = 0;
    const threePings = new Promise((resolve) =>
      peer.io.on("ping", () => {
        if (++pings === 3) resolve();
      }),
    );
    const mark = server.mark();
    const muteId = mute.id;
    await expectOnline(peer, ["Mute-2"], 10000);
    await server.waitForLine(`Client disconnect with id:  ${muteId}`, { from: mark });
    await withTimeout(threePings, 10000, "three pings on the well-behaved connection");
    assert.equal(peer.connected, true);
    const m = await sendOk(peer, "you still there?");
    assert.equal(m.to, "Mute-1");
    await server.stop();
  });

  test("a client whose TCP connection dies without a close frame is dropped", async () => {
    const server = await startServer();
    const gone = await server.connect("Gone-1", "Gone-2");
    const peer = await server.connect("Gone-2", "Gone-1");
    await expectOnline(peer, ["Gone-1", "Gone-2"]);
    const mark = server.mark();
    const goneId = gone.id;
    // ws's terminate(): destroys the TCP socket, no WebSocket close frame.
    gone.io.engine.transport.ws.terminate();
    await expectOnline(peer, ["Gone-2"]);
    await server.waitForLine(`Client disconnect with id:  ${goneId}`, { from: mark });
    await server.stop();
  });

  test("many clients connecting and leaving at once leave no one online", async () => {
    const server = await startServer();
    const N = 40;
    const socks = await Promise.all(
      Array.from({ length: N }, (_, i) => server.connect(`Crowd-${i}`, `Crowd-${(i + 1) % N}`)),
    );
    for (const s of socks) await once(s, "history");
    const mark = server.mark();
    const ids = socks.map((s) => close(s));
    for (const id of ids) await server.waitForLine(`Client disconnect with id:  ${id}`, { from: mark });
    await server.waitForLine("No one is Online", { from: mark });
    // Still serving.
    const s = await server.connect("Crowd-0", "Crowd-1");
    assert.deepEqual(await once(s, "online"), ["Crowd-0"]);
    await server.stop();
  });

  test("unknown events and odd acks do not break the connection", async () => {
    const server = await startServer();
    const a = await server.connect("Odd-1", "Odd-2");
    const b = await server.connect("Odd-2", "Odd-1");
    a.emit("no such event", { x: 1 });
    a.emit("online", ["forged"]);
    a.emit("history"); // no payload, no ack
    a.emit("chat error", "from a client");
    assert.deepEqual(await send(a, ""), refused("empty"));
    const m = await sendOk(a, "still fine");
    assert.deepEqual(await once(b, "chat message"), m);
    await server.stop();
  });
});
