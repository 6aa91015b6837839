// The seed session: two users open their direct-message room, chat, one
// message is refused, they leave. Run with auth and TLS, as a user would.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import {
  startServer,
  cleanup,
  once,
  expectOnline,
  send,
  close,
  refused,
  assertMessage,
  assertTimeMatchesTs,
  MESSAGE_KEYS,
  TIME_RE,
  drain,
  historyOk,
} from "./harness.mjs";

after(cleanup);

const ROOM = "dm:Dummy-1_Dummy-2";

test("the seed session: Dummy-1 and Dummy-2 chat in their room", { timeout: 30000 }, async () => {
  const server = await startServer({ auth: true, env: { TZ: "UTC" } });
  assert.match(server.lines[0], /^Listening at \d+$/, "the first console line");

  // Dummy-1 arrives first: alone, with an empty history.
  const d1 = await server.connect("Dummy-1", "Dummy-2");
  assert.equal(typeof d1.id, "string");
  await expectOnline(d1, ["Dummy-1"]);
  assert.deepEqual(await once(d1, "history"), []);
  await server.waitForLine("Online :  [ 'Dummy-1' ]");
  await server.waitForLine(`Dummy-1 is connected in room : ${ROOM}`);

  // Dummy-2 arrives: both see both.
  const mark = server.mark();
  const d2 = await server.connect("Dummy-2", "Dummy-1");
  await expectOnline(d2, ["Dummy-1", "Dummy-2"]);
  await expectOnline(d1, ["Dummy-1", "Dummy-2"]);
  assert.deepEqual(await once(d2, "history"), []);
  await server.waitForLine("Online :  [ 'Dummy-1', 'Dummy-2' ]", { from: mark });
  await server.waitForLine(`Dummy-2 is connected in room : ${ROOM}`, { from: mark });

  // Dummy-1 says hello; the ack carries the stored message.
  const hello = await send(d1, "Hello World! from Dummy-1");
  assert.deepEqual(Object.keys(hello), ["ok", "message"]);
  assert.equal(hello.ok, true);
  const m1 = hello.message;
  assert.deepEqual(Object.keys(m1), MESSAGE_KEYS);
  assert.equal(m1.roomId, ROOM);
  assert.equal(m1.id, d1.id, "id is the sending socket's id");
  assert.equal(m1.from, "Dummy-1");
  assert.equal(m1.text, "Hello World! from Dummy-1");
  assert.equal(m1.to, "Dummy-2");
  assert.match(m1.time, TIME_RE);
  assert.equal(m1.__v, 0);
  assert.equal(typeof m1.ts, "number");
  assertMessage(m1);
  assertTimeMatchesTs(m1, 0); // the server runs with TZ=UTC

  // Dummy-2 receives exactly that object.
  const got1 = await once(d2, "chat message");
  assert.deepEqual(Object.keys(got1), MESSAGE_KEYS);
  assert.deepEqual(got1, m1);

  // Dummy-2 replies; Dummy-1's first `chat message` is the reply, so the
  // server did not echo Dummy-1's own message back to it.
  const reply = await send(d2, "Hi Dummy-1, Dummy-2 here");
  assert.equal(reply.ok, true);
  const m2 = assertMessage(reply.message, {
    roomId: ROOM,
    id: d2.id,
    from: "Dummy-2",
    text: "Hi Dummy-1, Dummy-2 here",
    to: "Dummy-1",
  });
  assert.ok(m2.ts > m1.ts, "ts strictly increases");
  assert.deepEqual(await once(d1, "chat message"), m2);

  // An empty message is refused and goes nowhere: Dummy-2's next message is
  // the one after it.
  assert.deepEqual(await send(d1, ""), refused("empty"));
  const m3 = (await send(d1, "bye")).message;
  assert.deepEqual(await once(d2, "chat message"), m3);
  assert.deepEqual(drain(d1, "chat message"), [], "Dummy-1 got none of its own messages");
  assert.deepEqual(drain(d1, "chat error"), [], "acked refusals raise no chat error");

  // The history holds the three accepted messages, oldest first.
  assert.deepEqual(await historyOk(d2, {}), [m1, m2, m3]);

  // Dummy-2 leaves: Dummy-1 is alone again.
  const d2id = d2.id;
  const leaveMark = server.mark();
  close(d2);
  await expectOnline(d1, ["Dummy-1"]);
  await server.waitForLine(`Client disconnect with id:  ${d2id}`, { from: leaveMark });

  // Dummy-2 comes back and finds the conversation.
  const d2b = await server.connect("Dummy-2", "Dummy-1");
  assert.deepEqual(await once(d2b, "history"), [m1, m2, m3]);
  await expectOnline(d1, ["Dummy-1", "Dummy-2"]);

  // Both leave: no one is online.
  const endMark = server.mark();
  const ids = [d1.id, d2b.id];
  close(d1);
  close(d2b);
  for (const id of ids) await server.waitForLine(`Client disconnect with id:  ${id}`, { from: endMark });
  await server.waitForLine("No one is Online", { from: endMark });

  await server.stop();
});

test("time is formatted in the server's TZ", { timeout: 30000 }, async (t) => {
  if (!fs.existsSync("/usr/share/zoneinfo/Asia/Kolkata")) {
    t.skip("no tzdata for Asia/Kolkata on this machine");
    return;
  }
  // Asia/Kolkata is UTC+5:30 all year round.
  const server = await startServer({ env: { TZ: "Asia/Kolkata" } });
  const a = await server.connect("Tz-1", "Tz-2");
  const m = assertMessage((await send(a, "what time is it?")).message);
  assertTimeMatchesTs(m, 330);
  await server.stop();
});
