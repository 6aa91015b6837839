// The page's chat client: the stock socket.io-client browser bundle with its
// default options (HTTP long-polling, then the upgrade to websocket).
"use strict";

const params = new URLSearchParams(location.search);
const socket = io(params.get("server"), {
  auth: { user: params.get("user"), peer: params.get("peer"), token: params.get("token") },
});
window.socket = socket;

const $ = (id) => document.getElementById(id);
const li = (text) => Object.assign(document.createElement("li"), { textContent: text });
const show = (text) => $("messages").append(li(text));

// The transports this session used, in order (the test checks the upgrade).
window.transports = [socket.io.engine.transport.name];
$("transport").textContent = window.transports[0];
socket.io.engine.on("upgrade", (transport) => {
  window.transports.push(transport.name);
  $("transport").textContent = transport.name;
});

socket.on("connect", () => ($("status").textContent = "connected"));
socket.on("disconnect", (reason) => ($("status").textContent = `disconnected (${reason})`));
socket.on("connect_error", (err) => ($("status").textContent = `error: ${err.message}`));

socket.on("online", (users) => $("online").replaceChildren(...users.map(li)));
socket.on("history", (messages) => messages.forEach((m) => show(`${m.from} : ${m.text}`)));
socket.on("chat message", (m) => show(`${m.from} : ${m.text}`));

/** Sends a message; shows it as `You : text` once the server acked it. Resolves with the ack. */
window.send = async (text) => {
  const reply = await socket.emitWithAck("chat message", text);
  show(reply.ok ? `You : ${text}` : `Not sent (${reply.reason}): ${text}`);
  return reply;
};

$("send").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value;
  $("text").value = "";
  window.send(text);
});
