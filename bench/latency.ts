// Section 4: commit → delivery latency, p50 and p99. (a) `relay.run()` polling at its default interval (500 ms) on a
// libSQL file and on Postgres; (b) `qstashNudge` after every commit through the QStash emulator: nudge → signed
// `POST /drain` on the Hono relay app → `qstashTransport` → signed delivery to a consumer endpoint, window 1,000 ms.
// Commits are spaced randomly; a commit's time is taken when its transaction has committed, a delivery's when the
// transport (a) or the consumer endpoint (b) receives it.
import { Receiver } from "@upstash/qstash";
import { Hono } from "hono";
import * as v from "valibot";
import { createOutbox, createRelay, defineTopic, type OutboxMessage, type Transport } from "../mod.ts";
import { createRelayApp } from "../adapters/hono/mod.ts";
import { MESSAGE_HEADERS, qstashFollowUp, qstashNudge, qstashTransport } from "../adapters/qstash/mod.ts";
import { serveFetch } from "../test/fixtures/fetch-server.ts";
import { startQstashEmulator } from "../test/fixtures/qstash-emulator.ts";
import { type BenchConfig, connect, libsqlOutbox, onCleanup, percentile, pgOutbox, type Results, sleep, TOPIC } from "./lib.ts";

const SECTION = "4 latency";
const POLL_MS = 500; // relay.run()'s default pollIntervalMs (not passed below, so the default is what is measured)
const WINDOW_MS = 1_000;
const MEAN_GAP_MS = 25;

const orderCreated = defineTopic(TOPIC, v.object({ id: v.string(), total: v.number() }));

/** Where the writer commits: a business row and its outbox message in one transaction. */
interface Target {
  readonly label: string;
  readonly outbox: ReturnType<typeof createOutbox<unknown, unknown, typeof orderCreated>>;
  /** Commits order `i` with its message; resolves with the message id once committed. */
  commit(i: number): Promise<string>;
  close(): Promise<void>;
}

async function pgTarget(): Promise<Target> {
  const sql = connect({ max: 4 });
  const o = await pgOutbox(sql, "latency");
  await sql.unsafe(`CREATE TABLE "${o.schema}".orders (id text PRIMARY KEY, total numeric NOT NULL)`);
  const outbox = createOutbox({ storage: o.storage, topics: [orderCreated] }) as unknown as Target["outbox"];
  const insert = `INSERT INTO "${o.schema}".orders (id, total) VALUES ($1, $2)`;
  return {
    label: "Postgres",
    outbox,
    commit: (i) =>
      sql.begin(async (tx) => {
        await tx.unsafe(insert, [`o${i}`, i], { prepare: true });
        return await outbox.enqueue(tx as never, orderCreated, { id: `o${i}`, total: i });
      }) as Promise<string>,
    close: () => o.drop(),
  };
}

async function libsqlTarget(): Promise<Target> {
  const o = await libsqlOutbox();
  await o.client.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, total REAL NOT NULL)");
  const outbox = createOutbox({ storage: o.storage, topics: [orderCreated] }) as unknown as Target["outbox"];
  return {
    label: "libSQL file",
    outbox,
    async commit(i) {
      // storage.begin() waits asynchronously while the relay holds SQLite's write lock.
      const tx = await o.storage.begin();
      try {
        await tx.execute({ sql: "INSERT INTO orders (id, total) VALUES (?, ?)", args: [`o${i}`, i] });
        const id = await outbox.enqueue(tx, orderCreated, { id: `o${i}`, total: i });
        await tx.commit();
        return id;
      } catch (e) {
        tx.close();
        throw e;
      }
    },
    close: () => o.close(),
  };
}

let nextOrder = 0;

/** Commits `n` orders with random gaps (uniform, mean MEAN_GAP_MS); after each, `after(id)`. Returns commit times by id. */
async function writer(t: Target, n: number, after?: (id: string) => Promise<unknown>): Promise<Map<string, number>> {
  const committed = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    const id = await t.commit(nextOrder++); // order ids stay unique when several rows use one target
    committed.set(id, performance.now());
    await after?.(id);
    await sleep(Math.random() * 2 * MEAN_GAP_MS);
  }
  return committed;
}

