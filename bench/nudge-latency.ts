// Commit → delivery latency through `qstashNudge` and the QStash emulator, p50 / p99.
//
// Path measured: a libSQL-file transaction commits an order and its outbox message → `qstashNudge` (leading edge:
// a drain call right away; trailing edge: at the window's end) → the emulator calls `POST /drain` on the Hono relay
// app with a signed request → `relay.drain()` → `qstashTransport` publishes the message → the emulator delivers it,
// signed, to a consumer endpoint that verifies it with the real `Receiver`. A commit's time is taken when its
// transaction has committed, a delivery's when the consumer endpoint receives it.
//
// Workloads, window 1,000 ms (the smallest: QStash's `notBefore` is in whole seconds):
// - lingering (the headline): commits ~25 ms apart (uniform 0–50 ms), the same writer as bench/latency.ts, nudged
//   with `linger: true`: each drain call stays open until the end of the window it serves (`POST /drain?linger=`,
//   the app's `maxLingerMs` 1,000) and drains commits as they come. The relay's storage has no `subscribe` here
//   (it would wake in-process at the writer's commit, which a relay function never sees in another process), so a
//   lingering drain finds new rows by polling `hasDue` every 25 ms (`lingerPollMs`' default).
// - continuous: the same commits nudged without the linger. Most commits share a window whose drain already ran, so
//   they wait for the trailing edge: p50 is about half a window by design.
// - sparse: one commit per window (gaps 1.05–1.5 s), so every commit is the first of a quiet window (leading edge).
// - floor: the same pipeline without the nudge hop (the writer calls `relay.drain()` itself after each commit).
//
// Run alone, under the benchmarks' lock: flock /tmp/edge-outbox-bench.lock node --import tsx bench/nudge-latency.ts [--quick]
// [--update-results]: the last also replaces the nudge rows (section "9 nudge latency") of bench/results.json.
import { Receiver } from "@upstash/qstash";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { Hono } from "hono";
import * as v from "valibot";
import { createOutbox, createRelay, defineTopic, type Relay } from "../mod.ts";
import { createRelayApp } from "../adapters/hono/mod.ts";
import { MESSAGE_HEADERS, qstashNudge, qstashTransport } from "../adapters/qstash/mod.ts";
import { serveFetch } from "../test/fixtures/fetch-server.ts";
import { startQstashEmulator } from "../test/fixtures/qstash-emulator.ts";
import { cleanupAll, libsqlOutbox, onCleanup, percentile, Results, sleep, TOPIC } from "./lib.ts";

const WINDOW_MS = 1_000;
const orderCreated = defineTopic(TOPIC, v.object({ id: v.string(), total: v.number() }));

/** p50 / p99 / max of one workload, ms, and what it took. */
export interface NudgeLatencyFigures {
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
  /** Commits measured. */
  readonly n: number;
  /** Drain calls the relay app served. */
  readonly drains: number;
  /** Windows (of `windowMs`) the commits spanned. */
  readonly windows: number;
}

/** The result of {@link benchNudgeLatency}: the headline p50/p99 are the lingering workload's. */
export interface NudgeLatencyResult extends NudgeLatencyFigures {
  readonly windowMs: number;
  /** Commits ~25 ms apart, nudged with `linger: true` (the headline). */
  readonly lingering: NudgeLatencyFigures;
  /** The same commits nudged without the linger. */
  readonly continuous: NudgeLatencyFigures;
  /** One commit per window: every commit takes the leading edge. */
  readonly sparse: NudgeLatencyFigures;
  /** The pipeline without the nudge hop: `relay.drain()` called by the writer after each commit. */
  readonly floor: NudgeLatencyFigures;
}

type Workload = "lingering" | "continuous" | "sparse" | "floor";

