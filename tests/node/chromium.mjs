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

/**
 * Waits until the elements matching `selector` show exactly the texts
 * `expected`; the error says what they show instead, and the page's
 * `#status`.
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
      `(status: ${await page.textContent("#status").catch(() => "?")})\n${err.message}`;
    throw err;
  }
}
