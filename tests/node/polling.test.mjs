// HTTP long-polling, the client's default: polling only, the default
// polling → websocket upgrade (nothing lost while it happens), and the CORS
// allow-list for pages from other origins.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import https from "node:https";
import {
  startServer,
  cleanup,
  once,
  expectOnline,
  sendOk,
  close,
  withTimeout,
  TIMEOUT,
} from "./harness.mjs";

after(cleanup);

const ROOM = "dm:Dummy-1_Dummy-2";
const POLLING_ONLY = { transports: ["polling"] };
const DEFAULTS = { transports: ["polling", "websocket"] }; // socket.io-client's default

/** Resolves with the engine's transport once it upgraded to websocket. */
function upgraded(socket) {
  const engine = socket.io.engine;
  if (engine.transport.name === "websocket") return Promise.resolve(engine.transport);
  return withTimeout(
    new Promise((resolve) => engine.once("upgrade", resolve)),
    TIMEOUT,
    "the upgrade to websocket",
  );
}

/** Resolves once a socket from `server.open()` is connected. */
function connected(socket) {
  if (socket.connected) return Promise.resolve(socket);
  return withTimeout(
    new Promise((resolve, reject) => {
      socket.once("connect", () => resolve(socket));
      socket.once("connect_error", reject);
    }),
    TIMEOUT,
    "the connection",
  );
}

/**
 * A raw HTTP(S) request to the server; resolves with { status, headers, body }.
 * `localAddress` picks the client's source address (another IP of the host).
 */
function request(server, method, path, headers = {}, { body, localAddress } = {}) {
  const client = server.tls ? https : http;
  return new Promise((resolve, reject) => {
    const req = client.request(
      `${server.url}${path}`,
      { method, headers, ca: server.ca, localAddress, agent: false },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (chunk) => (body += chunk));
        res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body }));
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

test("two users chat over polling only", { timeout: 30000 }, async () => {
  const server = await startServer({ auth: true });
  const d1 = await server.connect("Dummy-1", "Dummy-2", { options: POLLING_ONLY });
  assert.equal(d1.io.engine.transport.name, "polling");
  await expectOnline(d1, ["Dummy-1"]);
  assert.deepEqual(await once(d1, "history"), []);

  const d2 = await server.connect("Dummy-2", "Dummy-1", { options: POLLING_ONLY });
  await expectOnline(d2, ["Dummy-1", "Dummy-2"]);
  await expectOnline(d1, ["Dummy-1", "Dummy-2"]);
  assert.deepEqual(await once(d2, "history"), []);

  const m1 = await sendOk(d1, "Hello World! from Dummy-1");
  assert.equal(m1.roomId, ROOM);
  assert.deepEqual(await once(d2, "chat message"), m1);
  const m2 = await sendOk(d2, "Hi Dummy-1, Dummy-2 here");
  assert.deepEqual(await once(d1, "chat message"), m2);
  assert.equal(d1.io.engine.transport.name, "polling", "still polling: no upgrade was offered to use");

  close(d2);
  await expectOnline(d1, ["Dummy-1"]);
  close(d1);
  await server.waitForLine("No one is Online");
});

test("the default options start on polling and upgrade to websocket", { timeout: 30000 }, async () => {
  const server = await startServer({ auth: true });
  const d1 = await server.open("Dummy-1", "Dummy-2", { options: DEFAULTS });
  assert.equal(d1.io.engine.transport.name, "polling", "the first transport is polling");
  const upgrade = upgraded(d1);
  await connected(d1);
  await upgrade;
  assert.equal(d1.io.engine.transport.name, "websocket");
  await expectOnline(d1, ["Dummy-1"]);

  const d2 = await server.connect("Dummy-2", "Dummy-1", { options: DEFAULTS });
  await upgraded(d2);
  await expectOnline(d1, ["Dummy-1", "Dummy-2"]);
  const m1 = await sendOk(d1, "over the upgraded websocket");
  assert.deepEqual(await once(d2, "chat message"), m1);
  const m2 = await sendOk(d2, "and back");
  assert.deepEqual(await once(d1, "chat message"), m2);
});

