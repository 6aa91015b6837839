// Test harness for chatd's Node.js integration suite.
//
// It starts real `chatd run` processes on a fresh data directory, talks to
// them with the stock socket.io-client 4.x, and cleans every process, socket
// and temporary directory up again, failed test or not.
//
// Rules the helpers enforce so the tests stay deterministic:
// - nothing waits by sleeping: every wait is for an event (a stdout line, a
//   Socket.IO event, an ack, a process exit) with a timeout;
// - every socket records every event it receives from the moment it is
//   created, so an event that arrives before the test asks for it (`online`
//   and `history` come right behind the CONNECT) is never lost;
//   `once(socket, name)` hands out the recorded events of that name one by
//   one, oldest first, and waits only when none is left.
//
// Environment:
//   CHATD_BIN              the binary (default: <repo>/target/debug/chatd)
//   CHATD_TEST_TIMEOUT_MS  the default timeout of one wait (default 20000: a
//                          ceiling for waits that take milliseconds, high
//                          enough for an fsync stalled by a busy disk)
//   CHATD_TEST_TLS=0       run every server with --no-tls (debugging aid)
//   CHATD_KEEP_DATA=1      keep the temporary data directories (and print them)
//   CHATD_TEST_VERBOSE=1   echo each server's stdout and stderr to stderr

import { spawn, execFile } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import tls from "node:tls";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { io } from "socket.io-client";

export const REPO_ROOT = path.resolve(fileURLToPath(new URL("../..", import.meta.url)));
export const CHATD_BIN = process.env.CHATD_BIN
  ? path.resolve(process.env.CHATD_BIN)
  : path.join(REPO_ROOT, "target", "debug", "chatd");
export const TIMEOUT = Number(process.env.CHATD_TEST_TIMEOUT_MS) || 20000;
const START_TIMEOUT = Math.max(10000, TIMEOUT);
const STOP_TIMEOUT = Math.max(10000, TIMEOUT);
const FORCE_NO_TLS = process.env.CHATD_TEST_TLS === "0";
const KEEP_DATA = process.env.CHATD_KEEP_DATA === "1";
const VERBOSE = process.env.CHATD_TEST_VERBOSE === "1";

/** The refusal every refused `chat message` gets, with its reason. */
export function refused(reason) {
  return { ok: false, error: "Message is not accepted", reason };
}

/** The documented fields of a message object, in the documented order. */
export const MESSAGE_KEYS = ["roomId", "id", "from", "text", "to", "time", "__v", "ts"];

/** `DD/MM/YYYY, h:mm:ss am|pm` */
export const TIME_RE = /^\d{2}\/\d{2}\/\d{4}, \d{1,2}:\d{2}:\d{2} (am|pm)$/;

/** The direct-message room of two users: names in byte order. */
export function roomOf(a, b) {
  const [x, y] = Buffer.compare(Buffer.from(a), Buffer.from(b)) <= 0 ? [a, b] : [b, a];
  return `dm:${x}_${y}`;
}

// ---------------------------------------------------------------------------
// Bookkeeping: everything the harness starts is ended by cleanup().

const servers = new Set(); // running Server instances
const sockets = new Set(); // socket.io-client sockets not yet closed
const tempDirs = new Set(); // data directories the harness created

/**
 * Closes every socket, kills every server still running and removes every
 * temporary directory. Use it as `after(cleanup)` in each test file; it never
 * throws, so it cannot hide the test's own failure.
 */
export async function cleanup() {
  closeSockets();
  await Promise.all(
    [...servers].map(async (s) => {
      try {
        await s.kill9();
      } catch {
        /* already gone */
      }
    }),
  );
  for (const dir of tempDirs) {
    if (KEEP_DATA) {
      process.stderr.write(`chatd test data kept in ${dir}\n`);
    } else {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  tempDirs.clear();
}

/** Closes every socket the harness opened (e.g. as `afterEach(closeSockets)`). */
export function closeSockets() {
  for (const s of sockets) {
    try {
      s.disconnect();
    } catch {
      /* ignore */
    }
  }
  sockets.clear();
}

// Last resort if a test file dies without running its hooks: never leave a
// server behind.
process.on("exit", () => {
  for (const s of servers) {
    try {
      s.proc.kill("SIGKILL");
    } catch {
      /* ignore */
    }
  }
  if (!KEEP_DATA) {
    for (const dir of tempDirs) {
      try {
        fs.rmSync(dir, { recursive: true, force: true });
      } catch {
        /* ignore */
      }
    }
  }
});

/** A fresh temporary data directory, removed by cleanup(). */
export function makeDataDir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "chatd-node-test-"));
  tempDirs.add(dir);
  return dir;
}