/** Runs one workload on a fresh emulator, relay app, consumer and libSQL file. */
async function run(workload: Workload, commits: number): Promise<NudgeLatencyFigures> {
  const e = await startQstashEmulator();
  const qstash = e.client();
  const receiver = new Receiver({ currentSigningKey: e.currentSigningKey, nextSigningKey: e.nextSigningKey });
  const received = new Map<string, number>();
  const consumer = await serveFetch(async (req) => {
    const body = await req.text();
    const at = performance.now();
    try {
      await receiver.verify({ signature: req.headers.get("upstash-signature") ?? "", body, url: req.url });
    } catch {
      return new Response("bad signature", { status: 401 });
    }
    const id = req.headers.get(MESSAGE_HEADERS.id);
    if (id && !received.has(id)) received.set(id, at);
    return new Response(null, { status: 200 });
  });
  const o = await libsqlOutbox();
  await o.client.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, total REAL NOT NULL)");
  const outbox = createOutbox({ storage: o.storage, topics: [orderCreated] });
  // The relay as a separate serverless function sees the writer's commits only in the database: no wake-ups.
  const relayOutbox = createOutbox({ storage: { ...o.storage, subscribe: undefined }, topics: [orderCreated] });
  const relay: Relay = createRelay({
    outbox: relayOutbox,
    transport: qstashTransport(qstash, { destination: `${consumer.url}/orders` }),
    leaseMs: 10_000,
    sendTimeoutMs: 3_000,
  });
  let drains = 0;
  let handler: ((r: Request) => Response | Promise<Response>) | null = null;
  const server = await serveFetch((r) => handler!(r));
  const drainUrl = `${server.url}/outbox/drain`;
  const app = new Hono();
  app.route("/outbox", createRelayApp({
    relay: { drain: (opts) => (drains++, relay.drain(opts)) },
    outbox,
    auth: { qstash: { verifier: new Receiver({ currentSigningKey: e.currentSigningKey, nextSigningKey: e.nextSigningKey }) } },
    publicUrl: `${server.url}/outbox`,
    budgetMs: 5_000,
    maxLingerMs: WINDOW_MS,
  }));
  handler = (r) => app.fetch(r);
  const close = onCleanup(async () => {
    await server.close();
    await consumer.close();
    await e.close();
    await o.close();
  });
  try {
    const committed = new Map<string, number>();
    const first = Date.now();
    for (let i = 0; i < commits; i++) {
      const tx = await o.storage.begin();
      let id: string;
      try {
        await tx.execute({ sql: "INSERT INTO orders (id, total) VALUES (?, ?)", args: [`o${i}`, i] });
        id = await outbox.enqueue(tx, orderCreated, { id: `o${i}`, total: i });
        await tx.commit();
      } catch (err) {
        tx.close();
        throw err;
      }
      committed.set(id, performance.now());
      if (workload === "floor") {
        drains++;
        await relay.drain();
      } else {
        await qstashNudge(qstash, { url: drainUrl, windowMs: WINDOW_MS, linger: workload === "lingering" });
      }
      await sleep(workload === "sparse" ? 1_050 + Math.random() * 450 : workload === "floor" ? 100 : Math.random() * 50);
    }
    const windows = Math.floor(Date.now() / WINDOW_MS) - Math.floor(first / WINDOW_MS) + 1;
    const deadline = performance.now() + 15_000;
    while (received.size < commits) {
      if (performance.now() > deadline) throw new Error(`nudge-latency ${workload}: ${received.size} of ${commits} delivered after 15 s`);
      await sleep(5);
    }
    // Let a trailing drain that finds nothing arrive, so it is counted (and a lingering one end before the close).
    await sleep(workload === "lingering" ? 2 * WINDOW_MS + 300 : WINDOW_MS + 200);
    const l = [...committed].map(([id, t]) => Math.max(0, received.get(id)! - t)).sort((a, b) => a - b);
    return { p50: percentile(l, 0.5), p99: percentile(l, 0.99), max: l[l.length - 1]!, n: l.length, drains, windows };
  } finally {
    await close();
  }
}

/**
 * Measures commit → delivery through the nudge (see the file's header). `quick` runs fewer commits.
 * @returns the continuous workload's p50/p99 (ms) as the headline, plus every workload's figures
 */