test("a message queued for a client while it upgrades is delivered after the upgrade", { timeout: 30000 }, async () => {
  const server = await startServer({ auth: true });
  const d2 = await server.connect("Dummy-2", "Dummy-1");
  await expectOnline(d2, ["Dummy-2"]);

  const d1 = await server.open("Dummy-1", "Dummy-2", { options: DEFAULTS });
  // Hold the client's `5` (upgrade) back until the peer's message has been
  // accepted: the server has answered the probe, stopped serving polls, and
  // must keep that message queued for the websocket.
  let held;
  d1.io.engine.once("upgrading", (transport) => {
    const send = transport.send.bind(transport);
    transport.send = (packets) => {
      if (packets.length === 1 && packets[0].type === "upgrade" && !held) {
        held = (async () => {
          await expectOnline(d2, ["Dummy-1", "Dummy-2"]); // Dummy-1 has joined the room
          const m = await sendOk(d2, "sent while Dummy-1 upgrades");
          send(packets);
          return m;
        })();
        return;
      }
      send(packets);
    };
  });
  await upgraded(d1);
  assert.ok(held, "the client sent its upgrade packet");
  const m = await held;
  assert.deepEqual(await once(d1, "chat message"), m);
  assert.equal(d1.io.engine.transport.name, "websocket");
  // And the session goes on, both ways.
  const reply = await sendOk(d1, "got it");
  assert.deepEqual(await once(d2, "chat message"), reply);
});