// ---------------------------------------------------------------------------
// Waiting with timeouts.

/** Races `promise` against a timeout; `what` names the wait in the error. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------
// The server process.

/** Line-splits a stream, calling onLine for each complete line. */
function readLines(stream, onLine) {
  let buf = "";
  stream.setEncoding("utf8");
  stream.on("data", (chunk) => {
    buf += chunk;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      onLine(buf.slice(0, i).replace(/\r$/, ""));
      buf = buf.slice(i + 1);
    }
  });
  stream.on("end", () => {
    if (buf.length > 0) onLine(buf.replace(/\r$/, ""));
    buf = "";
  });
}

/**
 * Starts `chatd run` and resolves once it printed `Listening at <port>`.
 *
 * Options:
 *   tls      (default true)  false adds --no-tls
 *   auth     (default false) false adds --no-auth; true makes connect() mint tokens
 *   args     extra command-line arguments, e.g. ["--rate-limit", "0"]
 *   dataDir  an existing data directory (default: a fresh temporary one)
 *   env      extra environment variables for the server (e.g. { TZ: "UTC" })
 */
export async function startServer(options = {}) {
  const server = new Server(options);
  try {
    await server._start();
  } catch (err) {
    if (server.proc) await server.kill9().catch(() => undefined);
    throw err;
  }
  return server;
}

export class Server {
  constructor({ tls: useTls = true, auth = false, args = [], dataDir, env = {} } = {}) {
    this.options = { tls: useTls, auth, args, env };
    this.tls = useTls && !FORCE_NO_TLS;
    this.auth = auth;
    this.dataDir = dataDir ?? makeDataDir();
    this.args = [
      "run",
      "--listen",
      "127.0.0.1:0",
      "--data-dir",
      this.dataDir,
      ...(this.tls ? [] : ["--no-tls"]),
      ...(auth ? [] : ["--no-auth"]),
      ...args,
    ];
    this.env = env;
    /** Every stdout line so far (the console lines of PROTOCOL.md §4). */
    this.lines = [];
    /** The last stderr lines (the logs), for error messages. */
    this.stderrLines = [];
    this.port = undefined;
    this.url = undefined;
    this.ca = undefined;
    this.exited = false;
    this.exitCode = undefined;
    this.exitSignal = undefined;
    this._lineWaiters = new Set();
    this._tokens = new Map();
  }

  async _start() {
    if (!fs.existsSync(CHATD_BIN)) {
      throw new Error(
        `chatd binary not found at ${CHATD_BIN}: build it with \`cargo build --bins\` or set CHATD_BIN`,
      );
    }
    const proc = spawn(CHATD_BIN, this.args, {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, ...this.env },
    });
    this.proc = proc;
    servers.add(this);
    this.exitPromise = new Promise((resolve) => {
      proc.on("exit", (code, signal) => {
        this.exited = true;
        this.exitCode = code;
        this.exitSignal = signal;
        servers.delete(this);
        for (const w of this._lineWaiters) w.onExit();
        resolve({ code, signal });
      });
      proc.on("error", (err) => {
        // spawn failure: no 'exit' follows
        this.spawnError = err;
        this.exited = true;
        servers.delete(this);
        for (const w of this._lineWaiters) w.onExit();
        resolve({ code: null, signal: null, error: err });
      });
    });
    readLines(proc.stdout, (line) => {
      this.lines.push(line);
      if (VERBOSE) process.stderr.write(`[chatd:${proc.pid} out] ${line}\n`);
      for (const w of this._lineWaiters) w.onLine(line, this.lines.length - 1);
    });
    readLines(proc.stderr, (line) => {
      this.stderrLines.push(line);
      if (this.stderrLines.length > 400) this.stderrLines.splice(0, this.stderrLines.length - 300);
      if (VERBOSE) process.stderr.write(`[chatd:${proc.pid} err] ${line}\n`);
    });

