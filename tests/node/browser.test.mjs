// A web page in headless Chromium chats with a Node client (issue #4).
//
// The page (tests/node/browser/) loads socket.io-client's browser bundle from
// node_modules and connects to chatd over TLS with the client's default
// options: HTTP long-polling, then the upgrade to websocket. It is served
// from another origin than chatd's, which allows it with --cors-origin. The
// test drives it with playwright-core and the Debian package `chromium`
// (/usr/bin/chromium; playwright's own browser downloads are not used), and
// checks what the page shows.
//
// Without /usr/bin/chromium the test fails when $CI is set and is skipped
// otherwise (install it with `apt-get install chromium`).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { SKIP, launchChromium, expectShown } from "./chromium.mjs";
import {
  startServer,
  cleanup,
  once,
  expectOnline,
  sendOk,
  close,
  assertMessage,
  roomOf,
  TIMEOUT,
} from "./harness.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));

/** The only files the page server serves. */
const FILES = {
  "/": { file: path.join(HERE, "browser", "index.html"), type: "text/html; charset=utf-8" },
  "/chat.js": { file: path.join(HERE, "browser", "chat.js"), type: "text/javascript; charset=utf-8" },
  "/socket.io.min.js": {
    file: path.join(HERE, "node_modules", "socket.io-client", "dist", "socket.io.min.js"),
    type: "text/javascript; charset=utf-8",
  },
};

/** Serves the page and the client bundle on 127.0.0.1 (a free port); resolves with the server. */
async function startPageServer() {
  const server = http.createServer((req, res) => {
    const entry = req.method === "GET" && FILES[new URL(req.url, "http://x").pathname];
    if (!entry) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": entry.type, "cache-control": "no-store" });
    fs.createReadStream(entry.file).pipe(res);
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  return server;
}

// Everything started here is closed in after(), failed test or not.
let pageServer;
let browser;
let screenshotDir;

before(async () => {
  if (SKIP) return;
  pageServer = await startPageServer();
});

after(async () => {
  await browser?.close().catch(() => undefined);
  if (pageServer) {
    pageServer.closeAllConnections();
    await new Promise((resolve) => pageServer.close(resolve));
  }
  if (screenshotDir) fs.rmSync(screenshotDir, { recursive: true, force: true });
  await cleanup();
});

test("a web page in Chromium chats with a Node client over TLS", { skip: SKIP, timeout: 60000 }, async () => {
  const pageOrigin = `http://127.0.0.1:${pageServer.address().port}`;
  const server = await startServer({ auth: true, args: ["--cors-origin", pageOrigin] });

  browser = await launchChromium([
    "--ignore-certificate-errors", // chatd's generated self-signed certificate
  ]);
  const page = await browser.newPage();
  const pageErrors = [];
  page.on("pageerror", (err) => pageErrors.push(err.message));

  // Dummy-1 opens the page with a token of their own.
  const query = new URLSearchParams({
    server: server.url,
    user: "Dummy-1",
    peer: "Dummy-2",
    token: await server.token("Dummy-1"),
  });
  await page.goto(`${pageOrigin}/?${query}`);
  await expectShown(page, "#status", ["connected"]);
  await expectShown(page, "#online li", ["Dummy-1"]);

  // Dummy-2 joins from Node: both pages of the room see both users.
  const dummy2 = await server.connect("Dummy-2", "Dummy-1");
  await expectOnline(dummy2, ["Dummy-1", "Dummy-2"]);
  await expectShown(page, "#online li", ["Dummy-1", "Dummy-2"]);

  // Dummy-2 writes; the page shows it.
  await sendOk(dummy2, "Hello from Node <b>not bold</b>");
  await expectShown(page, "#messages li", ["Dummy-2 : Hello from Node <b>not bold</b>"]);

  // Dummy-1 types an answer into the page and presses Enter; it shows as
  // theirs once acked, and Dummy-2 gets it with the documented fields.
  await page.fill("#text", "Hi Dummy-2, from the browser");
  await page.press("#text", "Enter");
  await expectShown(page, "#messages li", [
    "Dummy-2 : Hello from Node <b>not bold</b>",
    "You : Hi Dummy-2, from the browser",
  ]);
  assertMessage(await once(dummy2, "chat message"), {
    roomId: roomOf("Dummy-1", "Dummy-2"),
    from: "Dummy-1",
    to: "Dummy-2",
    text: "Hi Dummy-2, from the browser",
  });

  // The page's ack is the message Dummy-2 receives.
  const reply = await page.evaluate((text) => window.send(text), "and a second one ✓");
  assert.equal(reply.ok, true, `the page's message was not accepted: ${JSON.stringify(reply)}`);
  assert.deepEqual(await once(dummy2, "chat message"), reply.message);
  assertMessage(reply.message, { from: "Dummy-1", to: "Dummy-2", text: "and a second one ✓" });
  await expectShown(page, "#messages li", [
    "Dummy-2 : Hello from Node <b>not bold</b>",
    "You : Hi Dummy-2, from the browser",
    "You : and a second one ✓",
  ]);

  // The default options started on polling and upgraded to websocket.
  await expectShown(page, "#transport", ["websocket"]);
  assert.deepEqual(await page.evaluate(() => window.transports), ["polling", "websocket"]);
  assert.equal(await page.evaluate(() => window.socket.io.engine.transport.name), "websocket");

  // Dummy-2 leaves; the page sees it.
  close(dummy2);
  await expectShown(page, "#online li", ["Dummy-1"]);

  screenshotDir = fs.mkdtempSync(path.join(os.tmpdir(), "chatd-browser-test-"));
  const shot = path.join(screenshotDir, "page.png");
  await page.screenshot({ path: shot, fullPage: true });
  const png = fs.readFileSync(shot);
  assert.ok(png.length > 100, `a ${png.length}-byte screenshot`);
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], "a PNG");

  assert.deepEqual(pageErrors, [], "uncaught errors on the page");
});
