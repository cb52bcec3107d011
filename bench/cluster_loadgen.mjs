// The cluster benchmark's load generator (bench/cluster.py runs it): JS socket.io-client over the
// websocket transport, no reconnection, loopback only, every loop bounded in count and time.
//
// Usage: node cluster_loadgen.mjs --scenario NAME --params '{"...": ...}'
// Prints one JSON object on stdout (`hold` prints two: once connected, and when done).
//
// Scenarios:
//   delivery    a sender on one node, members on several: send -> receive latency per node, order
//   revocation  log in, connect to the other node, log out on the first: logout -> session_ended
//   throughput  N clients per node, one message in flight each, spread over channels, with listeners
//               checking every channel's ids; the window's start and end printed as lines so that the
//               runner samples CPU of any process
//   messages    the same on one URL with no listener (bench's `messages` load)
//   hold        N idle authenticated sockets until "stop" on stdin (or hold_s), counting drops
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { armHardStop, base, now, percentile, round, runScenario, sleep, socketClient } from "./loadgen_common.mjs";

const { values: cli } = parseArgs({
  options: { scenario: { type: "string" }, params: { type: "string", default: "{}" } },
});

const P = JSON.parse(cli.params);
const ACK_TIMEOUT_MS = P.ack_timeout_ms ?? 30000;
armHardStop(cli.scenario, (P.hard_limit_s ?? 180) * 1000);
const { login, connect, connectMany, ack } = socketClient(ACK_TIMEOUT_MS);

function summary(values) {
  return {
    n: values.length,
    p50_ms: round(percentile(values, 0.5)),
    p99_ms: round(percentile(values, 0.99)),
    max_ms: round(values.length ? Math.max(...values) : null),
  };
}

