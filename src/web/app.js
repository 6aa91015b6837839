// chatd's built-in web client (served at GET /, see README "Web client").
//
// Connections (PROTOCOL.md §1): every connection of a user receives the
// user's messages, read receipts and the peers' typing, whatever its peer.
// So the client keeps
// - one "inbox" connection without a peer: the conversation list
//   (`conversations`, paged) kept up to date by the live events;
// - one connection with `peer` for the open conversation: its `history` on
//   connect (and with `since` after a reconnect, exactly what was missed),
//   the peer's presence (`online`), sending, `read`, `typing` and paging back
//   with `history {before}`. Opening another conversation replaces it.
// Server limits respected in normal use: at most one `history` or
// `conversations` request in flight per connection (10/s allowed), `typing`
// at most every 3 s while typing (5/s allowed), and new rooms only when the
// user writes to someone new (60/min allowed).
"use strict";

(() => {
  const PAGE = 50; // messages per history page (the server's default)
  const LIST_PAGE = 30; // conversations per page
  const ACK_TIMEOUT = 10000; // ms before an unacknowledged send may be retried
  const TYPING_REPEAT = 3000; // ms between `typing: true` while typing (it holds 5 s)
  const TYPING_IDLE = 4000; // ms without a keystroke before `typing: false`
  const TYPING_SHOWN = 6000; // ms a peer's `typing: true` is shown without a repeat
  const NAME = /^[A-Za-z0-9][A-Za-z0-9.-]{0,31}$/;

  const $ = (id) => document.getElementById(id);
  const el = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  };

  /** A fresh client id for a message (`cid`): resending it is safe. */
  function newCid() {
    if (crypto.randomUUID) return crypto.randomUUID();
    // Pages served over plain http to another host are not a secure context.
    return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  /** The direct-message room of two users (names in byte order). */
  function roomOf(a, b) {
    return a < b ? `dm:${a}_${b}` : `dm:${b}_${a}`;
  }

  /** A message's time, in the reader's own time zone. */
  function when(ts) {
    const date = new Date(ts / 1000);
    const today = new Date().toDateString() === date.toDateString();
    return today ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : date.toLocaleDateString();
  }

  // ------------------------------------------------------------------
  // State.

  let me = null; // { user, token }
  let inbox = null; // the peerless connection
  /** roomId → { roomId, peer, last, unread, read, peerRead } */
  const rooms = new Map();
  let moreRooms = false;
  let listRequest = null; // the `conversations` request in flight
  let listRefresh = null; // timer of a pending refresh of the first page
  let open = null; // the open conversation (see openConversation)

  function setStatus(text) {
    $("status").textContent = text;
  }

  // ------------------------------------------------------------------
  // Signing in and out.

  function showSignIn(error) {
    $("app").hidden = true;
    $("whoami").hidden = true;
    $("signin").hidden = false;
    $("signin-error").textContent = error || "";
    setStatus("");
    $(me || !$("user").value ? "user" : "token").focus();
  }

  function signIn(user, token) {
    signOut(false);
    me = { user, token };
    const auth = token ? { user, token } : { user };
    const socket = io({ auth, forceNew: true });
    inbox = socket;
    setStatus("connecting…");
    socket.on("connect", () => {
      sessionStorage.setItem("chatd", JSON.stringify(me));
      $("signin").hidden = true;
      $("app").hidden = false;
      $("whoami").hidden = false;
      $("me").textContent = user;
      setStatus("connected");
      loadConversations(false);
    });
    socket.on("connect_error", (err) => {
      if (socket !== inbox) return;
      if (socket.active) {
        // A network error: socket.io-client retries on its own.
        setStatus("cannot reach the server, retrying…");
        return;
      }
      // The server refused the handshake: no retry would help.
      const refused = err.message === "unauthorized";
      signOut(false);
      showSignIn(
        refused && !token
          ? "This server needs a token for this user (chatd token NAME prints one)."
          : refused
            ? "The server refused this user name and token."
            : `The server refused to connect: ${err.message}`,
      );
    });
    socket.on("disconnect", (reason) => {
      if (socket !== inbox) return;
      // An answer lost with the connection must not hold up the reload on reconnect.
      listRequest = null;
      if (socket.active) setStatus(`disconnected (${reason}), reconnecting…`);
    });
    socket.on("chat message", onInboxMessage);
    socket.on("read", onInboxRead);
    socket.on("typing", onInboxTyping);
  }

  /** Closes every connection; `forget` also drops the stored sign-in. */
  function signOut(forget) {
    closeConversation();
    inbox?.disconnect();
    inbox = null;
    me = null;
    rooms.clear();
    clearTimeout(listRefresh);
    listRefresh = null;
    listRequest = null;
    renderList();
    if (forget) sessionStorage.removeItem("chatd");
  }

  $("signin").addEventListener("submit", (event) => {
    event.preventDefault();
    const user = $("user").value.trim();
    if (!NAME.test(user)) {
      $("signin-error").textContent = "A user name is 1–32 letters, digits, dots or dashes, starting with a letter or digit.";
      return;
    }
    $("signin-error").textContent = "";
    signIn(user, $("token").value.trim());
  });

  $("signout").addEventListener("click", () => {
    signOut(true);
    $("token").value = "";
    showSignIn();
  });

  // ------------------------------------------------------------------
  // The conversation list.

  /** Fetches the first page (merged into the list: exact counts) or, with `more`, the next one. */
  function loadConversations(more) {
    if (!inbox || listRequest) return;
    const sorted = sortedRooms();
    const last = sorted[sorted.length - 1];
    const request = more && last ? { before: last.last.ts, beforeRoom: last.roomId, limit: LIST_PAGE } : { limit: LIST_PAGE };
    const mine = inbox.timeout(ACK_TIMEOUT).emitWithAck("conversations", request);
    listRequest = mine;
    mine.then(
      (answer) => {
        if (listRequest !== mine) return; // signed out, or the connection was lost meanwhile
        listRequest = null;
        if (!answer.ok) {
          setStatus(`the conversation list failed: ${answer.error}`);
          return;
        }
        for (const entry of answer.conversations) {
          const known = rooms.get(entry.roomId);
          // A live event may be newer than the answer.
          if (!known || known.last.ts <= entry.last.ts) rooms.set(entry.roomId, entry);
        }
        if (more || !moreRooms) moreRooms = answer.conversations.length === LIST_PAGE;
        renderList();
        if (open) showSeen();
      },
      () => {
        if (listRequest === mine) listRequest = null;
      },
    );
  }

  /** Refreshes the first page soon (at most once a second): exact unread counts. */
  function refreshSoon() {
    if (listRefresh) return;
    listRefresh = setTimeout(() => {
      listRefresh = null;
      loadConversations(false);
    }, 1000);
  }

  function sortedRooms() {
    return [...rooms.values()].sort((a, b) => b.last.ts - a.last.ts || (a.roomId < b.roomId ? -1 : 1));
  }

  function renderList() {
    const list = $("conversations");
    const items = sortedRooms().map((room) => {
      const button = el("button");
      button.type = "button";
      button.dataset.peer = room.peer;
      if (open?.roomId === room.roomId) button.setAttribute("aria-current", "true");
      button.append(el("span", "peer", room.peer));
      button.append(el("span", "when", when(room.last.ts)));
      const typing = room.typingUntil > Date.now();
      const last = typing ? "typing…" : `${room.last.from === me?.user ? "You: " : ""}${room.last.text}`;
      button.append(el("span", "last", last));
      if (room.unread > 0) {
        const badge = el("span", "badge", String(room.unread));
        badge.setAttribute("aria-label", `${room.unread} unread`);
        button.append(badge);
      }
      button.addEventListener("click", () => openConversation(room.peer));
      const item = el("li");
      item.append(button);
      return item;
    });
    // Keep the keyboard user's place in the list across the re-render.
    const focused = list.contains(document.activeElement) ? document.activeElement.dataset.peer : null;
    list.replaceChildren(...items);
    if (focused) list.querySelector(`button[data-peer="${focused}"]`)?.focus();
    $("no-conversations").hidden = items.length > 0 || !me;
    $("more-conversations").hidden = !moreRooms;
  }

  $("more-conversations").addEventListener("click", () => loadConversations(true));

  /** The list entry of a message's room, made if it is new. */
  function roomFor(message) {
    let room = rooms.get(message.roomId);
    if (!room) {
      const peer = message.from === me.user ? message.to : message.from;
      room = { roomId: message.roomId, peer, last: message, unread: 0, read: 0, peerRead: 0 };
      rooms.set(message.roomId, room);
    }
    return room;
  }

  function onInboxMessage(message) {
    const room = roomFor(message);
    if (message.ts < room.last.ts) return;
    room.last = message;
    room.typingUntil = 0;
    // Who writes has read what came before (no `read` event tells that).
    if (message.from === me.user) {
      room.read = message.ts;
      room.unread = 0;
    } else {
      room.peerRead = Math.max(room.peerRead, message.ts);
      const seen = open?.roomId === room.roomId && open.seesLatest();
      if (message.ts > room.read && !seen) room.unread += 1;
    }
    renderList();
  }

  function onInboxRead({ roomId, user, ts }) {
    const room = rooms.get(roomId);
    if (!room) return;
    if (user === me.user) {
      if (ts <= room.read) return;
      room.read = ts;
      if (ts >= room.last.ts) room.unread = 0;
      else refreshSoon(); // read part of it elsewhere: ask for the exact count
    } else {
      room.peerRead = Math.max(room.peerRead, ts);
    }
    renderList();
  }

  function onInboxTyping({ roomId, typing }) {
    const room = rooms.get(roomId);
    if (!room) return;
    room.typingUntil = typing ? Date.now() + TYPING_SHOWN : 0;
    renderList();
    if (typing) setTimeout(renderList, TYPING_SHOWN + 50);
  }

  $("start").addEventListener("submit", (event) => {
    event.preventDefault();
    const peer = $("peer").value.trim();
    if (!NAME.test(peer) || peer === me.user) {
      $("start-error").textContent = peer === me.user ? "That is you." : "Not a valid user name.";
      return;
    }
    $("start-error").textContent = "";
    $("peer").value = "";
    openConversation(peer);
  });

  // ------------------------------------------------------------------
  // The open conversation.

  function openConversation(peer) {
    if (open?.peer === peer) {
      $("text").focus();
      return;
    }
    closeConversation();
    const roomId = roomOf(me.user, peer);
    const conversation = {
      peer,
      roomId,
      /** ts → message, and the rendered items in ts order */
      messages: new Map(),
      pending: new Map(), // cid → list item of a message not yet acknowledged
      newest: 0,
      oldest: Infinity,
      older: false, // more history before `oldest`
      paging: false, // a `history` request in flight
      read: 0, // my read cursor as this page last set it
      peerRead: 0, // the peer's, as learnt here (the list entry may know more)
      typingSent: 0, // when `typing: true` was last sent
      typingIdle: null,
      peerTypingTimer: null,
      /** True if the reader can see the newest message: the page is shown and scrolled to the end. */
      seesLatest() {
        const list = $("messages");
        return document.visibilityState === "visible" && list.scrollTop + list.clientHeight >= list.scrollHeight - 24;
      },
      socket: null,
    };
    open = conversation;
    const auth = (cb) => {
      const fields = { user: me.user, peer };
      if (me.token) fields.token = me.token;
      // After a reconnect: only what this page missed.
      if (conversation.newest) fields.since = conversation.newest;
      cb(fields);
    };
    const socket = io({ auth, forceNew: true });
    conversation.socket = socket;

    $("peer-name").textContent = peer;
    $("presence").textContent = "";
    $("typing").textContent = "";
    $("conversation-error").textContent = "";
    $("messages").replaceChildren();
    $("older").hidden = true;
    $("conversation").hidden = false;
    renderList();

    // `online` counts the users with a connection in this room: whether
    // the peer has this conversation open, not whether they are online.
    socket.on("online", (users) => {
      const here = users.includes(peer);
      $("presence").textContent = here ? "here now" : "";
      $("presence").className = here ? "online" : "";
    });
    socket.on("history", (messages) => {
      const first = conversation.newest === 0;
      addMessages(conversation, messages);
      if (first) {
        conversation.older = messages.length === PAGE;
        $("older").hidden = !conversation.older;
        scrollToEnd();
      } else if (messages.length === 200) {
        catchUp(conversation); // away long: page on with `after`
      }
      markRead(conversation);
    });
    socket.on("chat message", (message) => {
      if (message.roomId !== roomId) return;
      const follow = conversation.seesLatest();
      addMessages(conversation, [message]);
      if (message.from === peer) {
        showPeerTyping(conversation, false);
        conversation.peerRead = Math.max(conversation.peerRead, message.ts);
      }
      if (follow) scrollToEnd();
      markRead(conversation);
    });
    socket.on("read", ({ roomId: room, user, ts }) => {
      if (room !== roomId || user !== peer) return;
      conversation.peerRead = Math.max(conversation.peerRead, ts);
      showSeen();
    });
    socket.on("typing", ({ roomId: room, typing }) => {
      if (room === roomId) showPeerTyping(conversation, typing);
    });
    socket.on("connect_error", (err) => {
      if (!socket.active) $("conversation-error").textContent = `Cannot open this conversation: ${err.message}`;
    });
    $("text").focus();
  }

  function closeConversation() {
    if (!open) return;
    const conversation = open;
    open = null;
    if (conversation.typingSent) conversation.socket.emit("typing", { typing: false });
    clearTimeout(conversation.typingIdle);
    clearTimeout(conversation.peerTypingTimer);
    conversation.socket.disconnect();
    $("conversation").hidden = true;
  }

  /** Pages forwards after a long absence, one request at a time. */
  function catchUp(conversation) {
    if (conversation.paging) return;
    conversation.paging = true;
    conversation.socket
      .timeout(ACK_TIMEOUT)
      .emitWithAck("history", { after: conversation.newest, limit: 200 })
      .then(
        (answer) => {
          conversation.paging = false;
          if (!answer.ok || open !== conversation) return;
          addMessages(conversation, answer.messages);
          markRead(conversation);
          if (answer.messages.length === 200) catchUp(conversation);
        },
        () => (conversation.paging = false),
      );
  }

  $("older").addEventListener("click", () => {
    const conversation = open;
    if (!conversation || conversation.paging || !conversation.older) return;
    conversation.paging = true;
    $("older").disabled = true;
    conversation.socket
      .timeout(ACK_TIMEOUT)
      .emitWithAck("history", { before: conversation.oldest, limit: PAGE })
      .then(
        (answer) => {
          if (open !== conversation) return;
          if (!answer.ok) {
            $("conversation-error").textContent = `Older messages could not be loaded: ${answer.error}`;
            return;
          }
          // Keep the reader's place while older messages go in above it.
          const list = $("messages");
          const fromEnd = list.scrollHeight - list.scrollTop;
          addMessages(conversation, answer.messages);
          list.scrollTop = list.scrollHeight - fromEnd;
          conversation.older = answer.messages.length === PAGE;
          $("older").hidden = !conversation.older;
        },
        () => ($("conversation-error").textContent = "Older messages could not be loaded: no answer, try again."),
      )
      .finally(() => {
        conversation.paging = false;
        $("older").disabled = false;
      });
  });

  /** Puts messages into the view in `ts` order, each once. */
  function addMessages(conversation, messages) {
    const list = $("messages");
    for (const message of messages) {
      if (conversation.messages.has(message.ts)) continue;
      conversation.messages.set(message.ts, message);
      const item = messageItem(message);
      // Most arrive at either end; find the place from the end otherwise.
      // Messages still being sent stay last.
      let after = list.lastElementChild;
      while (after && !(Number(after.dataset.ts) <= message.ts)) after = after.previousElementSibling;
      if (after) after.after(item);
      else list.prepend(item);
      conversation.newest = Math.max(conversation.newest, message.ts);
      conversation.oldest = Math.min(conversation.oldest, message.ts);
    }
    showSeen();
  }

  function messageItem(message) {
    const mine = message.from === me.user;
    const item = el("li", mine ? "mine" : "theirs");
    item.dataset.ts = String(message.ts);
    const bubble = el("span", "bubble", message.text);
    const meta = el("span", "meta", `${mine ? "You" : message.from} · ${when(message.ts)}`);
    meta.title = message.time;
    item.append(bubble, meta);
    return item;
  }

  /** "Seen" under my newest message the peer has read. */
  function showSeen() {
    if (!open) return;
    const peerRead = Math.max(rooms.get(open.roomId)?.peerRead ?? 0, open.peerRead);
    let seen = null;
    for (const item of $("messages").querySelectorAll("li.mine[data-ts]")) {
      if (Number(item.dataset.ts) <= peerRead) seen = item;
    }
    const current = $("messages").querySelector(".seen");
    if (current && current.parentElement === seen) return;
    current?.remove();
    if (seen) seen.append(el("span", "seen", "Seen"));
  }

  /** Tells the server the user has read up to the newest message shown, when they can see it. */
  function markRead(conversation) {
    if (open !== conversation || !conversation.newest || !conversation.seesLatest()) return;
    const room = rooms.get(conversation.roomId);
    const read = Math.max(room?.read ?? 0, conversation.read);
    if (conversation.newest <= read) return;
    conversation.read = conversation.newest;
    if (room) {
      room.read = conversation.newest;
      if (room.last.ts <= conversation.newest) room.unread = 0;
      renderList();
    }
    conversation.socket.emit("read", { ts: conversation.newest });
  }

  function scrollToEnd() {
    const list = $("messages");
    list.scrollTop = list.scrollHeight;
  }

  $("messages").addEventListener("scroll", () => open && markRead(open));
  document.addEventListener("visibilitychange", () => open && markRead(open));

  // ------------------------------------------------------------------
  // Typing.

  function showPeerTyping(conversation, typing) {
    clearTimeout(conversation.peerTypingTimer);
    $("typing").textContent = typing ? `${conversation.peer} is typing…` : "";
    // A `typing: true` holds 5 s unless repeated.
    if (typing) conversation.peerTypingTimer = setTimeout(() => showPeerTyping(conversation, false), TYPING_SHOWN);
  }

  function sendTyping(conversation, typing) {
    clearTimeout(conversation.typingIdle);
    if (typing) {
      conversation.typingIdle = setTimeout(() => sendTyping(conversation, false), TYPING_IDLE);
      if (Date.now() - conversation.typingSent < TYPING_REPEAT) return;
      conversation.typingSent = Date.now();
    } else {
      if (!conversation.typingSent) return;
      conversation.typingSent = 0;
    }
    conversation.socket.emit("typing", { typing });
  }

  $("text").addEventListener("input", () => {
    if (open) sendTyping(open, $("text").value.trim() !== "");
  });

  // ------------------------------------------------------------------
  // Sending.

  $("text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("compose").requestSubmit();
    }
  });

  $("compose").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text").value;
    if (!open || text.trim() === "") return;
    $("text").value = "";
    sendTyping(open, false);
    send(open, text, newCid());
  });

  /** Sends `text` with client id `cid`; a failed send offers a retry with the same `cid`. */
  function send(conversation, text, cid) {
    let item = conversation.pending.get(cid);
    if (!item) {
      item = messageItem({ from: me.user, text, ts: Date.now() * 1000, time: "" });
      item.classList.add("pending");
      delete item.dataset.ts; // placed by ts only once the server gave one
      conversation.pending.set(cid, item);
      $("messages").append(item);
      scrollToEnd();
    }
    item.classList.remove("failed");
    item.querySelector(".meta").textContent = "sending…";
    conversation.socket
      .timeout(ACK_TIMEOUT)
      .emitWithAck("chat message", { text, cid })
      .then(
        (answer) => {
          if (!me) return; // signed out meanwhile
          if (answer.ok) {
            conversation.pending.delete(cid);
            item.remove();
            if (open === conversation) {
              addMessages(conversation, [answer.message]);
              scrollToEnd();
            }
            const room = roomFor(answer.message);
            if (room.last.ts <= answer.message.ts) {
              room.last = answer.message;
              room.read = answer.message.ts;
              room.unread = 0;
            }
            renderList();
            return;
          }
          const retry = answer.reason === "unavailable" || answer.reason === "rate_limited";
          failed(conversation, item, text, cid, `not sent (${answer.reason})`, retry);
        },
        () => failed(conversation, item, text, cid, "not sent (no answer)", true),
      );
  }

  function failed(conversation, item, text, cid, why, retry) {
    item.classList.add("failed");
    const meta = item.querySelector(".meta");
    meta.textContent = why;
    if (!retry) {
      conversation.pending.delete(cid);
      return;
    }
    const button = el("button", "retry", "Retry");
    button.type = "button";
    button.addEventListener("click", () => send(conversation, text, cid));
    meta.append(" ", button);
  }

  // ------------------------------------------------------------------
  // Start: a sign-in kept for this tab, or the form.

  let kept = null;
  try {
    kept = JSON.parse(sessionStorage.getItem("chatd") || "null");
  } catch {
    sessionStorage.removeItem("chatd");
  }
  if (kept && typeof kept.user === "string" && NAME.test(kept.user)) {
    $("user").value = kept.user;
    $("token").value = kept.token || "";
    signIn(kept.user, kept.token || "");
  } else {
    showSignIn();
  }
})();
