// One load generator for both servers (HQ and the Node reference), using the JS socket.io-client.
//
// Usage: node loadgen.mjs --url http://127.0.0.1:PORT --scenario NAME --params '{"...": ...}' [--pid PID]
//                         [--transport socketio|plain]
// Prints one JSON object on stdout. Every loop is bounded in count and time; loopback only.
// --transport plain speaks HQ's plain WebSocket endpoint (/ws, JSON frames) instead of Socket.IO.
//
// Scenarios:
//   connections  authenticated connections per second (connect with a JWT, then disconnect)
//   messages     acknowledged `message`s per second, p50/p99 ack latency
//   fanout       deliveries per second and time until every member has every message
//   idle_memory  server RSS growth per idle authenticated connection (/proc/PID/status)
//   login_storm  p99 ack latency of paced clients while concurrent logins run, against without
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import {
  LOOPBACK, armHardStop, now, percentile, plainClient, round, runScenario, sleep, socketClient,
} from "./loadgen_common.mjs";

const { values: cli } = parseArgs({
  options: {
    url: { type: "string" },
    scenario: { type: "string" },
    params: { type: "string", default: "{}" },
    pid: { type: "string" },
    transport: { type: "string", default: "socketio" },
  },
});

if (!cli.url || !LOOPBACK.test(cli.url)) {
  console.error("loadgen: --url must be a loopback address");
  process.exit(2);
}
const URL_BASE = cli.url.replace(/\/$/, "");
const P = JSON.parse(cli.params);
const ACK_TIMEOUT_MS = P.ack_timeout_ms ?? 30000;
const HARD_LIMIT_MS = (P.hard_limit_s ?? 120) * 1000;

armHardStop(cli.scenario, HARD_LIMIT_MS);

// The shared client, bound to the one URL this generator loads.
const client = cli.transport === "plain" ? plainClient(ACK_TIMEOUT_MS) : socketClient(ACK_TIMEOUT_MS);
const login = (agent) => client.login(URL_BASE, agent);
const connect = (token) => client.connect(URL_BASE, token);
const connectMany = (token, count, concurrency) => client.connectMany(URL_BASE, token, count, concurrency);
const { ack } = client;

function closeAll(sockets) {
  for (const socket of sockets) socket.close();
}

