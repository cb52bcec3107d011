// HQ browser console: log in, follow a channel live, send, refresh and reconnect without a reload.
//
// The page never sees a token. Login and refresh set HttpOnly cookies (`jwt` for everything,
// `hq_refresh` only for /api/auth); the page never reads their response bodies, and the Socket.IO
// handshake carries the `jwt` cookie. Because the page cannot hand a fresh token to `reauth`, a
// refreshed session is picked up by reconnecting the socket (the new handshake sends the new
// cookie) and fetching the history missed in between, so no message is lost.

const ACK_TIMEOUT_MS = 10000;
const HISTORY_PAGE = 500;
const FIRST_PAGE = 100;
// Presence events say who came or went; the counts and roles come from asking again, at most this often.
const PRESENCE_REFRESH_MS = 1000;

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), whoami: $("whoami"), logout: $("logout"), alert: $("alert"),
  loginView: $("login-view"), loginForm: $("login-form"), codename: $("codename"), password: $("password"),
  loginButton: $("login"),
  consoleView: $("console-view"), channelPicker: $("channel-picker"), channel: $("channel"),
  noChannels: $("no-channels"), feed: $("feed"), onlinePanel: $("online-panel"), online: $("online"),
  sendForm: $("send-form"), message: $("message"), sendTo: $("send-to"), send: $("send"),
  noWrite: $("no-write"), sendResult: $("send-result"),
};

const state = {
  io: null,            // the socket.io-client `io` function, loaded at start
  socket: null,
  me: null,            // {codename, role, exp} from /api/auth/me
  channels: [],        // [{name, read, write}] from /api/channels
  current: null,       // the channel shown in the feed
  seen: new Set(),     // message ids shown for the current channel
  lastId: 0,           // highest id shown for the current channel
  online: new Map(),   // codename -> {codename, role, connections}: who is in the current channel
  presenceTimer: null, // a pending re-ask of `presence` after live events
  loading: null,       // {channel, buffer} while history is being fetched
  generation: 0,       // bumps on every channel switch, so late answers for an old one are dropped
  endedReason: null,   // the last session_ended reason, read when HQ then disconnects us
  refreshTries: 0,     // refresh-and-reconnect attempts since the last good connect
  loggingOut: false,
};

// ---------------------------------------------------------------------------------------- words

const LOGIN_WORDS = {
  invalid_credentials: "Wrong codename or password.",
  agent_disabled: "This agent is disabled. Ask a director to enable it.",
  bad_request: "Enter a codename and a password.",
  payload_too_large: "That is too long for a codename or password.",
};

const REFUSAL_WORDS = {
  token_missing: "Your session has expired. Log in again.",
  token_expired: "Your session has expired. Log in again.",
  token_invalid: "HQ did not accept your session. Log in again.",
  token_revoked: "Your session was ended (logged out or revoked). Log in again.",
  agent_disabled: "This agent has been disabled. Your session has ended.",
  origin_not_allowed: "HQ refuses connections from this page's address (origin not allowed).",
};

const SESSION_ENDED_WORDS = {
  token_expired: "Your session expired. Log in again.",
  logged_out: "You were logged out: this session was ended (from another tab or device). Log in again.",
  revoked: "HQ revoked your session (for example after a password change). Log in again.",
  agent_disabled: "This agent has been disabled. Your session has ended.",
};

function eventWords(error, channel) {
  switch (error.code) {
    case "forbidden": return `Forbidden: your clearance does not allow that on ${channel}.`;
    case "rate_limited": return "You are sending too fast. Wait a moment and try again.";
    case "payload_too_large": return "That message is too long for HQ.";
    case "not_found": return `There is no channel named ${channel}.`;
    case "bad_request": return "HQ could not understand that request.";
    case "timeout": return "HQ did not answer in time. Check the connection and try again.";
    case "internal": return "HQ had an internal error. Try again.";
    default: return REFUSAL_WORDS[error.code] || `HQ refused: ${error.message || error.code}.`;
  }
}

function waitWords(seconds) {
  if (!seconds) return "later";
  return seconds < 90 ? `in ${seconds} seconds` : `in about ${Math.ceil(seconds / 60)} minutes`;
}

// ----------------------------------------------------------------------------------- small views

function showAlert(text) { ui.alert.textContent = text; }
function clearAlert() { ui.alert.textContent = ""; }