    const { match } = await this.waitForLine(/^Listening at (\d+)$/, { timeout: START_TIMEOUT });
    this.port = Number(match[1]);
    assert.ok(this.port > 0 && this.port < 65536, `bad port in ${match[0]}`);
    this.url = `${this.tls ? "https" : "http"}://127.0.0.1:${this.port}`;
    if (this.tls) {
      const certPath = path.join(this.dataDir, "tls", "cert.pem");
      assert.ok(fs.existsSync(certPath), `the server listens with TLS but wrote no ${certPath}`);
      this.ca = fs.readFileSync(certPath);
    }
    return this;
  }

  /** A description of the server's state for error messages. */
  describe() {
    const status = this.exited
      ? `exited with ${this.spawnError ? this.spawnError.message : this.exitSignal ?? `code ${this.exitCode}`}`
      : "running";
    return (
      `chatd (${this.args.join(" ")}) ${status}\n` +
      `--- stdout (last 30 lines) ---\n${this.lines.slice(-30).join("\n")}\n` +
      `--- stderr (last 40 lines) ---\n${this.stderrLines.slice(-40).join("\n")}`
    );
  }

  /** The number of stdout lines so far: a mark to pass as `from` to waitForLine. */
  mark() {
    return this.lines.length;
  }

  /**
   * Waits for a stdout line matching `pattern` (a RegExp, or a string that
   * must equal the whole line) at index `from` (default 0) or later; lines
   * already printed count. Resolves with { line, index, match }. Fails at
   * once if the server exits first, with its stderr in the message.
   */
  waitForLine(pattern, { from = 0, timeout = TIMEOUT } = {}) {
    const test = (line) => {
      if (typeof pattern === "string") return line === pattern ? [line] : null;
      return line.match(pattern);
    };
    for (let i = from; i < this.lines.length; i++) {
      const match = test(this.lines[i]);
      if (match) return Promise.resolve({ line: this.lines[i], index: i, match });
    }
    return new Promise((resolve, reject) => {
      const waiter = {
        onLine: (line, index) => {
          if (index < from) return;
          const match = test(line);
          if (match) done(null, { line, index, match });
        },
        onExit: () =>
          done(new Error(`chatd exited before printing a line matching ${pattern}\n${this.describe()}`)),
      };
      const timer = setTimeout(
        () => done(new Error(`timed out after ${timeout} ms waiting for a line matching ${pattern}\n${this.describe()}`)),
        timeout,
      );
      const done = (err, value) => {
        clearTimeout(timer);
        this._lineWaiters.delete(waiter);
        if (err) reject(err);
        else resolve(value);
      };
      this._lineWaiters.add(waiter);
      if (this.exited) waiter.onExit();
    });
  }

  /** Stdout lines from index `from` on. */
  linesSince(from) {
    return this.lines.slice(from);
  }

  /** SIGTERM, wait for the exit and assert a graceful stop: exit code 0. */
  async stop({ timeout = STOP_TIMEOUT } = {}) {
    if (!this.exited) this.proc.kill("SIGTERM");
    let result;
    try {
      result = await withTimeout(this.exitPromise, timeout, "chatd to exit after SIGTERM");
    } catch (err) {
      this.proc.kill("SIGKILL");
      await this.exitPromise;
      throw new Error(`${err.message}\n${this.describe()}`);
    }
    assert.equal(result.signal, null, `chatd died of ${result.signal} after SIGTERM\n${this.describe()}`);
    assert.equal(result.code, 0, `chatd exited with code ${result.code} after SIGTERM\n${this.describe()}`);
    return result;
  }

  /** SIGKILL (a crash) and wait for the exit. */
  async kill9() {
    if (!this.exited) this.proc.kill("SIGKILL");
    return withTimeout(this.exitPromise, STOP_TIMEOUT, "chatd to exit after SIGKILL");
  }

  /**
   * Starts a new server on the same data directory with the same options
   * (overridable); this one must have been stopped or killed. The new server
   * listens on a new port: connect to the returned instance.
   */
  async restart(overrides = {}) {
    assert.ok(this.exited, "restart() needs the old server stopped first (stop() or kill9())");
    return startServer({ ...this.options, ...overrides, dataDir: this.dataDir });
  }

  /** Runs another chatd command on this server's data directory. */
  command(args, { timeout = START_TIMEOUT } = {}) {
    return runChatd([...args, "--data-dir", this.dataDir], { timeout, env: this.env });
  }

  /** A token for `user` from `chatd token USER --data-dir DIR [--ttl T]`. */
  async token(user, { ttl } = {}) {
    const { stdout } = await this.command(["token", user, ...(ttl ? ["--ttl", ttl] : [])]);
    const token = stdout.trim();
    assert.match(token, /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/, `chatd token printed ${JSON.stringify(stdout)}`);
    return token;
  }

  /** The token secret: the trimmed content of DIR/jwt-secret. */
  jwtSecret() {
    return fs.readFileSync(path.join(this.dataDir, "jwt-secret"), "utf8").trim();
  }

  /**
   * A JWT crafted in the test: HS256 over header.payload, signed with this
   * server's secret unless `secret` is given. `claims` are the payload
   * (e.g. { sub, exp }); `header` overrides the header.
   */
  craftToken(claims, { secret = this.jwtSecret(), header = { alg: "HS256", typ: "JWT" } } = {}) {
    return signJwt(header, claims, secret);
  }

  /** Socket.IO client options for this server (TLS verified against its own certificate). */
  clientOptions(extra = {}) {
    return {
      transports: ["websocket"],
      forceNew: true,
      reconnection: false,
      timeout: TIMEOUT,
      ...(this.tls ? { ca: this.ca, checkServerIdentity } : {}),
      ...extra,
    };
  }

  /**
   * Opens a socket as `user` talking to `peer` (undefined/null: no peer) and
   * resolves with it once connected; rejects with the connect_error.
   *
   * extra:
   *   token    the token (default: minted with `chatd token` when the server
   *            runs with auth); null sends none
   *   since    the `since` field of the auth payload
   *   auth     the whole auth payload, replacing user/peer/token/since
   *   query    handshake query parameters
   *   nsp      the namespace (default "/")
   *   options  more socket.io-client options
   *   timeout  how long to wait for connect / connect_error
   */
  async connect(user, peer, extra = {}) {
    const socket = await this.open(user, peer, extra);
    return withTimeout(
      new Promise((resolve, reject) => {
        socket.once("connect", () => resolve(socket));
        socket.once("connect_error", (err) => reject(err));
      }),
      extra.timeout ?? TIMEOUT,
      `${user} to connect\n${this.describe()}`,
    );
  }

  /** Like connect(), but expects the handshake to be refused: resolves with the connect_error. */
  async connectError(user, peer, extra = {}) {
    const socket = await this.open(user, peer, extra);
    const outcome = await withTimeout(
      new Promise((resolve) => {
        socket.once("connect", () => resolve({ connected: true }));
        socket.once("connect_error", (err) => resolve({ err }));
      }),
      extra.timeout ?? TIMEOUT,
      `${user}'s connection to be refused\n${this.describe()}`,
    );
    socket.disconnect();
    sockets.delete(socket);
    if (outcome.connected) {
      assert.fail(`expected the handshake of ${JSON.stringify({ user, peer })} to be refused, but it connected`);
    }
    return outcome.err;
  }

  /** Creates the socket (recording its events) without waiting for the connection. */
  async open(user, peer, extra = {}) {
    let auth = extra.auth;
    if (auth === undefined) {
      let token = extra.token;
      if (token === undefined && this.auth && user) token = await this.cachedToken(user);
      auth = {};
      if (user !== undefined && user !== null) auth.user = user;
      if (peer !== undefined && peer !== null) auth.peer = peer;
      if (token !== undefined && token !== null) auth.token = token;
      if (extra.since !== undefined) auth.since = extra.since;
    }
    const opts = this.clientOptions({ ...(extra.options ?? {}) });
    if (auth !== null) opts.auth = auth;
    if (extra.query) opts.query = extra.query;
    const socket = io(this.url + (extra.nsp ?? "/"), opts);
    record(socket, { server: this, user });
    sockets.add(socket);
    return socket;
  }

  async cachedToken(user) {
    if (!this._tokens.has(user)) this._tokens.set(user, await this.token(user));
    return this._tokens.get(user);
  }
}