export async function benchNudgeLatency(options: { quick?: boolean } = {}): Promise<NudgeLatencyResult> {
  const quick = options.quick === true;
  const floor = await run("floor", quick ? 20 : 40);
  const sparse = await run("sparse", quick ? 8 : 16);
  const continuous = await run("continuous", quick ? 100 : 200);
  const lingering = await run("lingering", quick ? 100 : 200);
  return { ...lingering, windowMs: WINDOW_MS, lingering, continuous, sparse, floor };
}

/** The section's name in bench/results.json and the bench table. */
export const NUDGE_SECTION = "9 nudge latency";

/** Adds the nudge rows to `results` (bench/main.ts's section `nudge`, and `--update-results` here). */
export function nudgeRows(results: Results, r: NudgeLatencyResult): void {
  const S = NUDGE_SECTION;
  const detail = (f: NudgeLatencyFigures): string => `p99 ${Math.round(f.p99)} ms, max ${Math.round(f.max)} ms, ${f.n} commits, ${f.drains} drains over ${f.windows} windows`;
  const target = { name: "target 150 ms", value: 150 };
  results.compare(S, `qstashNudge (window ${r.windowMs} ms, linger: true), commits ~25 ms apart, p50`, r.lingering.p50, "ms", target, { kind: "max", value: 1 }, detail(r.lingering));
  results.compare(S, "qstashNudge without linger, commits ~25 ms apart, p50", r.continuous.p50, "ms", target, undefined, detail(r.continuous));
  results.compare(S, "qstashNudge, one commit per window (leading edge), p50", r.sparse.p50, "ms", { name: "no nudge hop (drain after commit)", value: r.floor.p50 }, undefined, detail(r.sparse));
}

/** Replaces the nudge rows of bench/results.json with this run's (the rest of that file stays the earlier full run). */
function updateResults(r: NudgeLatencyResult, quick: boolean): string {
  const file = join(dirname(fileURLToPath(import.meta.url)), "results.json");
  const json = JSON.parse(readFileSync(file, "utf8")) as { rows: Array<{ section: string }>; notes: string[] };
  const results = new Results();
  nudgeRows(results, r);
  const at = json.rows.findIndex((row) => row.section === NUDGE_SECTION);
  const others = json.rows.filter((row) => row.section !== NUDGE_SECTION);
  others.splice(at < 0 ? others.length : at, 0, ...results.rows);
  json.rows = others;
  const note = `${NUDGE_SECTION}: rows from bench/nudge-latency.ts run alone (${quick ? "quick" : "full"}) at ${new Date().toISOString()}, replacing that section of the run above`;
  json.notes = [...json.notes.filter((n) => !n.startsWith(`${NUDGE_SECTION}:`)), note];
  writeFileSync(file, JSON.stringify(json, null, 2) + "\n");
  return file;
}

function line(name: string, f: NudgeLatencyFigures): string {
  return `  ${name.padEnd(44)} p50 ${String(Math.round(f.p50)).padStart(5)} ms   p99 ${String(Math.round(f.p99)).padStart(5)} ms   ` +
    `max ${String(Math.round(f.max)).padStart(5)} ms   ${f.n} commits, ${f.drains} drain calls over ${f.windows} windows`;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const result = await benchNudgeLatency({ quick: process.argv.includes("--quick") });
  console.log(`commit → delivery via qstashNudge (window ${result.windowMs} ms) through the QStash emulator, libSQL file:`);
  console.log(line("floor: relay.drain() after each commit", result.floor));
  console.log(line("sparse: one commit per window (leading edge)", result.sparse));
  console.log(line("continuous: commits ~25 ms apart", result.continuous));
  console.log(line("lingering: the same, linger: true (headline)", result.lingering));
  console.log(`  target p50 <= 150 ms: lingering ${result.p50 <= 150 ? "met" : "missed"}, continuous ${result.continuous.p50 <= 150 ? "met" : "missed"}, ` +
    `sparse ${result.sparse.p50 <= 150 ? "met" : "missed"}`);
  if (process.argv.includes("--update-results")) console.log(`wrote the nudge rows of ${updateResults(result, process.argv.includes("--quick"))}`);
  await cleanupAll();
}