function setStatus(text, kind = "offline") {
  ui.status.textContent = text;
  ui.status.dataset.state = kind;
  updateSendButton();
}

function updateSendButton() {
  ui.send.disabled = !(state.socket && state.socket.connected) || ui.sendTo.options.length === 0;
}

function showLogin() {
  ui.consoleView.hidden = true;
  ui.logout.hidden = true;
  ui.whoami.hidden = true;
  ui.loginView.hidden = false;
  ui.password.value = "";
  ui.loginButton.disabled = false;
  ui.codename.focus();
}

function showConsole() {
  ui.loginView.hidden = true;
  ui.consoleView.hidden = false;
  ui.logout.hidden = false;
  ui.whoami.hidden = false;
  ui.whoami.replaceChildren("Agent ", strong(state.me.codename), ` · ${state.me.role}`);
}

function strong(text) {
  const element = document.createElement("strong");
  element.textContent = text;
  return element;
}

function fillSelect(select, names, keep) {
  select.replaceChildren(...names.map((name) => new Option(name, name)));
  if (names.includes(keep)) select.value = keep;
}

function renderChannels() {
  const readable = state.channels.filter((c) => c.read).map((c) => c.name);
  const writable = state.channels.filter((c) => c.write).map((c) => c.name);
  fillSelect(ui.channel, readable, state.current);
  ui.channelPicker.hidden = readable.length === 0;
  ui.feed.hidden = readable.length === 0;
  ui.onlinePanel.hidden = readable.length === 0;
  ui.noChannels.hidden = readable.length !== 0;
  ui.noChannels.textContent =
    `No channels: your clearance (${state.me.role}) may not read any channel.`;
  fillSelect(ui.sendTo, writable, ui.sendTo.value || state.current);
  ui.sendForm.hidden = writable.length === 0;
  ui.noWrite.hidden = writable.length !== 0;
  ui.noWrite.textContent = `Your clearance (${state.me.role}) may not send to any channel.`;
  updateSendButton();
  return readable;
}

// ------------------------------------------------------------------------------------------ feed

function messageItem(message) {
  const item = document.createElement("li");
  item.className = "msg" + (state.me && message.from === state.me.codename ? " mine" : "");
  item.dataset.id = String(message.id);
  const header = document.createElement("header");
  const from = document.createElement("span");
  from.className = "from";
  from.textContent = message.from;
  const time = document.createElement("time");
  time.dateTime = message.ts;
  const date = new Date(message.ts);
  time.textContent = Number.isNaN(date.getTime()) ? message.ts : date.toLocaleTimeString();
  time.title = message.ts;
  header.append(from, time);
  const text = document.createElement("p");
  text.className = "text";
  text.textContent = message.text; // text only: whatever an agent sends is never parsed as HTML
  item.append(header, text);
  return item;
}

function addMessage(message) {
  if (message.channel !== state.current || state.seen.has(message.id)) return;
  state.seen.add(message.id);
  const nearBottom = ui.feed.scrollHeight - ui.feed.scrollTop - ui.feed.clientHeight < 80;
  const item = messageItem(message);
  // Keep id order even when a live message overtakes one still on its way.
  let before = null;
  if (message.id < state.lastId) {
    before = [...ui.feed.children].find((li) => Number(li.dataset.id) > message.id) || null;
  }
  ui.feed.insertBefore(item, before);
  state.lastId = Math.max(state.lastId, message.id);
  if (nearBottom || before === null) ui.feed.scrollTop = ui.feed.scrollHeight;
}

function onLiveMessage(message) {
  if (state.loading && state.loading.channel === message.channel) {
    state.loading.buffer.push(message);
  } else {
    addMessage(message);
  }
}

// ---------------------------------------------------------------------------------------- online

function onlineItem(agent) {
  const item = document.createElement("li");
  item.className = "agent" + (state.me && agent.codename === state.me.codename ? " mine" : "");
  item.dataset.codename = agent.codename;
  const name = document.createElement("span");
  name.className = "from";
  name.textContent = agent.codename;
  item.append(name);
  if (agent.role) {
    const role = document.createElement("span");
    role.className = "role";
    role.textContent = agent.role;
    item.append(" ", role);
  }
  if (agent.connections > 1) {
    const count = document.createElement("span");
    count.className = "count";
    count.textContent = `${agent.connections} connections`;
    item.append(" ", count);
  }
  return item;
}