test("CORS: an allowed origin may connect with polling and websocket", { timeout: 30000 }, async () => {
  const origin = "https://app.example.com";
  const server = await startServer({ args: ["--cors-origin", origin, "--cors-origin", "http://localhost:8080/"] });

  const preflight = await request(server, "OPTIONS", "/socket.io/?EIO=4&transport=polling", {
    Origin: origin,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "content-type",
  });
  assert.equal(preflight.status, 204);
  assert.equal(preflight.headers["access-control-allow-origin"], origin);
  assert.equal(preflight.headers["access-control-allow-credentials"], "true");
  assert.match(preflight.headers["access-control-allow-methods"], /POST/);
  assert.equal(preflight.headers["access-control-allow-headers"], "content-type");

  const handshake = await request(server, "GET", "/socket.io/?EIO=4&transport=polling", {
    Origin: "http://localhost:8080",
  });
  assert.equal(handshake.status, 200);
  assert.equal(handshake.headers["access-control-allow-origin"], "http://localhost:8080");
  assert.equal(handshake.headers["access-control-allow-credentials"], "true");
  assert.match(handshake.body, /^0\{"sid":/);

  const d1 = await server.open("Dummy-1", null, { options: { ...DEFAULTS, extraHeaders: { Origin: origin } } });
  const upgrade = upgraded(d1);
  await connected(d1);
  await upgrade;
  await expectOnline(d1, ["Dummy-1"]);

  // No Origin at all (Node, python, mobile) is not a browser page: allowed.
  const d2 = await server.connect("Dummy-2", null, { options: POLLING_ONLY });
  await expectOnline(d2, ["Dummy-2"]);
});

test("CORS: other origins are refused, on polling and websocket", { timeout: 30000 }, async () => {
  const server = await startServer({ args: ["--cors-origin", "https://app.example.com"] });
  const evil = "https://evil.example.net";

  const handshake = await request(server, "GET", "/socket.io/?EIO=4&transport=polling", { Origin: evil });
  assert.equal(handshake.status, 403);
  assert.equal(handshake.headers["access-control-allow-origin"], undefined);
  const preflight = await request(server, "OPTIONS", "/socket.io/?EIO=4&transport=polling", { Origin: evil });
  assert.equal(preflight.status, 403);

  for (const transports of [["polling"], ["websocket"]]) {
    const err = await server.connectError("Dummy-1", null, {
      options: { transports, extraHeaders: { Origin: evil } },
    });
    assert.ok(err instanceof Error, `${transports}: refused`);
  }

  // Without --cors-origin, no page of any origin is allowed; clients that
  // send no Origin still connect.
  const closed = await startServer();
  const refused = await request(closed, "GET", "/socket.io/?EIO=4&transport=polling", {
    Origin: "https://app.example.com",
  });
  assert.equal(refused.status, 403);
  // A page of the server's own origin is not cross-origin.
  const own = await request(closed, "GET", "/socket.io/?EIO=4&transport=polling", { Origin: closed.url });
  assert.equal(own.status, 200);
  const d1 = await closed.connect("Dummy-1", null, { options: DEFAULTS });
  await expectOnline(d1, ["Dummy-1"]);
});

test("bad polling requests get an HTTP error or a closed session, never someone else's data", { timeout: 30000 }, async () => {
  const server = await startServer({ args: ["--max-payload", "1000"] });
  const path = "/socket.io/?EIO=4&transport=polling";
  const handshake = async () => {
    const open = await request(server, "GET", path);
    assert.equal(open.status, 200);
    return JSON.parse(open.body.slice(1)).sid;
  };
  const error = (res) => ({ status: res.status, body: res.body && JSON.parse(res.body) });
  const unknown = { status: 400, body: { code: 1, message: "Session ID unknown" } };

  // A session is bound to the address of its handshake: the same sid from
  // another address of this host is unknown, and the owner is unaffected.
  const sid = await handshake();
  assert.equal((await request(server, "POST", `${path}&sid=${sid}`, {}, { body: '40{"user":"Dummy-1"}' })).body, "ok");
  const stolen = await request(server, "GET", `${path}&sid=${sid}`, {}, { localAddress: "127.0.0.2" });
  assert.deepEqual(error(stolen), unknown);
  const stolenPost = await request(server, "POST", `${path}&sid=${sid}`, {}, { localAddress: "127.0.0.2", body: "1" });
  assert.deepEqual(error(stolenPost), unknown);
  const mine = await request(server, "GET", `${path}&sid=${sid}`);
  assert.equal(mine.status, 200);
  assert.match(mine.body, /^40\{"sid":"[^"]+"\}/, "the owner still gets its CONNECT answer");

  // Unknown sids.
  assert.deepEqual(error(await request(server, "GET", `${path}&sid=nope`)), unknown);

  // A body larger than maxPayload: 413, as the reference server answers.
  const big = await request(server, "POST", `${path}&sid=${sid}`, {}, { body: `4${"x".repeat(2000)}` });
  assert.equal(big.status, 413);

  // A malformed payload closes the session.
  for (const body of ["abc", "4a\x1ebnot-base64!", "\xff", "2", ""]) {
    const victim = await handshake();
    const post = await request(server, "POST", `${path}&sid=${victim}`, {}, { body });
    assert.equal(post.status, 200, `POST ${JSON.stringify(body)}`);
    assert.deepEqual(error(await request(server, "GET", `${path}&sid=${victim}`)), unknown, `after ${JSON.stringify(body)}`);
  }

  // Polling requests for a websocket session: 400 code 3.
  const ws = await server.connect("Dummy-2", null);
  const wsSid = ws.io.engine.id;
  const badRequest = { status: 400, body: { code: 3, message: "Bad request" } };
  assert.deepEqual(error(await request(server, "GET", `${path}&sid=${wsSid}`)), badRequest);
  assert.deepEqual(error(await request(server, "POST", `${path}&sid=${wsSid}`, {}, { body: "1" })), badRequest);
  await expectOnline(ws, ["Dummy-2"]);
  assert.ok(ws.connected, "the websocket session is unaffected");

  // The server is still serving.
  assert.equal((await request(server, "GET", "/healthz")).status, 200);
});
