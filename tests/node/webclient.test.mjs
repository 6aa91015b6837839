// The built-in web client (GET /, src/web/; issue 14) in headless Chromium.
//
// Two browser pages, served by chatd itself over TLS, sign in as two users
// and chat: the unread badge appears on the other page and clears when the
// conversation is opened, "Seen" shows under the last message the peer has
// read, "typing…" shows and goes, history pages back, a message sent or
// read on another device of the same user shows live, a send that got no
// answer is retried with its cid and stored once, a page cut off from the
// network reconnects (with `since`) and shows what it missed, once. No page
// may log a console error or throw. Screenshots are kept as artifacts in a
// directory the test prints (CHATD_ARTIFACTS, else a fresh one under the
// system temp dir).
//
// Without Chromium (/usr/bin/chromium, driven by playwright-core) the
// browser tests fail when $CI is set and are skipped otherwise. The HTTP
// checks (security headers, ETag, --no-web) need no browser.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import https from "node:https";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { SKIP, launchChromium, expectShown, recordTraffic } from "./chromium.mjs";
import {
  startServer,
  cleanup,
  sendOk,
  close,
  historyOk,
  ack,
  once,
  pending,
  REPO_ROOT,
  TIMEOUT,
} from "./harness.mjs";

let browser;

after(async () => {
  await browser?.close().catch(() => undefined);
  await cleanup();
});

/** GET `url` of `server` (its own certificate trusted); resolves with { status, headers, body }. */
function get(server, url, headers = {}) {
  return new Promise((resolve, reject) => {
    const tls = server.tls ? { ca: server.ca, checkServerIdentity: () => undefined } : {};
    const request = (server.tls ? https : http).get(
      new URL(url, server.url),
      { ...tls, headers },
      (response) => {
        const chunks = [];
        response.on("data", (chunk) => chunks.push(chunk));
        response.on("end", () =>
          resolve({ status: response.statusCode, headers: response.headers, body: Buffer.concat(chunks) }),
        );
      },
    );
    request.on("error", reject);
    request.setTimeout(TIMEOUT, () => request.destroy(new Error(`GET ${url} timed out`)));
  });
}

test("GET / serves the web client with security headers and ETags; --no-web answers 404", async () => {
  const server = await startServer();
  const page = await get(server, "/");
  assert.equal(page.status, 200);
  assert.equal(page.headers["content-type"], "text/html; charset=utf-8");
  assert.match(page.body.toString(), /<script src="\/web\/app\.js" defer><\/script>/);
  const csp = page.headers["content-security-policy"] ?? "";
  for (const directive of ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"]) {
    assert.ok(csp.split(/;\s*/).includes(directive), `CSP ${JSON.stringify(csp)} lacks ${directive}`);
  }
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|\*/, "the policy allows nothing but this origin");
  assert.equal(page.headers["x-content-type-options"], "nosniff");
  assert.equal(page.headers["referrer-policy"], "no-referrer");
  assert.equal(page.headers["cache-control"], "no-cache");
  assert.match(page.headers.etag, /^"[0-9a-f]{16}"$/);

  const again = await get(server, "/", { "if-none-match": page.headers.etag });
  assert.equal(again.status, 304);
  assert.equal(again.body.length, 0);

  // The bundle it serves is the vendored file, byte for byte.
  const bundle = await get(server, "/web/socket.io.min.js");
  assert.equal(bundle.status, 200);
  assert.equal(bundle.headers["content-type"], "text/javascript; charset=utf-8");
  assert.ok(bundle.body.equals(fs.readFileSync(path.join(REPO_ROOT, "src", "web", "socket.io.min.js"))));
  for (const [file, type] of [
    ["/web/app.js", "text/javascript; charset=utf-8"],
    ["/web/app.css", "text/css; charset=utf-8"],
    ["/web/icon.svg", "image/svg+xml"],
  ]) {
    const answer = await get(server, file);
    assert.equal(answer.status, 200, file);
    assert.equal(answer.headers["content-type"], type, file);
    assert.equal(answer.headers["x-content-type-options"], "nosniff", file);
  }
  assert.equal((await get(server, "/web/missing.js")).status, 404);

  const off = await startServer({ args: ["--no-web"] });
  for (const file of ["/", "/web/app.js", "/web/socket.io.min.js"]) {
    assert.equal((await get(off, file)).status, 404, `${file} with --no-web`);
  }
  // The chat itself is unaffected.
  const socket = await off.connect("Dummy-1", "Dummy-2");
  await sendOk(socket, "still chatting");
});