// CPU seconds (user + system, all threads) a process has used, from /proc/PID/stat (100 Hz ticks).
function serverCpuSeconds() {
  if (!cli.pid) return null;
  const stat = readFileSync(`/proc/${cli.pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

// Both sides' CPU use over a measured window: which one was saturated?
function cpuMeter() {
  const server = serverCpuSeconds();
  const own = process.cpuUsage();
  const t = now();
  return () => {
    const wall = (now() - t) / 1000;
    const used = process.cpuUsage(own);
    const serverNow = serverCpuSeconds();
    return {
      server_cpu: server === null ? null : round((serverNow - server) / wall, 2),
      loadgen_cpu: round((used.user + used.system) / 1e6 / wall, 2),
    };
  };
}

// A rate divided by the server's CPU use: work per CPU-second, robust when other load shares the core.
const perCpu = (rate, cpu) => (cpu.server_cpu ? round(rate / cpu.server_cpu, 1) : null);

function readRssKb(pid) {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  if (!match) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(match[1]);
}

// Scenario 1: authenticated connections per second. Each worker connects with a valid JWT, waits
// for `connect`, disconnects, and goes again; only connects completed in the window count.
async function scenarioConnections() {
  const token = await login(P.operative);
  const { concurrency = 50, warmup_s = 1, duration_s = 5 } = P;
  const start = now();
  const windowStart = start + warmup_s * 1000;
  const end = windowStart + duration_s * 1000;
  let meter = null;
  setTimeout(() => { meter = cpuMeter(); }, warmup_s * 1000);
  const latencies = [];
  let errors = 0;
  let firstError = null;
  async function worker() {
    while (now() < end) {
      const t = now();
      try {
        const socket = await connect(token);
        const done = now();
        if (t >= windowStart && done <= end) latencies.push(done - t);
        socket.close();
      } catch (err) {
        errors += 1;
        firstError ??= String(err.message);
        await sleep(10);
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  const cpu = meter();
  return {
    ...cpu,
    conn_per_s: round(latencies.length / duration_s, 1),
    conn_per_server_cpu_s: perCpu(latencies.length / duration_s, cpu),
    connect_p50_ms: round(percentile(latencies, 0.5)),
    connect_p99_ms: round(percentile(latencies, 0.99)),
    connections: latencies.length,
    errors,
    first_error: firstError,
  };
}

// Scenario 2: acknowledged messages per second. `clients` sockets each keep `window` messages in
// flight (the next is sent when an ack arrives) to a channel nobody has joined.
async function scenarioMessages() {
  const { clients = 100, window = 1, warmup_s = 2, duration_s = 5, channel = "hq", text_bytes = 64 } = P;
  const token = await login(P.operative);
  const sockets = await connectMany(token, clients);
  const text = "x".repeat(text_bytes);
  const start = now();
  const windowStart = start + warmup_s * 1000;
  const end = windowStart + duration_s * 1000;
  let meter = null;
  setTimeout(() => { meter = cpuMeter(); }, warmup_s * 1000);
  const latencies = [];
  let errors = 0;
  let firstError = null;
  async function sender(socket) {
    while (now() < end) {
      const t = now();
      try {
        await ack(socket, "message", { channel, text });
        if (t >= windowStart) latencies.push(now() - t);
      } catch (err) {
        errors += 1;
        firstError ??= String(err.message);
        await sleep(10);
      }
    }
  }
  const loops = [];
  for (const socket of sockets) for (let i = 0; i < window; i += 1) loops.push(sender(socket));
  await Promise.all(loops);
  const cpu = meter();
  closeAll(sockets);
  return {
    ...cpu,
    msgs_per_s: round(latencies.length / duration_s, 1),
    msgs_per_server_cpu_s: perCpu(latencies.length / duration_s, cpu),
    p50_ms: round(percentile(latencies, 0.5)),
    p99_ms: round(percentile(latencies, 0.99)),
    acked: latencies.length,
    errors,
    first_error: firstError,
  };
}

// Scenario 3: fan-out. `members` sockets join `missions`; one handler sends `messages` messages at
// once (each acknowledged). Measured: deliveries per second and the time until all have all.
async function scenarioFanout() {
  const { members = 1000, messages = 100, channel = "missions", text_bytes = 64, timeout_s = 60 } = P;
  const memberToken = await login(P.operative);
  const senderToken = await login(P.handler);
  const sockets = await connectMany(memberToken, members);
  await Promise.all(sockets.map((socket) => ack(socket, "join", { channel })));
  const sender = await connect(senderToken);
  const finished = [];
  let delivered = 0;
  let start = 0;
  let resolveAll;
  const allDone = new Promise((resolve) => { resolveAll = resolve; });
  for (const socket of sockets) {
    let count = 0;
    socket.on("message", () => {
      count += 1;
      delivered += 1;
      if (count === messages) {
        finished.push(now() - start);
        if (finished.length === members) resolveAll();
      }
    });
  }
  const text = "y".repeat(text_bytes);
  const meter = cpuMeter();
  start = now();
  const acks = Promise.all(Array.from({ length: messages }, (_, i) => ack(sender, "message", { channel, text: `${i} ${text}` })));
  const ackTimes = acks.then(() => now() - start);
  const timedOut = sleep(timeout_s * 1000).then(() => "timeout");
  const outcome = await Promise.race([allDone, timedOut]);
  const allAckedMs = await Promise.race([ackTimes, sleep(1000).then(() => null)]);
  const cpu = meter();
  const elapsed = outcome === "timeout" ? null : Math.max(...finished);
  closeAll([...sockets, sender]);
  return {
    ...cpu,
    deliveries_per_s: elapsed === null ? null : round((members * messages) / (elapsed / 1000), 1),
    deliveries_per_server_cpu_s: elapsed === null ? null : perCpu((members * messages) / (elapsed / 1000), cpu),
    all_have_all_ms: round(elapsed),
    member_done_p50_ms: round(percentile(finished, 0.5)),
    all_acked_ms: round(allAckedMs),
    delivered,
    expected: members * messages,
    complete: outcome !== "timeout",
  };
}

// Scenario 4: memory per idle connection, from the server's VmRSS before and after `clients`
// authenticated sockets connect and sit idle.
async function scenarioIdleMemory() {
  const { clients = 1000, settle_s = 3 } = P;
  if (!cli.pid) throw new Error("idle_memory needs --pid");
  const token = await login(P.operative);
  // Warm the connect path once so lazily loaded code is not counted per connection.
  closeAll(await connectMany(token, 10));
  await sleep(settle_s * 1000);
  const before = readRssKb(cli.pid);
  const sockets = await connectMany(token, clients);
  await sleep(settle_s * 1000);
  const after = readRssKb(cli.pid);
  const connected = sockets.filter((socket) => socket.connected).length;
  closeAll(sockets);
  return {
    kb_per_conn: round((after - before) / clients, 2),
    rss_before_kb: before,
    rss_after_kb: after,
    connected,
  };
}

// Scenario 5: the login-storm stall. `busy` clients each send one message every `interval_ms`
// (open loop); p99 ack latency without logins, then while `logins` concurrent logins run.
async function scenarioLoginStorm() {
  const { busy = 50, interval_ms = 50, warmup_s = 1, base_s = 3, logins = 30, channel = "hq", text_bytes = 64 } = P;
  const token = await login(P.operative);
  const sockets = await connectMany(token, busy);
  const text = "z".repeat(text_bytes);
  const samples = []; // [sentAt, latency]
  let errors = 0;
  let firstError = null;
  let running = true;
  const timers = sockets.map((socket, index) => {
    const tick = () => {
      if (!running) return;
      const t = now();
      ack(socket, "message", { channel, text })
        .then(() => samples.push([t, now() - t]))
        .catch((err) => { errors += 1; firstError ??= String(err.message); });
    };
    // Spread the clients evenly over one interval so the load is smooth.
    const phase = (index * interval_ms) / busy;
    return setTimeout(() => { tick(); timers[index] = setInterval(tick, interval_ms); }, phase);
  });
  await sleep(warmup_s * 1000);
  const baseStart = now();
  await sleep(base_s * 1000);
  const stormStart = now();
  const loginTimes = [];
  let loginErrors = 0;
  await Promise.all(Array.from({ length: logins }, async () => {
    const t = now();
    try {
      await login(P.operative);
      loginTimes.push(now() - t);
    } catch (err) {
      loginErrors += 1;
      firstError ??= String(err.message);
    }
  }));
  const stormEnd = now();
  running = false;
  for (const timer of timers) { clearTimeout(timer); clearInterval(timer); }
  await sleep(Math.min(5000, Math.max(500, 2 * (stormEnd - stormStart)))); // let in-flight acks land
  const base = samples.filter(([t]) => t >= baseStart && t < stormStart).map(([, l]) => l);
  const storm = samples.filter(([t]) => t >= stormStart && t < stormEnd).map(([, l]) => l);
  closeAll(sockets);
  const p99Base = percentile(base, 0.99);
  const p99Storm = percentile(storm, 0.99);
  return {
    p99_base_ms: round(p99Base),
    p99_storm_ms: round(p99Storm),
    stall_ratio: p99Base && p99Storm !== null ? round(p99Storm / p99Base, 2) : null,
    p50_base_ms: round(percentile(base, 0.5)),
    p50_storm_ms: round(percentile(storm, 0.5)),
    storm_ms: round(stormEnd - stormStart),
    login_p50_ms: round(percentile(loginTimes, 0.5)),
    login_max_ms: round(loginTimes.length ? Math.max(...loginTimes) : null),
    base_samples: base.length,
    storm_samples: storm.length,
    errors,
    login_errors: loginErrors,
    first_error: firstError,
  };
}

const SCENARIOS = {
  connections: scenarioConnections,
  messages: scenarioMessages,
  fanout: scenarioFanout,
  idle_memory: scenarioIdleMemory,
  login_storm: scenarioLoginStorm,
};

await runScenario("loadgen", cli.scenario, SCENARIOS);