/**
 * The certificate chain is verified against the server's own certificate
 * (`ca`); for the host name, a certificate for either 127.0.0.1 (IP SAN) or
 * localhost is accepted, since the tests connect by address.
 */
function checkServerIdentity(host, cert) {
  const err = tls.checkServerIdentity(host, cert);
  if (!err) return undefined;
  return tls.checkServerIdentity("localhost", cert) ? err : undefined;
}

/** Runs `chatd ARGS...`; resolves with { stdout, stderr }, rejects on a non-zero exit. */
export function runChatd(args, { timeout = START_TIMEOUT, env = {} } = {}) {
  return new Promise((resolve, reject) => {
    execFile(CHATD_BIN, args, { timeout, env: { ...process.env, ...env } }, (err, stdout, stderr) => {
      if (err) {
        err.message = `chatd ${args.join(" ")} failed: ${err.message}\nstdout: ${stdout}\nstderr: ${stderr}`;
        err.stdout = stdout;
        err.stderr = stderr;
        reject(err);
      } else {
        resolve({ stdout, stderr });
      }
    });
  });
}

const b64url = (x) => Buffer.from(typeof x === "string" ? x : JSON.stringify(x)).toString("base64url");

/** An HS256 JWT (no library: HMAC-SHA256 over base64url(header).base64url(payload)). */
export function signJwt(header, payload, secret) {
  const input = `${b64url(header)}.${b64url(payload)}`;
  const sig = crypto.createHmac("sha256", Buffer.from(secret, "utf8")).update(input).digest("base64url");
  return `${input}.${sig}`;
}

