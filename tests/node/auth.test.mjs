// The handshake with auth: who may connect, and what a refused client hears.

import { describe, test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  startServer,
  cleanup,
  closeSockets,
  once,
  expectOnline,
  sendOk,
  signJwt,
  nowSeconds,
} from "./harness.mjs";

after(cleanup);
afterEach(closeSockets);

describe("handshake with auth", () => {
  let server;
  before(async () => {
    server = await startServer({ auth: true });
  });

  /** Asserts the handshake is refused with "unauthorized". */
  async function unauthorized(user, peer, extra, what) {
    const err = await server.connectError(user, peer, extra);
    assert.equal(err.message, "unauthorized", what);
  }

  /** Asserts the handshake is refused with "invalid handshake: ...". */
  async function invalid(user, peer, extra, what) {
    const err = await server.connectError(user, peer, extra);
    assert.match(err.message, /^invalid handshake: ./, what);
  }

  test("a valid token from `chatd token` connects", async () => {
    const token = await server.token("Alice");
    const s = await server.connect("Alice", "Bob", { token });
    assert.deepEqual(await once(s, "online"), ["Alice"]);
    assert.deepEqual(await once(s, "history"), []);
  });

  test("a token minted by another backend with the secret connects", async () => {
    const token = server.craftToken({ sub: "Carol", iat: nowSeconds(), exp: nowSeconds() + 3600 });
    const s = await server.connect("Carol", "Dave", { token });
    assert.deepEqual(await once(s, "online"), ["Carol"]);
  });

  test("no token, a garbage token, a forged, expired or someone else's token: unauthorized", async () => {
    await unauthorized("Alice", "Bob", { token: null }, "no token");
    await unauthorized("Alice", "Bob", { token: "" }, "empty token");
    await unauthorized("Alice", "Bob", { token: "not-a-jwt" }, "garbage");
    await unauthorized("Alice", "Bob", { token: "a.b.c" }, "three garbage parts");
    await unauthorized(
      "Alice",
      "Bob",
      { token: signJwt({ alg: "HS256", typ: "JWT" }, { sub: "Alice", exp: nowSeconds() + 3600 }, "not the secret") },
      "signed with another secret",
    );
    // Expired an hour ago: well past any leeway a verifier allows.
    await unauthorized(
      "Alice",
      "Bob",
      { token: server.craftToken({ sub: "Alice", iat: nowSeconds() - 7200, exp: nowSeconds() - 3600 }) },
      "expired",
    );
    await unauthorized("Alice", "Bob", { token: server.craftToken({ sub: "Alice", iat: nowSeconds() }) }, "no exp");
    await unauthorized(
      "Alice",
      "Bob",
      { token: signJwt({ alg: "none", typ: "JWT" }, { sub: "Alice", exp: nowSeconds() + 3600 }, "").replace(/[^.]*$/, "") },
      "alg none",
    );
    await unauthorized("Alice", "Bob", { token: await server.token("Bob") }, "Bob's token");
    await unauthorized("alice", "Bob", { token: await server.token("Alice") }, "names are case-sensitive");

    // The server is none the worse: Alice still gets in.
    const s = await server.connect("Alice", "Bob");
    await expectOnline(s, ["Alice"]);
  });

  test("a malformed user or peer: invalid handshake", async () => {
    const badUser = "bad name!";
    // A token whose sub is the bad name, so only the name can be at fault.
    const tokenFor = (sub) => server.craftToken({ sub, exp: nowSeconds() + 3600 });
    await invalid(badUser, "Bob", { token: tokenFor(badUser) }, "user with a space");
    await invalid("-Alice", "Bob", { token: tokenFor("-Alice") }, "user starting with a dash");
    await invalid("A".repeat(33), "Bob", { token: tokenFor("A".repeat(33)) }, "user of 33 characters");
    await invalid("Alice", "Alice", { token: await server.token("Alice") }, "peer is the user");
    await invalid("Alice", "bad peer!", { token: await server.token("Alice") }, "bad peer");
    await invalid("Alice", "B".repeat(33), { token: await server.token("Alice") }, "peer of 33 characters");

    // 32 characters are fine.
    const long = "L" + "o".repeat(30) + "g";
    assert.equal(long.length, 32);
    const s = await server.connect(long, "Bob", { token: tokenFor(long) });
    assert.deepEqual(await once(s, "online"), [long]);
  });

  test("no user at all is refused", async () => {
    const err = await server.connectError(undefined, "Bob", { token: await server.token("Alice") });
    assert.match(err.message, /^(invalid handshake: .|unauthorized$)/);
  });

  test("the handshake fields may come as query parameters", async () => {
    const token = await server.token("Quinn");
    const q = await server.connect(undefined, undefined, { auth: null, query: { user: "Quinn", peer: "Rita", token } });
    await expectOnline(q, ["Quinn"]);
    assert.deepEqual(await once(q, "history"), []);

    // And they work: Rita, also by query, talks with Quinn.
    const r = await server.connect(undefined, undefined, {
      auth: null,
      query: { user: "Rita", peer: "Quinn", token: await server.token("Rita") },
    });
    await expectOnline(r, ["Quinn", "Rita"]);
    await expectOnline(q, ["Quinn", "Rita"]);
    const m = await sendOk(q, "asked by query");
    assert.deepEqual(await once(r, "chat message"), m);
    assert.equal(m.from, "Quinn");
    assert.equal(m.to, "Rita");

    // A bad token by query is refused like one in the auth payload.
    const err = await server.connectError(undefined, undefined, {
      auth: null,
      query: { user: "Quinn", peer: "Rita", token: "garbage" },
    });
    assert.equal(err.message, "unauthorized");
  });

  test("the auth payload wins over query parameters", async () => {
    const good = await server.token("Sam");
    // Good token in auth, garbage in the query: connects.
    const s = await server.connect(undefined, undefined, {
      auth: { user: "Sam", peer: "Tom", token: good },
      query: { user: "Sam", peer: "Tom", token: "garbage" },
    });
    await expectOnline(s, ["Sam"]);
    // Garbage in auth, good token in the query: refused.
    const err = await server.connectError(undefined, undefined, {
      auth: { user: "Sam", peer: "Tom", token: "garbage" },
      query: { user: "Sam", peer: "Tom", token: good },
    });
    assert.equal(err.message, "unauthorized");
  });

  test("a namespace other than / is refused with Invalid namespace", async () => {
    const err = await server.connectError("Alice", "Bob", { nsp: "/other" });
    assert.equal(err.message, "Invalid namespace");
    // The main namespace still works.
    const s = await server.connect("Alice", "Bob");
    await expectOnline(s, ["Alice"]);
  });

  test("a token keeps working across a restart (the secret is kept)", async () => {
    const own = await startServer({ auth: true });
    const token = await own.token("Uma");
    (await own.connect("Uma", "Vic", { token })).disconnect();
    await own.stop();
    const again = await own.restart();
    const s = await again.connect("Uma", "Vic", { token });
    await expectOnline(s, ["Uma"]);
    await again.stop();
  });
});

describe("without auth", () => {
  test("--no-auth accepts any well-formed user without a token, still checks names", async () => {
    const server = await startServer({ auth: false });
    const s = await server.connect("Nobody-in-particular", "Someone");
    await expectOnline(s, ["Nobody-in-particular"]);
    const err = await server.connectError("bad name!", "Someone");
    assert.match(err.message, /^invalid handshake: ./);
    await server.stop();
  });
});