/** A page of its own (own cookies and storage) that records its console errors and exceptions. */
async function newPage(errors, name) {
  // chatd's generated certificate is self-signed.
  browser ??= await launchChromium();
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1000, height: 700 } });
  const page = await context.newPage();
  page.on("console", (message) => {
    if (message.type() === "error") errors.push(`${name}: console: ${message.text()}`);
  });
  page.on("pageerror", (err) => errors.push(`${name}: uncaught: ${err.message}`));
  return page;
}

/** Signs in on the page's form; `token` may be empty. */
async function signIn(page, user, token) {
  await page.getByLabel("User name").fill(user);
  await page.getByLabel("Token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
}

/** The artifact directory for screenshots, made once and printed. */
let artifacts;
function artifactDir() {
  if (!artifacts) {
    artifacts = process.env.CHATD_ARTIFACTS
      ? path.resolve(process.env.CHATD_ARTIFACTS, "webclient")
      : fs.mkdtempSync(path.join(os.tmpdir(), "chatd-webclient-"));
    fs.mkdirSync(artifacts, { recursive: true });
    console.log(`web client screenshots: ${artifacts}`);
  }
  return artifacts;
}

async function screenshot(page, name) {
  const file = path.join(artifactDir(), `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  const png = fs.readFileSync(file);
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], `${file} is a PNG`);
}

test("two users chat in the web client: badges, history paging, seen, typing, other devices", { skip: SKIP, timeout: 120000 }, async () => {
  const server = await startServer({ auth: true });
  const errors = [];

  // Dummy-3 has written 60 messages to Dummy-1: more than one history page.
  const dummy3 = await server.connect("Dummy-3", "Dummy-1");
  for (let i = 1; i <= 60; i++) await sendOk(dummy3, `old ${i}`);
  close(dummy3);

  const a = await newPage(errors, "Dummy-1");
  const b = await newPage(errors, "Dummy-2");
  await a.goto(`${server.url}/`);
  await b.goto(`${server.url}/`);

  // A name alone is not enough on a server with auth: the page says why.
  await signIn(a, "Dummy-1", "");
  await a.waitForFunction(() => /needs a token/.test(document.getElementById("signin-error").textContent), null, { timeout: TIMEOUT });
  await signIn(a, "Dummy-1", await server.token("Dummy-1"));
  await expectShown(a, "#me", ["Dummy-1"]);
  await signIn(b, "Dummy-2", await server.token("Dummy-2"));
  await expectShown(b, "#me", ["Dummy-2"]);

  // Dummy-1's list: Dummy-3 with 60 unread.
  await expectShown(a, "#conversations .peer", ["Dummy-3"]);
  await expectShown(a, "#conversations .badge", ["60"]);
  await expectShown(a, "#conversations .last", ["old 60"]);
  await b.waitForSelector("#no-conversations", { state: "visible", timeout: TIMEOUT }); // Dummy-2 has none yet
  await screenshot(a, "1-list-with-badge");

  // Opening it shows the last page and clears the badge, on the page and
  // on the server.
  await a.getByRole("button", { name: /Dummy-3/ }).click();
  await a.waitForFunction(() => document.querySelectorAll("#messages li").length === 50, null, { timeout: TIMEOUT });
  await expectShown(a, "#messages li:first-child .bubble", ["old 11"]);
  await expectShown(a, "#conversations .badge", []);
  const other = await server.connect("Dummy-1", null);
  const inbox = await ack(other, "conversations", {});
  assert.equal(inbox.ok, true, JSON.stringify(inbox));
  assert.equal(inbox.conversations[0].unread, 0, "the page told the server it read the room");

  // History pages back.
  await a.getByRole("button", { name: "Older messages" }).click();
  await a.waitForFunction(() => document.querySelectorAll("#messages li").length === 60, null, { timeout: TIMEOUT });
  await expectShown(a, "#messages li:first-child .bubble", ["old 1"]);
  await a.waitForSelector("#older", { state: "hidden", timeout: TIMEOUT });
  await screenshot(a, "2-history-paged-back");

  // Dummy-1 starts a conversation with Dummy-2 and writes.
  await a.getByLabel("Chat with").fill("Dummy-2");
  await a.getByLabel("Chat with").press("Enter");
  await expectShown(a, "#peer-name", ["Dummy-2"]);
  await expectShown(a, "#presence", [""]);
  await a.getByLabel("Message", { exact: true }).fill("hi B");
  await a.getByLabel("Message", { exact: true }).press("Enter");
  await expectShown(a, "#messages li.mine:not(.pending) .bubble", ["hi B"]);
  await expectShown(a, "#conversations .peer", ["Dummy-2", "Dummy-3"]);

  // Dummy-2's page: a new conversation with an unread badge.
  await expectShown(b, "#conversations .peer", ["Dummy-1"]);
  await expectShown(b, "#conversations .badge", ["1"]);
  await expectShown(b, "#conversations .last", ["hi B"]);
  await screenshot(b, "3-new-conversation-badge");

  // Dummy-2 opens it: the badge goes, and Dummy-1 sees "Seen".
  await b.getByRole("button", { name: /Dummy-1/ }).click();
  await expectShown(b, "#messages .bubble", ["hi B"]);
  await expectShown(b, "#conversations .badge", []);
  await expectShown(a, "#presence", ["here now"]);
  await expectShown(b, "#presence", ["here now"]);
  await expectShown(a, "#messages li.mine .seen", ["Seen"]);
  await expectShown(a, "#messages li:has(.seen) .bubble", ["hi B"]);

  // Dummy-2 types: "typing…" on Dummy-1's page; it goes when the field is
  // emptied.
  const text = b.getByLabel("Message", { exact: true });
  await text.pressSequentially("hel");
  await expectShown(a, "#typing", ["Dummy-2 is typing…"]);
  await screenshot(a, "4-typing");
  await text.fill("");
  await expectShown(a, "#typing", [""]);

  // Dummy-2 answers: Dummy-1's open view shows it and reads it at once, so
  // Dummy-2 sees "Seen".
  await text.pressSequentially("hello A");
  await expectShown(a, "#typing", ["Dummy-2 is typing…"]);
  await text.press("Enter");
  await expectShown(a, "#messages .bubble", ["hi B", "hello A"]);
  await expectShown(a, "#typing", [""]);
  await expectShown(b, "#messages li:has(.seen) .bubble", ["hello A"]);
  await expectShown(a, "#conversations .badge", []);
  // Ten keystrokes and a send were four `typing` events, not one each.
  const relayed = [];
  for (let i = 0; i < 4; i++) relayed.push((await once(other, "typing")).typing);
  assert.deepEqual(relayed, [true, false, true, false]);
  assert.equal(pending(other, "typing"), 0, "typing sent per keystroke");

  // Dummy-1 writes from another device: both pages show it live, as
  // Dummy-1's own on Dummy-1's page.
  const phone = await server.connect("Dummy-1", "Dummy-2");
  await sendOk(phone, { text: "from my phone", cid: "phone-1" });
  await expectShown(a, "#messages li.mine .bubble", ["hi B", "from my phone"]);
  await expectShown(a, "#conversations .last", ["You: from my phone", "old 60"]);
  await expectShown(b, "#messages .bubble", ["hi B", "hello A", "from my phone"]);

  // Dummy-3 writes again: a badge on Dummy-1's list; Dummy-1 reads it on
  // another device: the badge goes.
  const dummy3again = await server.connect("Dummy-3", "Dummy-1");
  const late = await sendOk(dummy3again, "old 61");
  await expectShown(a, "#conversations .badge", ["1"]);
  await expectShown(a, "#conversations .last", ["old 61", "You: from my phone"]);
  const tablet = await server.connect("Dummy-1", "Dummy-3");
  const read = await ack(tablet, "read", { ts: late.ts });
  assert.deepEqual(read, { ok: true, read: late.ts });
  await expectShown(a, "#conversations .badge", []);

  // A send that gets no answer (the server is stopped) offers Retry. The
  // first try was stored once the server went on; the retry carries the
  // same cid, so it is acknowledged as that message, not stored again.
  process.kill(server.proc.pid, "SIGSTOP");
  try {
    await a.getByLabel("Message", { exact: true }).fill("are you there?");
    await a.getByLabel("Message", { exact: true }).press("Enter");
    // The page waits 10 s for an answer.
    await a.getByRole("button", { name: "Retry" }).waitFor({ timeout: TIMEOUT + 10000 });
    await expectShown(a, "#messages li.failed .meta", ["not sent (no answer) Retry"]);
    await screenshot(a, "6-not-sent");
  } finally {
    process.kill(server.proc.pid, "SIGCONT");
  }
  await expectShown(b, "#messages .bubble", ["hi B", "hello A", "from my phone", "are you there?"]);
  await a.getByRole("button", { name: "Retry" }).click();
  await expectShown(a, "#messages li.mine:not(.pending) .bubble", ["hi B", "from my phone", "are you there?"]);
  await expectShown(a, "#messages li.failed", []);

  // Every message was stored once, in order.
  const stored = await historyOk(phone, {});
  assert.deepEqual(
    stored.map((m) => `${m.from}: ${m.text}`),
    ["Dummy-1: hi B", "Dummy-2: hello A", "Dummy-1: from my phone", "Dummy-1: are you there?"],
  );

  await screenshot(a, "5-dummy-1");
  await screenshot(b, "5-dummy-2");
  assert.deepEqual(errors, [], "console errors or uncaught exceptions on the pages");
});

test("with --no-auth a name is enough to sign in; the conversation list pages", { skip: SKIP, timeout: 60000 }, async () => {
  const server = await startServer({ auth: false });
  const errors = [];
  const page = await newPage(errors, "Dummy-1");
  await page.goto(`${server.url}/`);
  await signIn(page, "Dummy-1", "");
  await expectShown(page, "#me", ["Dummy-1"]);
  await expectShown(page, "#status", ["connected"]);
  await page.waitForSelector("#no-conversations", { state: "visible", timeout: TIMEOUT });

  // 35 people write to Dummy-1: a page of 30 conversations, then the rest.
  const peers = Array.from({ length: 35 }, (_, i) => `Peer-${String(i + 1).padStart(2, "0")}`);
  for (const peer of peers) {
    const socket = await server.connect(peer, "Dummy-1");
    await sendOk(socket, `hello from ${peer}`);
    close(socket);
  }
  // A reload keeps the sign-in for the tab, and lists the newest first.
  await page.reload();
  await expectShown(page, "#me", ["Dummy-1"]);
  const newestFirst = peers.toReversed();
  await expectShown(page, "#conversations .peer", newestFirst.slice(0, 30));
  await page.getByRole("button", { name: "Older conversations" }).click();
  await expectShown(page, "#conversations .peer", newestFirst);
  await page.waitForSelector("#more-conversations", { state: "hidden", timeout: TIMEOUT });
  await expectShown(page, "#conversations .badge", newestFirst.map(() => "1"));

  // Keyboard: the list's entries are buttons; Enter opens one and puts the
  // cursor in the message field.
  await page.focus("#conversations li:nth-child(2) button");
  await page.keyboard.press("Enter");
  await expectShown(page, "#peer-name", [newestFirst[1]]);
  await expectShown(page, "#messages .bubble", [`hello from ${newestFirst[1]}`]);
  assert.equal(await page.evaluate(() => document.activeElement.id), "text");
  await page.keyboard.type("hi there");
  await page.keyboard.press("Enter");
  await expectShown(page, "#messages li.mine:not(.pending) .bubble", ["hi there"]);

  // Text is shown as text, never as markup.
  const markup = `<img src=x onerror="document.title='pwned'"><b>bold?</b>`;
  const peer = await server.connect(newestFirst[1], "Dummy-1");
  await sendOk(peer, markup);
  await expectShown(page, "#messages .theirs .bubble", [`hello from ${newestFirst[1]}`, markup]);
  assert.equal(await page.locator("#messages img, #messages b").count(), 0);
  assert.equal(await page.title(), "chatd");
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForSelector("#signin", { state: "visible", timeout: TIMEOUT });
  assert.deepEqual(errors, [], "console errors or uncaught exceptions on the page");
});

/**
 * A TCP relay to `port` on 127.0.0.1 (TLS passes through untouched) that
 * can cut every connection it carries and refuse new ones: a network that
 * drops. `to(port)` sends new connections to another port (a server
 * restarted on a new one), as a stable address in front of it would.
 * Resolves with { port, down(), up(), to(port), close() }.
 */
async function startRelay(port) {
  const pairs = new Set();
  let up = true;
  let target = port;
  const relay = net.createServer((client) => {
    if (!up) {
      client.destroy();
      return;
    }
    const upstream = net.connect(target, "127.0.0.1");
    const pair = [client, upstream];
    pairs.add(pair);
    const end = () => {
      client.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    for (const socket of pair) socket.on("error", end).on("close", end);
    client.pipe(upstream).pipe(client);
  });
  await new Promise((resolve, reject) => {
    relay.once("error", reject);
    relay.listen(0, "127.0.0.1", resolve);
  });
  return {
    port: relay.address().port,
    down() {
      up = false;
      for (const pair of pairs) for (const socket of pair) socket.destroy();
      pairs.clear();
    },
    up() {
      up = true;
    },
    to(port) {
      target = port;
    },
    close() {
      this.down();
      return new Promise((resolve) => relay.close(resolve));
    },
  };
}

/**
 * A fresh --no-auth server, a relay to it (startRelay), and a new page
 * that reaches the server through the relay, its traffic recorded, signed
 * in as Dummy-1 with Dummy-2's conversation open and Dummy-2 connected.
 * Resolves with { server, relay, page, peer, errors }; close the relay.
 */
async function pageBehindRelay() {
  const server = await startServer({ auth: false });
  const relay = await startRelay(server.port);
  try {
    const errors = [];
    const page = await newPage(errors, "Dummy-1");
    recordTraffic(page);
    await page.goto(`https://127.0.0.1:${relay.port}/`);
    await signIn(page, "Dummy-1", "");
    await page.getByLabel("Chat with").fill("Dummy-2");
    await page.getByLabel("Chat with").press("Enter");
    const peer = await server.connect("Dummy-2", "Dummy-1");
    return { server, relay, page, peer, errors };
  } catch (err) {
    await relay.close();
    throw err;
  }
}

/** Waits until the page says it lost the server and is trying again. */
function expectReconnecting(page) {
  return page.waitForFunction(() => /reconnecting|retrying/.test(document.getElementById("status").textContent), null, {
    timeout: TIMEOUT,
  });
}

/** Asserts that the page logged nothing but the browser's reports of the connections the test cut. */
function assertOnlyCutConnections(errors) {
  const unexpected = errors.filter(
    (error) => !/WebSocket connection to .* failed|Failed to load resource|net::ERR_/.test(error),
  );
  assert.deepEqual(unexpected, [], "console errors or uncaught exceptions on the page");
}

test("after the network drops, the page reconnects and shows what it missed, once", { skip: SKIP, timeout: 60000 }, async () => {
  const { relay, page, peer, errors } = await pageBehindRelay();
  try {
    // What the page sends, on polling and on websocket: its handshakes.
    const sent = [];
    page.on("request", (request) => sent.push(request.postData() ?? ""));
    page.on("websocket", (ws) => ws.on("framesent", ({ payload }) => sent.push(String(payload))));
    const before = await sendOk(peer, "before");
    await expectShown(page, "#messages .bubble", ["before"]);

    relay.down();
    await expectReconnecting(page);
    await sendOk(peer, "missed 1");
    await sendOk(peer, "missed 2");
    await screenshot(page, "7-offline");
    relay.up();

    await expectShown(page, "#status", ["connected"]);
    await expectShown(page, "#messages .bubble", ["before", "missed 1", "missed 2"]);
    await expectShown(page, "#conversations .last", ["missed 2"]);
    await expectShown(page, "#conversations .badge", []);
    // The conversation's connection came back asking for what it missed.
    assert.ok(
      sent.some((payload) => payload.includes(`"since":${before.ts}`)),
      "no handshake with since: the ts of the last message the page had",
    );
    await sendOk(peer, "after");
    await expectShown(page, "#messages .bubble", ["before", "missed 1", "missed 2", "after"]);
    assertOnlyCutConnections(errors);
  } finally {
    await relay.close();
  }
});

test("after a graceful restart of the server, the page reconnects on its own and shows what it missed", { skip: SKIP, timeout: 90000 }, async () => {
  const { server, relay, page, peer, errors } = await pageBehindRelay();
  try {
    await sendOk(peer, "before");
    await expectShown(page, "#messages .bubble", ["before"]);

    // SIGTERM: the server closes the page's connections and exits 0.
    await server.stop();
    await expectReconnecting(page);
    // Back on the same data directory, where the page cannot reach it yet.
    const again = await server.restart();
    const peerAgain = await again.connect("Dummy-2", "Dummy-1");
    await sendOk(peerAgain, "while restarting");
    relay.to(again.port);

    await expectShown(page, "#status", ["connected"]);
    await expectShown(page, "#messages .bubble", ["before", "while restarting"]);
    await sendOk(peerAgain, "after");
    await expectShown(page, "#messages .bubble", ["before", "while restarting", "after"]);
    await expectShown(page, "#conversations .last", ["after"]);
    assertOnlyCutConnections(errors);
  } finally {
    await relay.close();
  }
});