/** Seconds since the epoch, for JWT claims. */
export const nowSeconds = () => Math.floor(Date.now() / 1000);

// ---------------------------------------------------------------------------
// Sockets: event recording and waiting.

const REC = Symbol("chatd-recorder");

function record(socket, { server, user }) {
  const rec = {
    server,
    user,
    queues: new Map(), // event name -> payloads not yet handed out
    waiters: new Map(), // event name -> [{ resolve }]
    seen: [], // every event name, in arrival order (for error messages)
    handshake: undefined, // the Engine.IO open packet
    lastOnline: undefined, // for expectOnline
  };
  socket[REC] = rec;
  const push = (name, args) => {
    rec.seen.push(name);
    const waiting = rec.waiters.get(name);
    if (waiting && waiting.length > 0) {
      waiting.shift().resolve(args);
      return;
    }
    if (!rec.queues.has(name)) rec.queues.set(name, []);
    rec.queues.get(name).push(args);
  };
  socket.onAny((event, ...args) => push(event, args));
  socket.on("disconnect", (reason, description) => push("disconnect", [reason, description]));
  socket.on("connect_error", (err) => push("connect_error", [err]));
  // The engine exists as soon as io() returns (autoConnect); its handshake
  // is the Engine.IO open packet with pingInterval, pingTimeout, maxPayload.
  socket.io.engine?.on("handshake", (data) => {
    rec.handshake = data;
  });
  return rec;
}

function recorder(socket) {
  const rec = socket[REC];
  assert.ok(rec, "not a socket opened by the harness");
  return rec;
}

/** The Engine.IO handshake (open packet) data of a connected socket. */
export function handshakeOf(socket) {
  return recorder(socket).handshake;
}

/**
 * The next event `name` on `socket` (the oldest one recorded and not yet
 * handed out, or the next to arrive): resolves with its first argument.
 */
export async function once(socket, name, timeout = TIMEOUT) {
  const args = await nextArgs(socket, name, timeout);
  return args[0];
}

/** Like once(), resolving with all the event's arguments. */
export function nextArgs(socket, name, timeout = TIMEOUT) {
  const rec = recorder(socket);
  const queue = rec.queues.get(name);
  if (queue && queue.length > 0) return Promise.resolve(queue.shift());
  return new Promise((resolve, reject) => {
    const waiter = {
      resolve: (args) => {
        clearTimeout(timer);
        resolve(args);
      },
    };
    const timer = setTimeout(() => {
      const list = rec.waiters.get(name);
      const i = list.indexOf(waiter);
      if (i >= 0) list.splice(i, 1);
      reject(
        new Error(
          `timed out after ${timeout} ms waiting for event "${name}" on ${rec.user}'s socket ` +
            `(events so far: ${summarize(rec.seen)})\n${rec.server.describe()}`,
        ),
      );
    }, timeout);
    if (!rec.waiters.has(name)) rec.waiters.set(name, []);
    rec.waiters.get(name).push(waiter);
  });
}

