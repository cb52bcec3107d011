// HQ browser console: log in (with a second factor's code when HQ asks for one), follow every
// readable channel live, send, refresh and reconnect without a reload; set up two-factor
// authentication (mfa.js: at once after login for a role that must have it); directors also get
// the Agents and Sessions sections (directors.js).
//
// The page never sees a token. Login and refresh set HttpOnly cookies (`jwt` for everything,
// `hq_refresh` only for /api/auth); the page never reads their response bodies, and the Socket.IO
// handshake carries the `jwt` cookie. Because the page cannot hand a fresh token to `reauth`, a
// refreshed session is picked up by reconnecting the socket (the new handshake sends the new
// cookie) and fetching the history missed in between, so no message is lost.

import { ChannelDesk, eventWords } from "/channels.js";
import { discardBody, errorOf, request, waitWords } from "/requests.js";
import { mountTwoFactorCard, openSetup } from "/mfa.js";

const ACK_TIMEOUT_MS = 10000;

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), whoami: $("whoami"), logout: $("logout"), alert: $("alert"), main: $("main"),
  loginView: $("login-view"), loginForm: $("login-form"), codename: $("codename"), password: $("password"),
  loginButton: $("login"), otpField: $("otp-field"), otp: $("otp"),
  consoleView: $("console-view"),
  sendForm: $("send-form"), message: $("message"), sendTo: $("send-to"), send: $("send"),
  noWrite: $("no-write"), sendResult: $("send-result"),
};

const state = {
  io: null,            // the socket.io-client `io` function, loaded at start
  ioReady: null,       // a promise of loading it: true once `io` is there
  socket: null,
  me: null,            // {codename, role, exp} from /api/auth/me
  channels: [],        // [{name, read, write}] from /api/channels
  directors: null,     // the mounted Agents and Sessions sections (directors only)
  twoFactor: null,     // the mounted `Two-factor authentication` card
  setup: null,         // the open two-factor set-up screen, if any
  entered: 0,          // bumps on every login and logout, so late answers of an old session are dropped
  endedReason: null,   // the last session_ended reason, read when HQ then disconnects us
  refreshTries: 0,     // refresh-and-reconnect attempts since the last good connect
  loggingOut: false,
  loginStarted: false, // set once the person submits the form: start-up then stops deciding what to show
};

const desk = new ChannelDesk({
  list: $("channels"), listPanel: $("channels-panel"), picker: $("channel-picker"), select: $("channel"),
  noChannels: $("no-channels"), feed: $("feed"), onlinePanel: $("online-panel"), online: $("online"),
}, { call, showAlert });

// ---------------------------------------------------------------------------------------- words

const LOGIN_WORDS = {
  invalid_credentials: "Wrong codename or password.",
  agent_disabled: "This agent is disabled. Ask a director to enable it.",
  bad_request: "Enter a codename and a password.",
  payload_too_large: "That is too long for a codename or password.",
  mfa_required: "Enter the authentication code from your app (or a recovery code), then log in.",
  invalid_otp: "That authentication code is not valid: it is wrong, already used, or a spent recovery code. "
    + "Wait for the next code in your app and try again.",
  unavailable: "HQ's storage is not reachable right now. Try again shortly.",
};

const REFUSAL_WORDS = {
  token_missing: "Your session has expired. Log in again.",
  token_expired: "Your session has expired. Log in again.",
  token_invalid: "HQ did not accept your session. Log in again.",
  token_revoked: "Your session was ended (logged out or revoked). Log in again.",
  agent_disabled: "This agent has been disabled. Your session has ended.",
  origin_not_allowed: "HQ refuses connections from this page's address (origin not allowed).",
  mfa_enrollment_required: "This login is good only for setting up two-factor authentication. Log in again.",
};

const SESSION_ENDED_WORDS = {
  token_expired: "Your session expired. Log in again.",
  logged_out: "You were logged out: this session was ended (from another tab or device). Log in again.",
  revoked: "HQ revoked your session (for example after a password change). Log in again.",
  agent_disabled: "This agent has been disabled. Your session has ended.",
};

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

// Show the login form. What is already typed there stays (a password manager may have filled it
// while start-up was still asking HQ about a saved session); only the end of a session clears the
// password, and focus moves only if the person is not already in the form.
function showLogin({ clearPassword = false } = {}) {
  ui.consoleView.hidden = true;
  ui.logout.hidden = true;
  ui.whoami.hidden = true;
  ui.loginView.hidden = false;
  if (clearPassword) {
    ui.password.value = "";
    hideCodeField();
  }
  ui.loginButton.disabled = false;
  if (!ui.loginForm.contains(document.activeElement)) (ui.codename.value ? ui.password : ui.codename).focus();
}

// HQ asked for a second factor: the `Authentication code` field appears (the password stays typed).
function showCodeField() {
  const shown = !ui.otpField.hidden;
  ui.otpField.hidden = false;
  ui.otp.focus();
  if (shown) ui.otp.select();
  return shown;
}

function hideCodeField() {
  ui.otp.value = "";
  ui.otpField.hidden = true;
}