async function logout(url, token) {
  const response = await fetch(`${base(url)}/api/auth/logout`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}` },
  });
  await response.arrayBuffer();
  if (response.status !== 204) throw new Error(`logout: ${response.status}`);
}

// A sender on `sender_url` sends `messages` messages, one every `interval_ms`, to `channel`; members
// on each of `member_urls` (`members_per_url` each) record send -> receive per message (the text is
// the message's index, the send time is kept here: one clock). Also checks order and completeness.
async function scenarioDelivery() {
  const { sender_url, member_urls, members_per_url = 50, messages = 500, interval_ms = 10,
          channel = "missions", timeout_s = 60 } = P;
  const groups = [];
  for (const url of member_urls) {
    const token = await login(url, P.operative);
    const sockets = await connectMany(url, token, members_per_url);
    await Promise.all(sockets.map((socket) => ack(socket, "join", { channel })));
    groups.push({ url, sockets, latencies: [], received: 0, outOfOrder: 0 });
  }
  const sender = await connect(sender_url, await login(sender_url, P.handler));
  const sentAt = new Float64Array(messages);
  const expected = groups.length * members_per_url * messages;
  let received = 0;
  let resolveAll;
  const allDone = new Promise((resolve) => { resolveAll = resolve; });
  for (const group of groups) {
    for (const socket of group.sockets) {
      let lastId = 0;
      socket.on("message", (m) => {
        const t = now();
        const index = Number(m.text);
        group.latencies.push(t - sentAt[index]);
        if (m.id <= lastId) group.outOfOrder += 1;
        lastId = m.id;
        group.received += 1;
        received += 1;
        if (received === expected) resolveAll();
      });
    }
  }
  const acks = [];
  const ackErrors = [];
  const start = now();
  for (let i = 0; i < messages; i += 1) {
    const due = start + i * interval_ms;
    const wait = due - now();
    if (wait > 0) await sleep(wait);
    sentAt[i] = now();
    acks.push(ack(sender, "message", { channel, text: String(i) }).then(
      () => now() - sentAt[i], (err) => { ackErrors.push(String(err.message)); return null; }));
  }
  const ackTimes = (await Promise.all(acks)).filter((x) => x !== null);
  const outcome = await Promise.race([allDone, sleep(timeout_s * 1000).then(() => "timeout")]);
  for (const group of groups) for (const socket of group.sockets) socket.close();
  sender.close();
  return {
    rate_per_s: round(1000 / interval_ms, 1),
    ack: summary(ackTimes),
    ack_errors: ackErrors.length,
    complete: outcome !== "timeout",
    per_url: groups.map((g) => ({
      url: g.url, members: g.sockets.length, received: g.received,
      expected: g.sockets.length * messages, out_of_order: g.outOfOrder, ...summary(g.latencies),
    })),
  };
}

// `count` times: log in on urls[i % 2], connect a socket of that session to the other node, log out
// on the first; the delay is from sending the logout until that socket gets session_ended.
async function scenarioRevocation() {
  const { urls, count = 200, timeout_s = 5 } = P;
  const delays = [];
  let timeouts = 0;
  const reasons = {};
  for (let i = 0; i < count; i += 1) {
    const origin = urls[i % urls.length];
    const other = urls[(i + 1) % urls.length];
    const token = await login(origin, P.operative);
    const socket = await connect(other, token);
    const ended = new Promise((resolve) => {
      socket.once("session_ended", (data) => resolve([now(), data?.reason]));
    });
    const t = now();
    await logout(origin, token);
    const outcome = await Promise.race([ended, sleep(timeout_s * 1000).then(() => null)]);
    if (outcome === null) timeouts += 1;
    else {
      delays.push(outcome[0] - t);
      reasons[outcome[1]] = (reasons[outcome[1]] ?? 0) + 1;
    }
    socket.close();
  }
  return { ...summary(delays), min_ms: round(delays.length ? Math.min(...delays) : null), timeouts, reasons };
}

// A listener: one socket of `agent` on `url` joined to `channel`, checking what it receives: every id
// of the channel once and in order (ids are per channel, so gapless).
async function listen(url, agent, channel) {
  const socket = await connect(url, await login(url, agent));
  await ack(socket, "join", { channel });
  const state = { url, channel, socket, seen: new Set(), received: 0, duplicates: 0, outOfOrder: 0, last: 0 };
  socket.on("message", (m) => {
    if (m.channel !== channel) return;
    state.received += 1;
    if (state.seen.has(m.id)) state.duplicates += 1;
    else state.seen.add(m.id);
    if (m.id <= state.last) state.outOfOrder += 1;
    state.last = Math.max(state.last, m.id);
  });
  return state;
}

// The listener's tally against the ids acknowledged on its channel (all of them, warm-up included:
// the listener joined before the first send, and only this run's senders write to the channel).
function tally(listener, acked) {
  const ids = acked.get(listener.channel) ?? { min: null, max: null };
  let expected = 0;
  let lost = 0;
  if (ids.min !== null) {
    expected = ids.max - ids.min + 1;
    for (let id = ids.min; id <= ids.max; id += 1) if (!listener.seen.has(id)) lost += 1;
  }
  return { url: listener.url, channel: listener.channel, expected, received: listener.received, lost,
           duplicates: listener.duplicates, out_of_order: listener.outOfOrder };
}

// The throughput load: `clients` sockets on each of `sender_urls` each keep `window` messages in flight
// (client i of a URL to channels[i % channels.length]); `listeners` ([{url, channel, agent?}]) joined
// first. Prints {"window":"start"} and {"window":"end"} lines so that the runner can sample the CPU
// time of every process involved (nodes, PostgreSQL backends, Redis); after the window, waits up to
// `drain_s` for every listener to have its channel's last acknowledged id.
async function scenarioThroughput() {
  const { sender_urls, clients = 100, window = 1, warmup_s = 2, duration_s = 5, channels = ["hq"],
          text_bytes = 64, listeners = [], drain_s = 10 } = P;
  const listening = [];
  for (const l of listeners) listening.push(await listen(l.url, P[l.agent ?? "handler"], l.channel));
  const senders = [];
  for (const url of sender_urls) {
    const sockets = await connectMany(url, await login(url, P.operative), clients);
    sockets.forEach((socket, index) => senders.push({ url, socket, channel: channels[index % channels.length] }));
  }
  const text = "x".repeat(text_bytes);
  const start = now();
  const windowStart = start + warmup_s * 1000;
  const end = windowStart + duration_s * 1000;
  let own = null;
  setTimeout(() => { own = process.cpuUsage(); console.log(JSON.stringify({ window: "start" })); }, warmup_s * 1000);
  const latencies = [];
  const ackedPerUrl = Object.fromEntries(sender_urls.map((url) => [url, 0]));
  const acked = new Map(); // channel -> {min, max} of the ids acknowledged
  let errors = 0;
  let firstError = null;
  async function send({ url, socket, channel }) {
    while (now() < end) {
      const t = now();
      try {
        const answer = await ack(socket, "message", { channel, text });
        const ids = acked.get(channel) ?? { min: answer.id, max: answer.id };
        acked.set(channel, { min: Math.min(ids.min, answer.id), max: Math.max(ids.max, answer.id) });
        if (t >= windowStart) {
          latencies.push(now() - t);
          ackedPerUrl[url] += 1;
        }
      } catch (err) {
        errors += 1;
        firstError ??= String(err.message);
        await sleep(10);
      }
    }
  }
  const loops = [];
  for (const sender of senders) for (let i = 0; i < window; i += 1) loops.push(send(sender));
  await Promise.all(loops);
  const used = process.cpuUsage(own);
  console.log(JSON.stringify({ window: "end" }));
  const caughtUp = () => listening.every((l) => l.last >= (acked.get(l.channel)?.max ?? 0));
  const drainStart = now();
  while (!caughtUp() && now() - drainStart < drain_s * 1000) await sleep(20);
  const drainMs = now() - drainStart;
  for (const { socket } of senders) socket.close();
  for (const { socket } of listening) socket.close();
  return {
    msgs_per_s: round(latencies.length / duration_s, 1),
    p50_ms: round(percentile(latencies, 0.5)),
    p99_ms: round(percentile(latencies, 0.99)),
    acked: latencies.length,
    acked_per_url: ackedPerUrl,
    loadgen_cpu: round((used.user + used.system) / 1e6 / ((now() - windowStart) / 1000), 2),
    errors,
    first_error: firstError,
    drain_ms: round(drainMs, 1),
    listeners: listening.map((l) => tally(l, acked)),
  };
}

// bench's `messages` load on one URL: the throughput load with no listener (nobody has joined the
// channels, so no fan-out).
async function scenarioMessages() {
  P.sender_urls = [P.url];
  return scenarioThroughput();
}

// `clients` idle authenticated sockets on `url`; prints {"connected": n} once all are up, then holds
// them until a "stop" line on stdin (or `hold_s`), and prints how many were still connected.
async function scenarioHold() {
  const { url, clients = 1000, concurrency = 50, hold_s = 120 } = P;
  const token = await login(url, P.operative);
  const started = now();
  const sockets = await connectMany(url, token, clients, concurrency);
  let dropped = 0;
  for (const socket of sockets) socket.on("disconnect", () => { dropped += 1; });
  console.log(JSON.stringify({ connected: sockets.filter((s) => s.connected).length,
                               connect_s: round((now() - started) / 1000, 2) }));
  const lines = createInterface({ input: process.stdin });
  const stop = new Promise((resolve) => {
    lines.on("line", (line) => { if (line.trim() === "stop") resolve("stop"); });
    lines.on("close", () => resolve("eof"));
  });
  const why = await Promise.race([stop, sleep(hold_s * 1000).then(() => "hold_s")]);
  const still = sockets.filter((s) => s.connected).length;
  const droppedWhileHeld = dropped;
  lines.close();
  for (const socket of sockets) socket.close();
  return { still_connected: still, dropped: droppedWhileHeld, ended_by: why };
}

const SCENARIOS = {
  delivery: scenarioDelivery,
  revocation: scenarioRevocation,
  throughput: scenarioThroughput,
  messages: scenarioMessages,
  hold: scenarioHold,
};

await runScenario("cluster_loadgen", cli.scenario, SCENARIOS);
