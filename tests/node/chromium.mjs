// Headless Chromium for the browser tests: the Debian package `chromium`
// (/usr/bin/chromium) driven by playwright-core; playwright's own browser
// downloads are never used. Without it the browser tests fail when $CI is
// set (.ci/run installs it) and are skipped otherwise.

import assert from "node:assert/strict";
import fs from "node:fs";
import { chromium } from "playwright-core";
import { TIMEOUT } from "./harness.mjs";

/** Where the Debian package puts the browser. */
export const CHROMIUM = "/usr/bin/chromium";
const HAVE_CHROMIUM = fs.existsSync(CHROMIUM);

/** The `skip` option of a browser test: a reason when Chromium is missing outside CI, else false. */
export const SKIP =
  !HAVE_CHROMIUM && !process.env.CI
    ? `${CHROMIUM} is missing (apt-get install chromium); the browser test is skipped`
    : false;

/** Launches headless Chromium with `extraArgs`; fails with the fix when it is missing. */
export function launchChromium(extraArgs = []) {
  assert.ok(
    HAVE_CHROMIUM,
    `${CHROMIUM} is missing: the browser tests need the Debian package chromium ` +
      "(apt-get install -y --no-install-recommends chromium; .ci/run installs it)",
  );
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      ...extraArgs,
    ],
  });
}

/** The text of each element matching `selector` on the page. */
function texts(page, selector) {
  return page.$$eval(selector, (elements) => elements.map((e) => e.textContent));
}

/** What the elements matching `selector` say, for an error message; never waits. */
async function shown(page, selector) {
  const found = await texts(page, selector).catch(() => null);
  return found ? JSON.stringify(found.join(" ")) : "?";
}

/** The Socket.IO traffic of pages given to recordTraffic, oldest first. */
const transcripts = new WeakMap();
const TRANSCRIPT_LINES = 300;

/**
 * Records what `page` does on the network (Socket.IO requests and their
 * failures, websocket frames both ways, console lines), each with the ms
 * since this call, so that a failed expectShown on it can say how the page
 * got where it is.
 */
export function recordTraffic(page) {
  const lines = [];
  const start = Date.now();
  const note = (line) => {
    lines.push(`${Date.now() - start} ms ${line.slice(0, 160)}`);
    if (lines.length > TRANSCRIPT_LINES) lines.shift();
  };
  const short = (url) => url.replace(/^.*\/socket\.io\/\?/, "");
  page.on("request", (request) => {
    if (request.url().includes("/socket.io/")) note(`${request.method()} ${short(request.url())}`);
  });
  page.on("requestfailed", (request) => note(`failed: ${short(request.url())}: ${request.failure()?.errorText}`));
  page.on("websocket", (ws) => {
    note(`websocket ${short(ws.url())}`);
    ws.on("framesent", ({ payload }) => note(`ws > ${payload}`));
    ws.on("framereceived", ({ payload }) => note(`ws < ${payload}`));
    ws.on("socketerror", (error) => note(`ws error: ${error}`));
    ws.on("close", () => note("ws closed"));
  });
  page.on("console", (message) => note(`console ${message.type()}: ${message.text()}`));
  transcripts.set(page, lines);
}

/**
 * Waits until the elements matching `selector` show exactly the texts
 * `expected`; the error says what they show instead, the page's `#status`
 * and `#conversation-error`, and its traffic if recorded (recordTraffic).
 */
export async function expectShown(page, selector, expected) {
  try {
    await page.waitForFunction(
      ([selector, expected]) =>
        JSON.stringify([...document.querySelectorAll(selector)].map((e) => e.textContent)) ===
        JSON.stringify(expected),
      [selector, expected],
      { timeout: TIMEOUT },
    );
  } catch (err) {
    err.message =
      `the page never showed ${JSON.stringify(expected)} in ${selector}: it shows ` +
      `${JSON.stringify(await texts(page, selector).catch(() => "?"))} ` +
      `(status: ${await shown(page, "#status")}; conversation error: ${await shown(page, "#conversation-error")})\n` +
      err.message +
      (transcripts.has(page) ? `\nthe page's traffic:\n${transcripts.get(page).join("\n")}` : "");
    throw err;
  }
}