function renderOnline() {
  const agents = [...state.online.values()].sort((a, b) => a.codename.localeCompare(b.codename));
  ui.online.replaceChildren(...agents.map(onlineItem));
}

function clearOnline() {
  clearTimeout(state.presenceTimer);
  state.presenceTimer = null;
  state.online = new Map();
  renderOnline();
}

// Ask who is in `channel` (any HQ node); answers for a channel no longer open are dropped.
async function loadPresence(channel, generation) {
  const answer = await call("presence", { channel });
  if (generation !== state.generation || channel !== state.current || !answer.ok) return;
  state.online = new Map(answer.agents.map((agent) => [agent.codename, agent]));
  renderOnline();
}

// A live arrival or departure: shown at once, then confirmed (role, connections) by asking again.
function onPresence(event) {
  if (!event || event.channel !== state.current) return;
  if (!event.online) {
    state.online.delete(event.codename);
  } else if (!state.online.has(event.codename)) {
    state.online.set(event.codename, { codename: event.codename, role: "", connections: 1 });
  }
  renderOnline();
  if (state.presenceTimer !== null) return;
  const { current: channel, generation } = state;
  state.presenceTimer = setTimeout(() => {
    state.presenceTimer = null;
    loadPresence(channel, generation);
  }, PRESENCE_REFRESH_MS);
}

function call(event, payload) {
  if (!state.socket) return Promise.resolve({ ok: false, error: { code: "timeout", message: "not connected" } });
  return state.socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, payload)
    .catch(() => ({ ok: false, error: { code: "timeout", message: "no answer" } }));
}

// Join `channel` and show its history: the latest page on a switch, everything after the last
// shown id on a reconnect. Live messages arriving meanwhile wait in a buffer, so order holds.
async function loadChannel(channel, { fresh }) {
  const generation = fresh ? ++state.generation : state.generation;
  if (fresh) {
    state.current = channel;
    state.seen = new Set();
    state.lastId = 0;
    ui.feed.replaceChildren();
    ui.feed.setAttribute("aria-label", `Live feed of ${channel}`);
    clearOnline();
  }
  state.loading = { channel, buffer: [] };
  try {
    const joined = await call("join", { channel });
    if (generation !== state.generation) return;
    if (!joined.ok) { showAlert(eventWords(joined.error, channel)); return; }
    loadPresence(channel, generation); // alongside the history, not after it
    let after = fresh ? null : state.lastId;
    for (;;) {
      const payload = after === null ? { channel, limit: FIRST_PAGE } : { channel, after_id: after, limit: HISTORY_PAGE };
      const page = await call("history", payload);
      if (generation !== state.generation) return;
      if (!page.ok) { showAlert(eventWords(page.error, channel)); return; }
      page.messages.forEach(addMessage);
      if (after === null || page.messages.length < HISTORY_PAGE) break;
      after = state.lastId;
    }
  } finally {
    if (generation === state.generation && state.loading && state.loading.channel === channel) {
      const { buffer } = state.loading;
      state.loading = null;
      buffer.forEach(addMessage);
    }
  }
}

async function switchChannel() {
  const previous = state.current;
  const next = ui.channel.value;
  if (!next || next === previous) return;
  clearAlert();
  if (previous && state.socket && state.socket.connected) call("leave", { channel: previous });
  if (state.channels.some((c) => c.name === next && c.write)) ui.sendTo.value = next;
  await loadChannel(next, { fresh: true });
}

// ------------------------------------------------------------------------------------------- HTTP