function showConsole() {
  ui.loginView.hidden = true;
  ui.consoleView.hidden = false;
  ui.logout.hidden = false;
  ui.whoami.hidden = false;
  const name = document.createElement("strong");
  name.textContent = state.me.codename;
  ui.whoami.replaceChildren("Agent ", name, ` · ${state.me.role}`);
}

// HQ's channel list for the agent's clearance: the desk shows what it may read, `Send to` what it may write.
function renderChannels() {
  const readable = desk.setChannels(state.channels);
  const writable = state.channels.filter((c) => c.write).map((c) => c.name);
  const keep = ui.sendTo.value || desk.current;
  ui.sendTo.replaceChildren(...writable.map((name) => new Option(name, name)));
  if (writable.includes(keep)) ui.sendTo.value = keep;
  ui.sendForm.hidden = writable.length === 0;
  ui.noWrite.hidden = writable.length !== 0;
  ui.noWrite.textContent = `Your clearance (${state.me.role}) may not send to any channel.`;
  updateSendButton();
  return readable;
}

// Opening a channel makes it the `Send to` target too, where the agent may write there.
desk.onOpened = (name) => {
  if (state.channels.some((c) => c.name === name && c.write)) ui.sendTo.value = name;
};
desk.onPresenceChange = () => { if (state.directors) state.directors.refreshSoon(); };

function call(event, payload) {
  if (!state.socket) return Promise.resolve({ ok: false, error: { code: "timeout", message: "not connected" } });
  return state.socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, payload)
    .catch(() => ({ ok: false, error: { code: "timeout", message: "no answer" } }));
}

// ------------------------------------------------------------------------------------------- HTTP

async function fetchMe() {
  return (await whoAmI()).me;
}

// `{me}` for a session, else `{code}`: why HQ did not say who this is.
async function whoAmI() {
  const response = await request("/api/auth/me");
  if (response.ok) return { me: await response.json() };
  return { me: null, code: (await errorOf(response)).code };
}

async function fetchChannels() {
  const response = await request("/api/channels");
  if (!response.ok) return null;
  return response.json();
}

