// The Node original HQ is measured against, written from the well-known "secure WebSockets with
// JWT" design: express + socket.io 4 + jsonwebtoken, bcryptjs password checks, the JWT checked in
// io.use from socket.handshake.auth.token, messages kept only in memory.
//
// It speaks the same wire protocol as HQ for what the benchmark uses:
//   POST /api/auth/login {username, password} -> {access_token, token_type, expires_in}
//   join {channel} -> ack {ok, channel, last_id}
//   message {channel, text} -> ack {ok, id}; the message goes to the channel room except the sender.
//
// Usage: node server.mjs --port P --users users.json --rounds N
//   users.json: [{"codename": ..., "role": ..., "password": ...}] (hashed with bcryptjs at start-up).
import { createServer } from "node:http";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import express from "express";
import { Server } from "socket.io";
import jwt from "jsonwebtoken";
import bcrypt from "bcryptjs";

const { values: args } = parseArgs({
  options: {
    port: { type: "string", default: "3100" },
    host: { type: "string", default: "127.0.0.1" },
    users: { type: "string" },
    rounds: { type: "string", default: "10" },
  },
});

const SECRET = randomBytes(32).toString("hex");
const ACCESS_TTL = 900;
const rounds = Number(args.rounds);

// Accounts live in memory; their hashes are made once, at start-up, with the benchmark's cost.
const users = new Map();
for (const { codename, role, password } of JSON.parse(readFileSync(args.users, "utf8"))) {
  users.set(codename.toLowerCase(), { codename, role, hash: bcrypt.hashSync(password, rounds) });
}
// An unknown codename costs the same bcrypt work as a wrong password.
const dummyHash = bcrypt.hashSync(randomBytes(16).toString("hex"), rounds);

const app = express();
app.use(express.json({ limit: "64kb" }));

app.post("/api/auth/login", async (req, res) => {
  const { username, password } = req.body ?? {};
  if (typeof username !== "string" || typeof password !== "string") {
    return res.status(400).json({ error: { code: "bad_request", message: "username and password required" } });
  }
  const user = users.get(username.toLowerCase());
  const ok = await bcrypt.compare(password, user ? user.hash : dummyHash);
  if (!user || !ok) {
    return res.status(401).json({ error: { code: "invalid_credentials", message: "invalid credentials" } });
  }
  const token = jwt.sign({ sub: user.codename, role: user.role }, SECRET, {
    algorithm: "HS256",
    expiresIn: ACCESS_TTL,
  });
  res.json({ access_token: token, token_type: "Bearer", expires_in: ACCESS_TTL });
});

app.get("/healthz", (_req, res) => res.json({ status: "ok" }));

const httpServer = createServer(app);
const io = new Server(httpServer, { maxHttpBufferSize: 65536 });

io.use((socket, next) => {
  const token = socket.handshake.auth?.token;
  if (!token) return next(Object.assign(new Error("Unauthorized: token_missing"), { data: { code: "token_missing" } }));
  jwt.verify(token, SECRET, { algorithms: ["HS256"] }, (err, claims) => {
    if (err) return next(Object.assign(new Error("Unauthorized: token_invalid"), { data: { code: "token_invalid" } }));
    socket.data.user = claims;
    next();
  });
});

const lastIds = new Map();
const room = (channel) => `channel:${channel}`;

io.on("connection", (socket) => {
  socket.on("join", (payload, ack) => {
    if (typeof ack !== "function") return;
    const channel = payload?.channel;
    if (typeof channel !== "string") return ack({ ok: false, error: { code: "bad_request", message: "channel" } });
    socket.join(room(channel));
    ack({ ok: true, channel, last_id: lastIds.get(channel) ?? 0 });
  });

  socket.on("message", (payload, ack) => {
    if (typeof ack !== "function") return;
    const channel = payload?.channel;
    const text = payload?.text;
    if (typeof channel !== "string" || typeof text !== "string" || !text) {
      return ack({ ok: false, error: { code: "bad_request", message: "channel and text" } });
    }
    const id = (lastIds.get(channel) ?? 0) + 1;
    lastIds.set(channel, id);
    const message = { id, channel, from: socket.data.user.sub, text, ts: new Date().toISOString() };
    socket.to(room(channel)).emit("message", message);
    ack({ ok: true, id });
  });
});

httpServer.listen(Number(args.port), args.host, () => {
  console.log(`node reference listening on http://${args.host}:${args.port}/`);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    io.close();
    process.exit(0);
  });
}
