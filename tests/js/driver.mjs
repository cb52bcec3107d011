#!/usr/bin/env node
/**
 * A small, generic driver of the real JavaScript socket.io-client, for HQ's pytest suite.
 *
 * It reads one JSON command per line on stdin and answers each with one JSON line on stdout:
 *   {"id": 7, "op": "connect", "client": "fox", "url": "http://...", "options": {...}}
 *   -> {"id": 7, "ok": true, "result": {...}}   or   {"id": 7, "ok": false, "error": "..."}
 *
 * Ops:
 *   connect    {client, url, options, timeout?}  options are io() options (auth, extraHeaders, query,
 *              transports, withCredentials, ...); reconnection is off so a refusal stays visible.
 *              -> {connected: true, id, transport} or {connected: false, error: {message, data, ...}}
 *   emit       {client, event, args, timeout?}   emitWithAck -> {ack} (or {timedOut: true})
 *   send       {client, event, args}             emit without an acknowledgement -> {}
 *   wait       {client, event, timeout?}         the next not yet consumed event of that name
 *              -> {event, args, t} or {timedOut: true, seen: [...]}
 *   events     {client}                          every event recorded so far, with its time
 *   state      {client}                          {connected, id, transport}
 *   disconnect {client}                          client-side disconnect -> {}
 *
 * Every event a client receives (application events, "connect", "connect_error", "disconnect") is
 * recorded as {event, args, t}, t being Date.now() in ms, so the tests can measure and order them.
 * Only the answers are printed on stdout; nothing else ever is.
 */
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const DEFAULT_TIMEOUT = 10000;

/** One socket.io-client socket and the events it received. */
class Client {
  constructor(socket) {
    this.socket = socket;
    this.events = [];
    this.consumed = new Set();
    this.waiters = [];
  }

  /** Record an event and wake anyone waiting for it. */
  record(event, args) {
    this.events.push({ event, args, t: Date.now() });
    const waiters = this.waiters;
    this.waiters = [];
    waiters.forEach((wake) => wake());
  }

  /** The first recorded, not yet consumed event of that name (consuming it), or undefined. */
  take(event) {
    const index = this.events.findIndex((e, i) => e.event === event && !this.consumed.has(i));
    if (index === -1) return undefined;
    this.consumed.add(index);
    return this.events[index];
  }

  /** Wait up to timeout ms for the next event of that name. */
  async next(event, timeout) {
    const deadline = Date.now() + timeout;
    for (;;) {
      const found = this.take(event);
      if (found) return found;
      const left = deadline - Date.now();
      if (left <= 0) return { timedOut: true, seen: this.events.map((e) => e.event) };
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => { clearTimeout(timer); resolve(); });
      });
    }
  }
}

const clients = new Map();

/** A connect_error (or any Error) as plain JSON: message, data, and transport details if any. */
function describeError(err) {
  const out = { message: String(err && err.message) };
  if (err && err.data !== undefined) out.data = err.data;
  if (err && err.type !== undefined) out.type = err.type;
  if (err && err.description !== undefined) {
    const d = err.description;
    out.description = typeof d === "number" || typeof d === "string" ? d : String(d && (d.message || d));
  }
  return out;
}

function client(name) {
  const found = clients.get(name);
  if (!found) throw new Error(`no client named ${name}`);
  return found;
}

function transportOf(socket) {
  return socket.io.engine && socket.io.engine.transport ? socket.io.engine.transport.name : null;
}

async function connect({ client: name, url, options = {}, timeout = DEFAULT_TIMEOUT }) {
  if (clients.has(name)) clients.get(name).socket.close();
  const socket = io(url, { reconnection: false, forceNew: true, timeout, ...options, autoConnect: false });
  const c = new Client(socket);
  clients.set(name, c);
  socket.onAny((event, ...args) => c.record(event, args));
  socket.on("connect", () => c.record("connect", []));
  socket.on("connect_error", (err) => c.record("connect_error", [describeError(err)]));
  socket.on("disconnect", (reason, details) => c.record("disconnect", [reason, details ? describeError(details) : null]));
  const outcome = new Promise((resolve) => {
    socket.once("connect", () => resolve({ connected: true, id: socket.id, transport: transportOf(socket) }));
    socket.once("connect_error", (err) => resolve({ connected: false, error: describeError(err) }));
  });
  socket.connect();
  const limit = new Promise((resolve) => setTimeout(() => resolve({ connected: false, timedOut: true }), timeout + 2000));
  return Promise.race([outcome, limit]);
}

async function emit({ client: name, event, args = [], timeout = DEFAULT_TIMEOUT }) {
  try {
    const ack = await client(name).socket.timeout(timeout).emitWithAck(event, ...args);
    return { ack };
  } catch (err) {
    return { timedOut: true, message: String(err && err.message) };
  }
}

const ops = {
  connect,
  emit,
  send: ({ client: name, event, args = [] }) => { client(name).socket.emit(event, ...args); return {}; },
  wait: ({ client: name, event, timeout = DEFAULT_TIMEOUT }) => client(name).next(event, timeout),
  events: ({ client: name }) => client(name).events,
  state: ({ client: name }) => {
    const { socket } = client(name);
    return { connected: socket.connected, id: socket.id ?? null, transport: transportOf(socket) };
  },
  disconnect: ({ client: name }) => { client(name).socket.disconnect(); return {}; },
};

function answer(reply) {
  process.stdout.write(JSON.stringify(reply) + "\n");
}

/** Run one command line; commands run concurrently, answers carry the command's id. */
async function run(line) {
  let command;
  try {
    command = JSON.parse(line);
  } catch (err) {
    answer({ id: null, ok: false, error: `bad JSON: ${err.message}` });
    return;
  }
  const op = ops[command.op];
  if (!op) {
    answer({ id: command.id, ok: false, error: `unknown op ${command.op}` });
    return;
  }
  try {
    answer({ id: command.id, ok: true, result: await op(command) });
  } catch (err) {
    answer({ id: command.id, ok: false, error: String(err && err.stack ? err.stack : err) });
  }
}

const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => { if (line.trim()) run(line); });
lines.on("close", () => {
  clients.forEach((c) => c.socket.close());
  process.exit(0);
});
