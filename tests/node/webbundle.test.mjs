// The socket.io-client browser bundle chatd embeds (src/web/socket.io.min.js)
// is the stock file of the version package-lock.json pins, byte for byte,
// with its license notice beside it: it cannot drift from what the Node
// suite tests against. To update it, see README "Web client".

import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { REPO_ROOT } from "./harness.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const VENDORED = path.join(REPO_ROOT, "src", "web", "socket.io.min.js");
const LICENSE = path.join(REPO_ROOT, "src", "web", "socket.io.LICENSE");
const PACKAGE = path.join(HERE, "node_modules", "socket.io-client");

test("the embedded socket.io-client bundle is the pinned package's dist file", () => {
  const lock = JSON.parse(fs.readFileSync(path.join(HERE, "package-lock.json"), "utf8"));
  const pinned = lock.packages["node_modules/socket.io-client"]?.version;
  assert.ok(pinned, "package-lock.json pins socket.io-client");
  const installed = JSON.parse(fs.readFileSync(path.join(PACKAGE, "package.json"), "utf8")).version;
  assert.equal(installed, pinned, "node_modules holds another socket.io-client than the lock pins: run npm ci in tests/node");

  const stock = fs.readFileSync(path.join(PACKAGE, "dist", "socket.io.min.js"));
  const vendored = fs.readFileSync(VENDORED);
  assert.ok(
    vendored.equals(stock),
    `src/web/socket.io.min.js differs from socket.io-client ${pinned}'s dist/socket.io.min.js: ` +
      "copy it again (README, Web client)",
  );
  assert.match(vendored.subarray(0, 200).toString(), new RegExp(`Socket\\.IO v${pinned.replaceAll(".", "\\.")}\\b`));
  assert.ok(
    fs.readFileSync(LICENSE).equals(fs.readFileSync(path.join(PACKAGE, "LICENSE"))),
    "src/web/socket.io.LICENSE is the package's LICENSE",
  );
});