/** The next `n` events `name`, in arrival order (first arguments). */
export async function collect(socket, name, n, timeout = TIMEOUT) {
  const out = [];
  const deadline = Date.now() + timeout;
  while (out.length < n) {
    const left = deadline - Date.now();
    try {
      out.push(await once(socket, name, Math.max(1, left)));
    } catch (err) {
      err.message = `got ${out.length} of ${n} "${name}" events: ${err.message}`;
      throw err;
    }
  }
  return out;
}

/**
 * The events `name` recorded and not yet handed out, without waiting (first
 * arguments); they count as handed out afterwards. For negative checks after
 * an event-ordered barrier.
 */
export function drain(socket, name) {
  const rec = recorder(socket);
  const queue = rec.queues.get(name) ?? [];
  rec.queues.set(name, []);
  return queue.map((args) => args[0]);
}

/** How many events `name` are recorded and not yet handed out. */
export function pending(socket, name) {
  return recorder(socket).queues.get(name)?.length ?? 0;
}

function summarize(seen) {
  if (seen.length === 0) return "none";
  const parts = [];
  for (const name of seen) {
    const last = parts[parts.length - 1];
    if (last && last.name === name) last.n++;
    else parts.push({ name, n: 1 });
  }
  return parts.map((p) => (p.n > 1 ? `${p.name} x${p.n}` : p.name)).join(", ");
}

/**
 * Waits for the `online` event with the set `expected`. Consecutive repeats
 * of the set this socket saw last are skipped (re-announcing an unchanged set
 * is harmless); any other set fails the test.
 */
export async function expectOnline(socket, expected, timeout = TIMEOUT) {
  const rec = recorder(socket);
  const deadline = Date.now() + timeout;
  for (;;) {
    const got = await once(socket, "online", Math.max(1, deadline - Date.now()));
    if (isDeepEqual(got, expected)) {
      rec.lastOnline = got;
      return got;
    }
    if (rec.lastOnline !== undefined && isDeepEqual(got, rec.lastOnline)) continue;
    assert.deepEqual(got, expected, `${rec.user}'s online event`);
  }
}

function isDeepEqual(a, b) {
  try {
    assert.deepStrictEqual(a, b);
    return true;
  } catch {
    return false;
  }
}

/** Waits for the socket to be disconnected; resolves with the reason. */
export async function disconnected(socket, timeout = TIMEOUT) {
  const [reason] = await nextArgs(socket, "disconnect", timeout);
  return reason;
}

/** Disconnects a socket and forgets it. Returns its id (gone from socket.id afterwards). */
export function close(socket) {
  const id = socket.id;
  socket.disconnect();
  sockets.delete(socket);
  return id;
}

/**
 * Emits `event` with `args` and resolves with the ack; fails after `timeout`
 * (ms) or when the socket disconnects.
 */
export async function ack(socket, event, ...args) {
  return ackWithin(TIMEOUT, socket, event, ...args);
}

export async function ackWithin(timeout, socket, event, ...args) {
  try {
    return await socket.timeout(timeout).emitWithAck(event, ...args);
  } catch (err) {
    const rec = socket[REC];
    err.message = `no ack for "${event}" within ${timeout} ms (${err.message})${rec ? `\n${rec.server.describe()}` : ""}`;
    throw err;
  }
}

/** Sends a `chat message` (a string or { text, to }) and resolves with the ack. */
export function send(socket, payload, timeout = TIMEOUT) {
  return ackWithin(timeout, socket, "chat message", payload);
}

/** Sends a message that must be accepted; resolves with the stored message object. */
export async function sendOk(socket, payload, timeout = TIMEOUT) {
  const reply = await send(socket, payload, timeout);
  assert.equal(reply?.ok, true, `message ${JSON.stringify(payload).slice(0, 80)} was not accepted: ${JSON.stringify(reply)}`);
  return reply.message;
}

/** A `history` request; resolves with the ack. */
export function history(socket, request = {}, timeout = TIMEOUT) {
  return ackWithin(timeout, socket, "history", request);
}