async function request(path, method = "GET", body = undefined) {
  const options = { method, credentials: "include", headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  return fetch(path, options);
}

async function errorOf(response) {
  try {
    const body = await response.json();
    return body.error || { code: String(response.status), message: response.statusText };
  } catch {
    return { code: String(response.status), message: response.statusText };
  }
}

// Login and refresh answer with tokens in the body too; this page drops that body unread.
function discardBody(response) {
  if (response.body) response.body.cancel().catch(() => {});
}

async function fetchMe() {
  const response = await request("/api/auth/me");
  if (!response.ok) return null;
  return response.json();
}

async function fetchChannels() {
  const response = await request("/api/channels");
  if (!response.ok) return null;
  return response.json();
}

async function doRefresh(staleExp) {
  // Another tab may have refreshed already: then the cookie is newer than the warning we got.
  if (staleExp) {
    const me = await fetchMe().catch(() => null);
    if (me && me.exp > staleExp) { state.me = me; return true; }
  }
  const response = await request("/api/auth/refresh", "POST");
  discardBody(response);
  if (!response.ok) return false;
  const me = await fetchMe();
  if (me) state.me = me;
  return me !== null;
}

// One refresh at a time across every tab of this browser: the refresh token rotates on use, and
// a second tab spending the old one would look like theft and revoke the session.
async function refreshSession(staleExp = null) {
  try {
    if (navigator.locks) return await navigator.locks.request("hq-refresh", () => doRefresh(staleExp));
    return await doRefresh(staleExp);
  } catch {
    return false;
  }
}

// ----------------------------------------------------------------------------------------- socket

function connectSocket() {
  closeSocket();
  // forceNew: each session gets its own connection, never a cached one from a previous login.
  // Websocket only: with `serve --workers N` or several nodes, every long-polling request of a
  // session would have to reach the same process (see README, Deployment).
  const socket = state.io({ withCredentials: true, autoConnect: false, forceNew: true, transports: ["websocket"] });
  state.socket = socket;
  socket.on("connect", () => onConnect(socket));
  socket.on("connect_error", (error) => onConnectError(socket, error));
  socket.on("disconnect", (reason) => onDisconnect(socket, reason));
  socket.on("message", onLiveMessage);
  socket.on("presence", onPresence);
  socket.on("token_expiring", (data) => onTokenExpiring(socket, data));
  socket.on("session_ended", (data) => { state.endedReason = data && data.reason; });
  socket.io.on("reconnect_attempt", () => setStatus("Reconnecting…", "connecting"));
  setStatus("Connecting…", "connecting");
  socket.connect();
}

function closeSocket() {
  if (!state.socket) return;
  const socket = state.socket;
  state.socket = null;
  socket.disconnect();
  socket.removeAllListeners();
  socket.io.off("reconnect_attempt");
}

async function onConnect(socket) {
  if (socket !== state.socket) return;
  state.refreshTries = 0;
  setStatus(`Connected as ${state.me.codename}`, "online");
  // Clearance may have changed while we were away: ask again, then catch up on the channel.
  const channels = await fetchChannels().catch(() => null);
  if (socket !== state.socket) return;
  if (channels) state.channels = channels;
  const readable = renderChannels();
  const channel = readable.includes(state.current) ? state.current : readable[0];
  if (channel) await loadChannel(channel, { fresh: channel !== state.current });
}

async function onConnectError(socket, error) {
  if (socket !== state.socket) return;
  if (socket.active) {
    // A transport problem (HQ restarting, network): socket.io-client retries by itself.
    setStatus("Reconnecting… HQ is not reachable yet", "connecting");
    return;
  }
  const code = error && error.data && error.data.code;
  if ((code === "token_expired" || code === "token_missing") && state.refreshTries < 2) {
    state.refreshTries += 1;
    if (await refreshSession()) { reconnect(); return; }
  }
  endSession(REFUSAL_WORDS[code] || `HQ refused the connection: ${error.message}.`);
}

async function onDisconnect(socket, reason) {
  if (socket !== state.socket) return;
  updateSendButton();
  if (reason !== "io server disconnect") {
    // Lost the transport: socket.io-client reconnects with backoff; onConnect catches up.
    setStatus("Reconnecting…", "connecting");
    return;
  }
  const ended = state.endedReason;
  state.endedReason = null;
  if (state.loggingOut) return;
  if (ended === "token_expired" && state.refreshTries < 2) {
    state.refreshTries += 1;
    if (await refreshSession()) { reconnect(); return; }
  }
  endSession(SESSION_ENDED_WORDS[ended] || "HQ closed the connection. Log in again.");
}

async function onTokenExpiring(socket, data) {
  if (socket !== state.socket) return;
  const ok = await refreshSession(data && data.exp);
  if (socket !== state.socket) return;
  if (ok) {
    reconnect();
  } else {
    showAlert("Your session could not be renewed; it will end soon. Log in again to continue.");
  }
}

// A new handshake is how the socket picks up the refreshed `jwt` cookie.
function reconnect() {
  const socket = state.socket;
  if (!socket) return;
  socket.disconnect();
  setStatus("Reconnecting…", "connecting");
  socket.connect();
}

// -------------------------------------------------------------------------------------- sessions

async function enter() {
  const [me, channels] = await Promise.all([fetchMe(), fetchChannels()]);
  if (!me || !channels) return false;
  state.me = me;
  state.channels = channels;
  state.current = null;
  state.generation += 1;
  ui.feed.replaceChildren();
  clearOnline();
  ui.sendResult.textContent = "";
  showConsole();
  renderChannels();
  connectSocket();
  (ui.channelPicker.hidden ? (ui.sendForm.hidden ? ui.logout : ui.message) : ui.channel).focus();
  return true;
}

function endSession(words) {
  closeSocket();
  state.me = null;
  state.current = null;
  setStatus("Not connected");
  showAlert(words);
  showLogin();
}

async function logIn(event) {
  event.preventDefault();
  clearAlert();
  const username = ui.codename.value.trim();
  const password = ui.password.value;
  if (!username || !password) { showAlert(LOGIN_WORDS.bad_request); return; }
  ui.loginButton.disabled = true;
  try {
    const response = await request("/api/auth/login", "POST", { username, password });
    if (response.ok) {
      discardBody(response);
      ui.password.value = "";
      if (!(await enter())) showAlert("Logged in, but HQ did not confirm the session. Try again.");
      return;
    }
    const error = await errorOf(response);
    if (response.status === 429) {
      showAlert(`Too many failed attempts. Try again ${waitWords(Number(response.headers.get("Retry-After")))}.`);
    } else {
      showAlert(LOGIN_WORDS[error.code] || `Login failed: ${error.message}`);
    }
    ui.password.select();
  } catch {
    showAlert("HQ is unreachable. Check the connection and try again.");
  } finally {
    ui.loginButton.disabled = false;
  }
}

async function logOut() {
  clearAlert();
  state.loggingOut = true;
  try {
    let response = await request("/api/auth/logout", "POST");
    if (response.status === 401 && (await refreshSession())) response = await request("/api/auth/logout", "POST");
    closeSocket();
    state.me = null;
    setStatus("Logged out");
    showLogin();
    if (!response.ok && response.status !== 401) showAlert(`Logging out failed: ${(await errorOf(response)).message}`);
  } catch {
    showAlert("HQ is unreachable; you are not logged out yet. Try again.");
  } finally {
    state.loggingOut = false;
  }
}

async function sendMessage(event) {
  event.preventDefault();
  clearAlert();
  const text = ui.message.value;
  const channel = ui.sendTo.value;
  if (!text.trim()) { showAlert("Type a message first."); ui.message.focus(); return; }
  if (!state.socket || !state.socket.connected) { showAlert("Not connected to HQ; wait for the connection."); return; }
  ui.send.disabled = true;
  try {
    const ack = await call("message", { channel, text });
    if (!ack.ok) {
      showAlert(ack.error.code === "forbidden"
        ? `Forbidden: your clearance may not send to ${channel}.` : eventWords(ack.error, channel));
      return;
    }
    ui.message.value = "";
    ui.sendResult.textContent = `Sent to ${channel} (#${ack.id}).`;
    // HQ does not echo a message to the socket that sent it.
    addMessage({ id: ack.id, channel, from: state.me.codename, text, ts: new Date().toISOString() });
  } finally {
    updateSendButton();
    ui.message.focus();
  }
}

function onMessageKey(event) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.sendForm.requestSubmit();
  }
}

// ------------------------------------------------------------------------------------------ start

async function start() {
  ui.loginForm.addEventListener("submit", logIn);
  ui.logout.addEventListener("click", logOut);
  ui.sendForm.addEventListener("submit", sendMessage);
  ui.message.addEventListener("keydown", onMessageKey);
  ui.channel.addEventListener("change", switchChannel);
  try {
    ({ io: state.io } = await import("/vendor/socket.io.esm.min.js"));
  } catch {
    showAlert("The console's socket.io-client is missing from this HQ installation (run `make setup`).");
    ui.loginButton.disabled = true;
    return;
  }
  // Resume a session from the cookies, refreshing once if only the refresh cookie is left.
  try {
    if ((await fetchMe()) || (await refreshSession())) {
      if (await enter()) return;
    }
  } catch {
    showAlert("HQ is unreachable. Reload the page when it is back.");
  }
  showLogin();
}

start();
