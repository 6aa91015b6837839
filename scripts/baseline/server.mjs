// The benchmark baseline: the same events as chatd's contract (PROTOCOL.md
// §1) on the stock Node.js Socket.IO server, with history in memory. It is
// what chatd replaces, measured in the same run by scripts/bench.sh.
//
// node server.mjs --port N [--no-auth]   (plain ws/http; auth skipped; port 0
// picks a free one, and `Listening at N` says which, as chatd does)
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.argv[process.argv.indexOf("--port") + 1] || 5001);
const httpServer = createServer();
const io = new Server(httpServer, { pingInterval: 25000, pingTimeout: 20000, maxHttpBufferSize: 65536 });
const NAME = /^[A-Za-z0-9][A-Za-z0-9.-]{0,31}$/;
const rooms = new Map(); // room -> [message]
const users = new Map(); // user -> Set(socket)
const members = new Map(); // room -> Map(user -> count)
let lastTs = 0;

const roomOf = (a, b) => (a < b ? `dm:${a}_${b}` : `dm:${b}_${a}`);
const online = (room) => [...(members.get(room)?.keys() ?? [])].sort();
const two = (n) => String(n).padStart(2, "0");
const stamp = (ms) => {
  const d = new Date(ms);
  const h = d.getUTCHours() % 12 || 12;
  return `${two(d.getUTCDate())}/${two(d.getUTCMonth() + 1)}/${d.getUTCFullYear()}, ${h}:${two(d.getUTCMinutes())}:${two(d.getUTCSeconds())} ${d.getUTCHours() < 12 ? "am" : "pm"}`;
};
const refusal = (reason) => ({ ok: false, error: "Message is not accepted", reason });

io.use((socket, next) => {
  const { user, peer } = { ...socket.handshake.query, ...socket.handshake.auth };
  if (!NAME.test(user ?? "")) return next(new Error("invalid handshake: user"));
  if (peer !== undefined && (!NAME.test(peer) || peer === user)) return next(new Error("invalid handshake: peer"));
  socket.data = { user, peer, room: peer ? roomOf(user, peer) : null };
  next();
});

io.on("connection", (socket) => {
  const { user, peer, room } = socket.data;
  if (!users.has(user)) users.set(user, new Set());
  users.get(user).add(socket);
  if (room) {
    socket.join(room);
    const m = members.get(room) ?? new Map();
    members.set(room, m);
    const before = m.size;
    m.set(user, (m.get(user) ?? 0) + 1);
    if (m.size !== before) socket.to(room).emit("online", online(room));
    socket.emit("online", online(room));
    socket.emit("history", (rooms.get(room) ?? []).slice(-50));
  } else {
    socket.emit("online", [user]);
  }

  socket.on("chat message", (payload, ack) => {
    const answer = typeof ack === "function" ? ack : (r) => socket.emit("chat error", r);
    let text, to;
    if (typeof payload === "string") [text, to] = [payload, peer];
    else if (payload && typeof payload === "object" && typeof payload.text === "string") [text, to] = [payload.text, payload.to ?? peer];
    else return answer(refusal("bad_payload"));
    if (!text.trim()) return answer(refusal("empty"));
    if (Buffer.byteLength(text) > 4096) return answer(refusal("too_long"));
    if (!to) return answer(refusal("no_peer"));
    if (!NAME.test(to) || to === user) return answer(refusal("invalid_peer"));
    const now = Date.now() * 1000;
    lastTs = Math.max(now, lastTs + 1);
    const roomId = roomOf(user, to);
    const message = { roomId, id: socket.id, from: user, text, to, time: stamp(lastTs / 1000), __v: 0, ts: lastTs };
    if (!rooms.has(roomId)) rooms.set(roomId, []);
    rooms.get(roomId).push(message);
    for (const name of [user, to]) for (const s of users.get(name) ?? []) if (s !== socket) s.emit("chat message", message);
    if (typeof ack === "function") ack({ ok: true, message });
  });

  socket.on("disconnect", () => {
    users.get(user)?.delete(socket);
    if (users.get(user)?.size === 0) users.delete(user);
    if (room) {
      const m = members.get(room);
      const left = (m.get(user) ?? 1) - 1;
      if (left === 0) {
        m.delete(user);
        io.to(room).emit("online", online(room));
      } else m.set(user, left);
    }
  });
});
httpServer.listen(port, () => console.log(`Listening at ${httpServer.address().port}`));