/** A `history` request that must succeed; resolves with the messages. */
export async function historyOk(socket, request = {}, timeout = TIMEOUT) {
  const reply = await history(socket, request, timeout);
  assert.equal(reply?.ok, true, `history ${JSON.stringify(request)} failed: ${JSON.stringify(reply)}`);
  assert.ok(Array.isArray(reply.messages), `history reply without messages: ${JSON.stringify(reply)}`);
  return reply.messages;
}

/** The whole history of the socket's room (or of `peer`'s), paging forwards with `after`. */
export async function fullHistory(socket, { peer } = {}) {
  const all = [];
  let after = 0;
  for (;;) {
    const page = await historyOk(socket, { ...(peer ? { peer } : {}), after, limit: 200 });
    all.push(...page);
    if (page.length < 200) return all;
    after = page[page.length - 1].ts;
  }
}

// ---------------------------------------------------------------------------
// Message checks.

/**
 * Asserts a message object has exactly the documented keys in order, the
 * given field values, a well-formed `time`, `__v` 0 and a plausible `ts`
 * (microseconds, within 10 minutes of this machine's clock).
 */
export function assertMessage(m, expected = {}) {
  assert.ok(m && typeof m === "object" && !Array.isArray(m), `not a message object: ${JSON.stringify(m)}`);
  assert.deepEqual(Object.keys(m), MESSAGE_KEYS, `message keys (in order) of ${JSON.stringify(m)}`);
  for (const [k, v] of Object.entries(expected)) assert.deepEqual(m[k], v, `message field ${k}`);
  assert.equal(typeof m.roomId, "string");
  assert.equal(typeof m.id, "string");
  assert.ok(m.id.length > 0, "message id is empty");
  assert.equal(typeof m.from, "string");
  assert.equal(typeof m.text, "string");
  assert.equal(typeof m.to, "string");
  assert.equal(m.roomId, roomOf(m.from, m.to), "roomId is the room of from and to");
  assert.match(m.time, TIME_RE);
  assert.equal(m.__v, 0);
  assert.ok(Number.isSafeInteger(m.ts), `ts is not an integer: ${m.ts}`);
  const driftMs = Math.abs(m.ts / 1000 - Date.now());
  assert.ok(driftMs < 10 * 60 * 1000, `ts ${m.ts} is not microseconds since the epoch near now`);
  return m;
}

/** Asserts the ts of the messages strictly increase. */
export function assertTsIncreasing(messages, what = "messages") {
  for (let i = 1; i < messages.length; i++) {
    assert.ok(
      messages[i].ts > messages[i - 1].ts,
      `${what}: ts not strictly increasing at ${i}: ${messages[i - 1].ts} then ${messages[i].ts}`,
    );
  }
}

/**
 * The `time` string a ts (µs) formats to with the given UTC offset in
 * minutes: `DD/MM/YYYY, h:mm:ss am|pm`.
 */
export function formatTime(tsMicros, offsetMinutes = 0) {
  const d = new Date(Math.floor(tsMicros / 1000) + offsetMinutes * 60000);
  const p2 = (n) => String(n).padStart(2, "0");
  const h24 = d.getUTCHours();
  const h12 = h24 % 12 === 0 ? 12 : h24 % 12;
  return (
    `${p2(d.getUTCDate())}/${p2(d.getUTCMonth() + 1)}/${d.getUTCFullYear()}, ` +
    `${h12}:${p2(d.getUTCMinutes())}:${p2(d.getUTCSeconds())} ${h24 < 12 ? "am" : "pm"}`
  );
}

/**
 * Asserts `time` is the formatting of `ts` with the UTC offset (allowing the
 * server to have read its clock for `time` up to a second apart from `ts`).
 */
export function assertTimeMatchesTs(m, offsetMinutes = 0) {
  const candidates = [0, -1_000_000, 1_000_000].map((d) => formatTime(m.ts + d, offsetMinutes));
  assert.ok(
    candidates.includes(m.time),
    `time ${JSON.stringify(m.time)} is not ts ${m.ts} at UTC${offsetMinutes >= 0 ? "+" : ""}${offsetMinutes / 60} (expected ${candidates[0]})`,
  );
}