// The clearance levels, lowest first; the highest is the directors' (HQ's directors' API uses the same rule).
async function fetchRoles() {
  const response = await request("/api/roles").catch(() => null);
  if (!response || !response.ok) return null;
  const roles = await response.json().catch(() => null);
  return Array.isArray(roles) && roles.length && roles.every((r) => typeof r === "string") ? roles : null;
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

// A request for the directors' sections: an expired access token is refreshed once and the request repeated.
async function api(path, method = "GET", body = undefined) {
  const response = await request(path, method, body);
  if (response.status !== 401) return response;
  const error = await errorOf(response.clone());
  if (error.code !== "token_expired" || !(await refreshSession())) return response;
  return request(path, method, body);
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
  socket.on("message", (message) => desk.receive(message));
  socket.on("presence", (event) => desk.onPresence(event));
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
  // Clearance may have changed while we were away: ask again, then catch up on every channel.
  const channels = await fetchChannels().catch(() => null);
  if (socket !== state.socket) return;
  if (channels) state.channels = channels;
  renderChannels();
  await desk.catchUp();
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
  desk.disconnected();
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
  desk.disconnected();
  setStatus("Reconnecting…", "connecting");
  socket.connect();
}

// -------------------------------------------------------------------------------------- sessions

async function enter() {
  const [{ me, code }, channels, roles] = await Promise.all([whoAmI(), fetchChannels(), fetchRoles()]);
  if (code === "mfa_enrollment_required") {
    // A role that must use a second factor, without one yet: this login may only set it up.
    enterRequiredSetup();
    return true;
  }
  if (!me || !channels) return false;
  const entered = ++state.entered;
  closeSetup();
  unmountDirectors();
  unmountTwoFactor();
  state.me = me;
  state.channels = channels;
  desk.reset(me);
  ui.sendResult.textContent = "";
  showConsole();
  renderChannels();
  state.twoFactor = mountTwoFactorCard(ui.consoleView, { call: api, onSetUp: openOwnSetup });
  connectSocket();
  const first = desk.readable().length ? desk.button(desk.current) : (ui.sendForm.hidden ? ui.logout : ui.message);
  first.focus();
  // The stored role decides: only a director's page loads and shows the Agents and Sessions sections.
  if (me.role === (roles ? roles[roles.length - 1] : "director")) {
    const { mountDirectors } = await import("/directors.js");
    if (entered === state.entered && state.me) {
      state.directors = mountDirectors(ui.main, { api, showAlert, clearAlert, roles });
    }
  }
  return true;
}

// The set-up screen for an agent that must have a second factor and has none: nothing else is
// shown (HQ refuses this login everywhere else); finishing it leaves a full session in the cookies.
function enterRequiredSetup() {
  leave();
  ui.loginView.hidden = true;
  ui.consoleView.hidden = true;
  ui.whoami.hidden = true;
  ui.logout.hidden = false;
  ui.password.value = "";
  hideCodeField();
  setStatus("Not connected: set up two-factor authentication first");
  const entered = state.entered;
  state.setup = openSetup(ui.loginView, {
    call: request, required: true, showAlert, clearAlert,
    onFinished: async () => {
      state.setup = null;
      if (entered !== state.entered) return;
      if (!(await enter().catch(() => false))) endSession("Two-factor authentication is on, but HQ did not "
        + "confirm the new session. Log in again with a code from your app.");
    },
    onCancelled: () => { state.setup = null; },
    onSessionLost: (words) => { state.setup = null; if (entered === state.entered) endSession(words); },
  });
}

// An agent with a full session sets up a second factor of its own accord; the console stays connected.
function openOwnSetup() {
  if (state.setup) { state.setup.section.querySelector("h2").focus(); return; }
  const entered = state.entered;
  const back = () => {
    state.setup = null;
    if (entered !== state.entered || !state.twoFactor) return;
    state.twoFactor.refresh().then(() => state.twoFactor && state.twoFactor.focus());
  };
  state.setup = openSetup(ui.loginView, {
    call: api, required: false, showAlert, clearAlert,
    onFinished: back, onCancelled: back,
    onSessionLost: (words) => { state.setup = null; if (entered === state.entered) endSession(words); },
  });
}

function closeSetup() {
  if (!state.setup) return;
  state.setup.close();
  state.setup = null;
}

function unmountTwoFactor() {
  if (!state.twoFactor) return;
  state.twoFactor.unmount();
  state.twoFactor = null;
}

function unmountDirectors() {
  if (!state.directors) return;
  state.directors.unmount();
  state.directors = null;
}

function leave() {
  state.entered += 1;
  closeSocket();
  closeSetup();
  unmountDirectors();
  unmountTwoFactor();
  state.me = null;
  desk.reset(null);
}

function endSession(words) {
  leave();
  setStatus("Not connected");
  showAlert(words);
  showLogin({ clearPassword: true });
}

// The login request's body from the form; the code once HQ has asked for one.
function loginBody() {
  const body = { username: ui.codename.value.trim(), password: ui.password.value };
  const otp = ui.otp.value.trim();
  if (!ui.otpField.hidden && otp) body.otp = otp;
  return body;
}

async function logIn(event) {
  event.preventDefault();
  state.loginStarted = true;
  clearAlert();
  const body = loginBody();
  if (!body.username || !body.password) { showAlert(LOGIN_WORDS.bad_request); return; }
  ui.loginButton.disabled = true;
  try {
    if (!(await state.ioReady)) return;
    const response = await request("/api/auth/login", "POST", body);
    if (response.ok) {
      discardBody(response);
      ui.password.value = "";
      hideCodeField();
      const entered = await enter();
      if (entered === false) showAlert("Logged in, but HQ did not confirm the session. Try again.");
      if (!entered) setStatus("Not logged in");
      return;
    }
    setStatus("Not logged in");
    const error = await errorOf(response);
    if (error.code === "mfa_required") {
      // The password was right: the field's own description says what to type; asked again, say it aloud.
      if (showCodeField()) showAlert(LOGIN_WORDS.mfa_required);
      return;
    }
    if (response.status === 429) {
      showAlert(`Too many failed attempts. Try again ${waitWords(Number(response.headers.get("Retry-After")))}.`);
    } else {
      showAlert(LOGIN_WORDS[error.code] || `Login failed: ${error.message}`);
    }
    if (error.code === "invalid_otp") showCodeField();
    else ui.password.select();
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
    leave();
    setStatus("Logged out");
    showLogin({ clearPassword: true });
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
    desk.sent({ id: ack.id, channel, from: state.me.codename, text, ts: new Date().toISOString() });
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

async function loadSocketIo() {
  try {
    ({ io: state.io } = await import("/vendor/socket.io.esm.min.js"));
    return true;
  } catch {
    showAlert("The console's socket.io-client is missing from this HQ installation (run `make setup`).");
    ui.loginButton.disabled = true;
    return false;
  }
}

// A session left in the cookies is resumed (refreshed once if only the refresh cookie is left);
// true when a session was entered or the person has meanwhile submitted the login form.
async function resumeSession() {
  const { me, code } = await whoAmI();
  if (state.loginStarted) return true;
  // A login good only for the two-factor set-up (the page was reloaded during it): back to the set-up.
  if (!me && code !== "mfa_enrollment_required" && !(await refreshSession())) return false;
  if (state.loginStarted) return true;
  return enter();
}

// The login form is usable from the first paint: whatever is typed (or autofilled) meanwhile is
// kept, and a login submitted before start-up has finished wins over start-up's own decision.
async function start() {
  ui.loginForm.addEventListener("submit", logIn);
  ui.logout.addEventListener("click", logOut);
  ui.sendForm.addEventListener("submit", sendMessage);
  ui.message.addEventListener("keydown", onMessageKey);
  state.ioReady = loadSocketIo();
  if (!(await state.ioReady)) return;
  try {
    if (await resumeSession()) return;
  } catch {
    if (!state.loginStarted) showAlert("HQ is unreachable. Reload the page when it is back.");
  }
  if (state.loginStarted) return;
  setStatus("Not logged in");
  showLogin();
}

start();