async function waitFor(predicate: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

interface Latency {
  p50: number;
  p99: number;
  max: number;
  n: number;
}

function latencies(committed: Map<string, number>, received: Map<string, number>): Latency {
  const l = [...committed].map(([id, t]) => Math.max(0, received.get(id)! - t)).sort((a, b) => a - b);
  return { p50: percentile(l, 0.5), p99: percentile(l, 0.99), max: l[l.length - 1]!, n: l.length };
}

/**
 * (a) relay.run() with its default poll interval, a recording transport. `wake`: the storage's `subscribe` wakes the
 * relay on commit (polling stays as the fallback); without it, the relay sees a storage without `subscribe`.
 */
async function pollLatency(t: Target, n: number, wake: boolean): Promise<Latency> {
  const received = new Map<string, number>();
  const transport: Transport = {
    name: "recording",
    maxBatchSize: 1_000,
    send(messages: readonly OutboxMessage[]) {
      const now = performance.now();
      for (const m of messages) received.set(m.id, now);
      return Promise.resolve(messages.map(() => ({ status: "delivered" as const })));
    },
  };
  const { subscribe: _subscribe, ...pollOnly } = t.outbox.storage;
  const relay = createRelay({ outbox: wake ? t.outbox : createOutbox({ storage: pollOnly }), transport });
  const stop = new AbortController();
  const running = relay.run({ signal: stop.signal, onError: (e) => console.error("  relay.run:", e.message) });
  try {
    await sleep(50);
    const committed = await writer(t, n);
    await waitFor(() => received.size >= n, 10_000, "deliveries");
    return latencies(committed, received);
  } finally {
    stop.abort();
    await running;
  }
}

/** (b) commit → qstashNudge → /drain (Hono relay app) → qstashTransport → signed delivery to the consumer endpoint. */
async function nudgeLatency(t: Target, n: number): Promise<Latency & { drains: number; nudges: number }> {
  const e = await startQstashEmulator();
  onCleanup(() => e.close());
  const qstash = e.client();
  // The consumer verifies every delivery with the real Receiver.
  const receiver = new Receiver({ currentSigningKey: e.currentSigningKey, nextSigningKey: e.nextSigningKey });
  const received = new Map<string, number>();
  const consumer = await serveFetch(async (req) => {
    const body = await req.text();
    const now = performance.now();
    try {
      await receiver.verify({ signature: req.headers.get("upstash-signature") ?? "", body, url: req.url });
    } catch {
      return new Response("bad signature", { status: 401 });
    }
    const id = req.headers.get(MESSAGE_HEADERS.id);
    if (id) received.set(id, now);
    return new Response(null, { status: 200 });
  });
  onCleanup(() => consumer.close());
  let handler: ((r: Request) => Response | Promise<Response>) | null = null;
  const server = await serveFetch((r) => handler!(r));
  onCleanup(() => server.close());
  const drainUrl = `${server.url}/outbox/drain`;
  const relay = createRelay({
    outbox: t.outbox,
    transport: qstashTransport(qstash, { destination: `${consumer.url}/orders` }),
    leaseMs: 10_000,
    sendTimeoutMs: 3_000,
  });
  let drains = 0;
  /** Drains in flight: the last trailing-edge or follow-up drain may still run when every message has arrived. */
  let active = 0;
  const app = new Hono();
  app.route("/outbox", createRelayApp({
    relay: {
      drain: async (o) => {
        drains++;
        active++;
        try {
          return await relay.drain(o);
        } finally {
          active--;
        }
      },
    },
    outbox: t.outbox,
    auth: { qstash: { verifier: new Receiver({ currentSigningKey: e.currentSigningKey, nextSigningKey: e.nextSigningKey, devMode: false }) } },
    publicUrl: `${server.url}/outbox`,
    budgetMs: 5_000,
    followUp: qstashFollowUp(qstash, { url: drainUrl }),
  }));
  handler = (r) => app.fetch(r);
  try {
    const committed = await writer(t, n, () => qstashNudge(qstash, { url: drainUrl, windowMs: WINDOW_MS }));
    await waitFor(() => received.size >= n, 15_000, "deliveries to the consumer");
    const nudges = e.messages.filter((m) => m.url === drainUrl && m.dedupId?.startsWith("nudge-")).length;
    return { ...latencies(committed, received), drains, nudges };
  } finally {
    await server.close();
    // Before the caller drops the schema: a drain still claiming there deadlocked with the DROP SCHEMA (a slow hour,
    // 2026-12-03 17:46).
    await waitFor(() => active === 0, 15_000, "the drains in flight");
    await consumer.close();
    await e.close();
  }
}

export async function latencySection(cfg: BenchConfig, results: Results): Promise<void> {
  const n = cfg.latencyCommits;
  const fmt = (l: Latency): string => `max ${Math.round(l.max)} ms, ${l.n} commits ~${MEAN_GAP_MS} ms apart`;
  for (const make of [libsqlTarget, pgTarget]) {
    const t = await make();
    try {
      const l = await pollLatency(t, n, false);
      const base = { name: "poll interval", value: POLL_MS };
      results.compare(SECTION, `${t.label}: relay.run() polling (default 500 ms), p50`, l.p50, "ms", base);
      results.compare(SECTION, `${t.label}: relay.run() polling (default 500 ms), p99`, l.p99, "ms", base, undefined, fmt(l));
      const hasWake = typeof t.outbox.storage.subscribe === "function";
      if (!hasWake) results.note(`${t.label}: the storage has no subscribe yet, so the wake-up rows measure polling`);
      const w = await pollLatency(t, n, true);
      const label = `${t.label}: relay.run() with wake-up (storage.subscribe${hasWake ? "" : ": absent"})`;
      results.compare(SECTION, `${label}, p50`, w.p50, "ms", { name: "target 20 ms", value: 20 }, { kind: "max", value: 1 });
      results.compare(SECTION, `${label}, p99`, w.p99, "ms", { name: "target 100 ms", value: 100 }, { kind: "max", value: 1 }, fmt(w));
    } finally {
      await t.close();
    }
  }
  for (const make of [libsqlTarget, pgTarget]) {
    const t = await make();
    try {
      const l = await nudgeLatency(t, n);
      const base = { name: "nudge window", value: WINDOW_MS };
      results.compare(SECTION, `${t.label}: qstashNudge (window 1,000 ms) via emulator, p50`, l.p50, "ms", base);
      results.compare(SECTION, `${t.label}: qstashNudge (window 1,000 ms) via emulator, p99`, l.p99, "ms", base, undefined,
        `${fmt(l)}; ${l.nudges} nudge messages, ${l.drains} drain calls`);
    } finally {
      await t.close();
    }
  }
}
