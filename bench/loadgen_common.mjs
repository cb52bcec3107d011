// What bench's two load generators share (loadgen.mjs: one HQ or the Node reference; cluster_loadgen.mjs:
// an HQ cluster): timing helpers, a hard time limit, and an authenticated client with no reconnection,
// to loopback addresses only: the JS socket.io-client over the websocket transport (socketClient), or
// HQ's plain WebSocket endpoint /ws with JSON frames over the `ws` package (plainClient), both with the
// same interface (login, connect, connectMany, ack; a socket has on("message"), close(), connected).
import { EventEmitter } from "node:events";
import { performance } from "node:perf_hooks";
import { io } from "socket.io-client";
import WebSocket from "ws";

export const LOOPBACK = /^https?:\/\/(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?\/?$/;

export const now = () => performance.now();
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
export const round = (x, digits = 3) => (x === null || x === undefined ? null : Number(x.toFixed(digits)));

export function percentile(values, q) {
  if (values.length === 0) return null;
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

// A run that hangs (a server that stopped answering) still ends, with an error result.
export function armHardStop(scenario, limitMs) {
  const hardStop = setTimeout(() => {
    console.log(JSON.stringify({ scenario, error: "hard time limit reached" }));
    process.exit(1);
  }, limitMs);
  hardStop.unref();
}

export function base(url) {
  if (!LOOPBACK.test(url)) throw new Error(`not a loopback URL: ${url}`);
  return url.replace(/\/$/, "");
}

// login / connect / connectMany / ack against any loopback URL, acks and handshakes bounded by ackTimeoutMs.
// Open `count` connections with `connect`, at most `concurrency` handshakes at a time (both clients).
function connectManyWith(connect) {
  return async function connectMany(url, token, count, concurrency = 50) {
    const sockets = [];
    let next = 0;
    async function worker() {
      while (next < count) {
        next += 1;
        sockets.push(await connect(url, token));
      }
    }
    await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
    return sockets;
  };
}

export function socketClient(ackTimeoutMs) {
  // One authenticated Socket.IO connection over the websocket transport, no reconnection.
  function connect(url, token) {
    return new Promise((resolve, reject) => {
      const socket = io(base(url), {
        auth: { token },
        transports: ["websocket"],
        forceNew: true,
        reconnection: false,
        timeout: ackTimeoutMs,
      });
      socket.once("connect", () => resolve(socket));
      socket.once("connect_error", (err) => {
        socket.close();
        reject(new Error(`connect_error: ${err.message}`));
      });
    });
  }

  async function ack(socket, event, payload) {
    const answer = await socket.timeout(ackTimeoutMs).emitWithAck(event, payload);
    if (!answer || answer.ok !== true) throw new Error(`${event} refused: ${JSON.stringify(answer)}`);
    return answer;
  }

  return { login: loginAt, connect, connectMany: connectManyWith(connect), ack };
}

// Log in over HTTP; the access token.
async function loginAt(url, { codename, password }) {
  const response = await fetch(`${base(url)}/api/auth/login`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username: codename, password }),
  });
  const body = await response.json();
  if (response.status !== 200) throw new Error(`login ${codename}: ${response.status} ${JSON.stringify(body)}`);
  return body.access_token;
}

// One plain WebSocket to HQ's /ws (contract §8): JSON frames, acks matched by `ref`, pushed events emitted.
class PlainSocket extends EventEmitter {
  constructor(ws, ackTimeoutMs) {
    super();
    this.ws = ws;
    this.ackTimeoutMs = ackTimeoutMs;
    this.nextRef = 1;
    this.pending = new Map();
    ws.on("message", (data) => {
      const frame = JSON.parse(data);
      if (frame.type === "ack") {
        const waiter = this.pending.get(frame.ref);
        if (waiter) {
          this.pending.delete(frame.ref);
          waiter(frame);
        }
      } else {
        this.emit(frame.type, frame);
      }
    });
    ws.on("close", () => {
      for (const waiter of this.pending.values()) waiter({ ok: false, error: { code: "closed" } });
      this.pending.clear();
    });
  }

  get connected() {
    return this.ws.readyState === WebSocket.OPEN;
  }

  call(event, payload) {
    const ref = this.nextRef++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.pending.delete(ref); reject(new Error(`${event}: no ack`)); },
                               this.ackTimeoutMs);
      this.pending.set(ref, (frame) => { clearTimeout(timer); resolve(frame); });
      this.ws.send(JSON.stringify({ type: event, ref, ...payload }));
    });
  }

  close() {
    this.ws.close();
  }
}

// login / connect / connectMany / ack over HQ's plain WebSocket endpoint (the token as a Bearer header).
export function plainClient(ackTimeoutMs) {
  function connect(url, token) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`${base(url).replace(/^http/, "ws")}/ws`, {
        headers: { Authorization: `Bearer ${token}` }, perMessageDeflate: false, handshakeTimeout: ackTimeoutMs,
      });
      ws.once("open", () => resolve(new PlainSocket(ws, ackTimeoutMs)));
      ws.once("close", (code, reason) => reject(new Error(`closed ${code} ${reason}`)));
      ws.once("error", (err) => reject(err));
    });
  }

  async function ack(socket, event, payload) {
    const answer = await socket.call(event, payload);
    if (answer.ok !== true) throw new Error(`${event} refused: ${JSON.stringify(answer)}`);
    return answer;
  }

  return { login: loginAt, connect, connectMany: connectManyWith(connect), ack };
}

// Run the scenario named `name` and print its result as one JSON line (exit 0), or the error (exit 1).
export async function runScenario(program, name, scenarios) {
  const run = scenarios[name];
  if (!run) {
    console.error(`${program}: unknown scenario ${name}; one of ${Object.keys(scenarios).join(", ")}`);
    process.exit(2);
  }
  try {
    const result = await run();
    console.log(JSON.stringify({ scenario: name, ...result }));
    process.exit(0);
  } catch (err) {
    console.log(JSON.stringify({ scenario: name, error: String(err.stack ?? err) }));
    process.exit(1);
  }
}
