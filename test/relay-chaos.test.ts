// Seeded chaos runs of the streaming relay on every storage (memory, PostgreSQL, a libSQL file, D1 on Miniflare),
// against the guarantees of DESIGN.md rather than any one mechanism: several relays drain one outbox at once while
// writers commit (and roll back) more, with short random budgets and aborted drains, some as `relay.run` loops woken
// by commits, some sharing a lock; the transport delivers, asks for retries, dead-letters, throws, answers with the
// wrong number of outcomes or hangs until its signal fires (every other relay's transport sets orderedBatches, so it
// gets runs of a key's rows and checks the order as it attempts each one); and relays lose their database mid-drain
// (every storage call hangs, as behind a partition, while the relay keeps the sends its leases allow, or fails) or see
// flaky connections. At the end:
//
// - nothing lost: every committed message was delivered (the transport said so at least once) or is a dead letter,
//   nothing is left pending, and nothing of a rolled-back transaction was ever sent;
// - leases: a relay starts a send only when the send, cut off by its timeout, ends before the lease of the claim that
//   brought the message (another relay may claim it then);
// - per-key order: a keyed message is sent only once every earlier message of its key has a final outcome
//   (delivered, or dead: by the transport, after its last attempt, or given up at claim because its attempts ran out);
// - with every relay keeping its database: each message delivered once, no delivered message dead, and the reports add
//   up (claimed = delivered + retried + dead + released + leaseLost, the sums match the outbox);
// - every drain of a relay that keeps its database returns within its budget plus the send timeout and a margin, and
//   one behind a hanging cut fails within that plus twice the storage timeout (storageTimeoutMs); every relay stops.
//
// A seed fixes a run's choices, not its timings: a failing seed names itself in the test name and its message says
// which invariant broke and for which messages. CHAOS_SEEDS sweeps more seeds (see `seeds`).
import { describe, expect, it } from "vitest";
import { memoryLock, memoryStorage } from "../adapters/memory/mod.ts";
import {
  createOutbox,
  createRelay,
  type DeliveryOutcome,
  type DrainReport,
  type OutboxMessage,
  type SendContext,
  type Transport,
} from "../mod.ts";
import { OutboxError } from "../src/errors.ts";
import type { OutboxStorage } from "../src/storage.ts";
import type { ConformanceFixture } from "../src/testing/mod.ts";
import { event, sleep } from "./helpers.ts";
import { d1Fixture, startD1 } from "./d1-fixtures.ts";
import { libsqlFileFixture } from "./libsql-fixtures.ts";
import { postgresFixture } from "./postgres-fixtures.ts";

/** mulberry32: a small seeded PRNG, so a run's choices (not its timings) repeat for a seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// deno-lint-ignore no-explicit-any
type AnyStorage = OutboxStorage<any, any>;

/** One database under test: a storage to write with, a new storage (connection) per relay, the clean-up. */
interface Db {
  readonly label: string;
  readonly writer: AnyStorage;
  begin(): Promise<{ tx: unknown; commit(): Promise<void>; rollback(): Promise<void> }>;
  another(): Promise<AnyStorage>;
  close(): Promise<void>;
}

async function memoryDb(): Promise<Db> {
  const writer = memoryStorage();
  return {
    label: "memory",
    writer,
    begin: () => Promise.resolve(writer.begin()),
    another: () => Promise.resolve(memoryStorage({ shareWith: writer })),
    close: () => Promise.resolve(),
  };
}

/** A database of a conformance fixture; `after` runs once the fixture is closed. */
function fixtureDb(label: string, f: ConformanceFixture<unknown, unknown>, after?: () => Promise<void>): Db {
  return {
    label,
    writer: f.storage,
    begin: () => f.begin(),
    another: () => f.another(),
    close: async () => {
      await f.close();
      await after?.();
    },
  };
}

const postgresDb = async (): Promise<Db> => fixtureDb("postgres", await postgresFixture());
const libsqlDb = async (): Promise<Db> => fixtureDb("libsql", await libsqlFileFixture());
/** Cloudflare D1 on Miniflare's local D1 (workerd's D1, SQLite underneath), driven from Node. */
async function d1Db(): Promise<Db> {
  const d1 = await startD1();
  return fixtureDb("d1", await d1Fixture(d1.db), () => d1.dispose());
}

/** A run's shape, drawn from its seed. */
interface Plan {
  seed: number;
  messages: number;
  relays: number;
  /**
   * The database faults: none; "cut", one relay loses its database for good mid-run (a replacement starts later);
   * "flaky", 3% of every relay's storage calls fail, half of them after the call took effect (as a connection lost
   * before the answer), and the relay drains again. With faults, leases are short, so others take over soon.
   */
  faults: "none" | "cut" | "flaky";
}

const MAX_ATTEMPTS = 4;
const SEND_TIMEOUT_MS = 100;
/** A storage call that does not answer within this fails the drain (RelayOptions.storageTimeoutMs). */
const STORAGE_TIMEOUT_MS = 300;

/** What the consumer side saw: outcomes per message, and every breach of an invariant, as text. */
interface World {
  /** Per key, its committed ids in commit order, and how many leading ones have a final outcome. */
  readonly keys: Map<string, { ids: string[]; finalPrefix: number }>;
  /** A keyed message's key and its place among the key's committed ids. */
  readonly place: Map<string, { key: string; index: number }>;
  readonly final: Set<string>;
  readonly delivered: Map<string, number>;
  readonly rolledBack: Set<string>;
  readonly committed: Set<string>;
  readonly breaches: string[];
  /** Keys with a send in flight (never two at once: a key's next message waits for its previous one's outcome). */
  readonly keysInFlight: Set<string>;
}

function newWorld(): World {
  return {
    keys: new Map(),
    place: new Map(),
    final: new Set(),
    delivered: new Map(),
    rolledBack: new Set(),
    committed: new Set(),
    breaches: [],
    keysInFlight: new Set(),
  };
}

function markFinal(w: World, id: string): void {
  if (w.final.has(id)) return;
  w.final.add(id);
  const place = w.place.get(id);
  if (place === undefined) return;
  const k = w.keys.get(place.key)!;
  while (k.finalPrefix < k.ids.length && w.final.has(k.ids[k.finalPrefix]!)) k.finalPrefix++;
}

/**
 * The chaotic destination, shared by every relay of a run: per call it throws (3%), answers with too few outcomes
 * (2%), hangs until its signal fires (2%), or waits 0–8 ms (one call in ten 20–60 ms) and then delivers (80%), asks for a retry
 * (15%, with a `retryAfterMs` now and then) or dead-letters (5%) each message. It honours its signal: a send whose
 * signal fired reports retries and delivers nothing, as a destination that was never reached.
 */
function chaosTransport(
  w: World,
  rng: () => number,
  maxBatchSize: number,
  leases: ReadonlyMap<string, number>,
  ordered: boolean,
): Transport {
  /** A keyed message attempted now: every earlier message of its key must have a final outcome. */
  const checkOrder = (m: OutboxMessage): void => {
    const k = w.keys.get(m.key!)!;
    const i = w.place.get(m.id)!.index;
    if (i > k.finalPrefix) w.breaches.push(`key ${m.key}: message #${i} sent while #${k.finalPrefix} had no final outcome`);
  };
  return {
    name: ordered ? "chaos-ordered" : "chaos",
    maxBatchSize,
    orderedBatches: ordered,
    async send(messages: readonly OutboxMessage[], context: SendContext): Promise<readonly DeliveryOutcome[]> {
      const mine: string[] = [];
      /** Per key, the seq order of its messages in this call must be their commit order (ordered: a run). */
      const lastIndex = new Map<string, number>();
      for (const m of messages) {
        if (w.rolledBack.has(m.id)) w.breaches.push(`sent a message of a rolled-back transaction: ${m.id}`);
        if (!w.committed.has(m.id)) w.breaches.push(`sent an unknown message: ${m.id}`);
        const lease = leases.get(m.id);
        if (lease === undefined) w.breaches.push(`sent a message this relay never claimed: ${m.id}`);
        else if (Date.now() + SEND_TIMEOUT_MS > lease) {
          w.breaches.push(`sent ${m.id} when its send could outlive the lease (${Date.now() + SEND_TIMEOUT_MS - lease} ms)`);
        }
        if (m.key === null) continue;
        const i = w.place.get(m.id)!.index;
        const before = lastIndex.get(m.key);
        lastIndex.set(m.key, i);
        if (before !== undefined) {
          // A second message of the key in this call: only in a run of an ordered transport, and right after the
          // one before it among the key's messages still without a final outcome.
          if (!ordered) w.breaches.push(`key ${m.key}: two of its messages in one call (message #${i})`);
          else if (i < before) w.breaches.push(`key ${m.key}: message #${i} after #${before} in one call`);
          continue;
        }
        if (!ordered) checkOrder(m);
        if (w.keysInFlight.has(m.key)) w.breaches.push(`key ${m.key}: two sends in flight at once (message #${i})`);
        w.keysInFlight.add(m.key);
        mine.push(m.key);
      }
      try {
        const r = rng();
        if (r < 0.03) throw new Error("chaos: connection reset");
        if (r < 0.05) return messages.slice(1).map(() => ({ status: "delivered" as const }));
        const signal = context.signal;
        const aborted = new Promise<void>((resolve) => {
          if (signal.aborted) resolve();
          else signal.addEventListener("abort", () => resolve(), { once: true });
        });
        if (r < 0.07) {
          await aborted; // hangs until the relay gives up on it (its timeout, or the drain's signal)
        } else {
          const waitMs = rng() < 0.1 ? 20 + Math.floor(rng() * 40) : Math.floor(rng() * 8);
          await Promise.race([sleep(waitMs), aborted]);
        }
        if (signal.aborted) return messages.map(() => ({ status: "retry" as const, error: "chaos: aborted" }));
        // Ordered: a key's messages one after another, each checked as it is attempted; after one that is not
        // delivered, the key's later messages of the call are not attempted.
        const stopped = new Set<string>();
        return messages.map((m) => {
          if (ordered && m.key !== null) {
            if (stopped.has(m.key)) return { status: "retry" as const, error: "chaos: not attempted" };
            checkOrder(m);
          }
          const outcome = judge(m);
          if (ordered && m.key !== null && outcome.status !== "delivered") stopped.add(m.key);
          return outcome;
        });
      } finally {
        for (const key of mine) w.keysInFlight.delete(key);
        // A call that did not deliver (threw, too few outcomes, aborted) is a retry of each message (ordered: of
        // each key's first message; the rest are released): the last attempt's retry dead-letters it.
        const first = new Set<string>();
        for (const m of messages) {
          if (ordered && m.key !== null) {
            if (first.has(m.key)) continue;
            first.add(m.key);
          }
          if (m.attempts >= MAX_ATTEMPTS) markFinal(w, m.id); // a no-op for a message delivered or dead already
        }
      }
      /** One message's outcome: delivered (80%), retry (15%) or dead (5%). */
      function judge(m: OutboxMessage): DeliveryOutcome {
        const x = rng();
        if (x < 0.8) {
          w.delivered.set(m.id, (w.delivered.get(m.id) ?? 0) + 1);
          markFinal(w, m.id);
          return { status: "delivered" as const };
        }
        if (x < 0.95) {
          if (m.attempts >= MAX_ATTEMPTS) markFinal(w, m.id); // the relay dead-letters it
          return x < 0.9
            ? { status: "retry" as const, error: "chaos: 503" }
            : { status: "retry" as const, error: "chaos: 429", retryAfterMs: Math.floor(rng() * 40) };
        }
        markFinal(w, m.id);
        return { status: "dead" as const, error: "chaos: 400" };
      }
    },
  };
}

/**
 * A relay's connection to the database, which can be cut: "hang" (every call waits for ever, as behind a partition;
 * the relay goes on with the sends its leases allow) or "fail" (every call rejects with STORAGE). Claims are watched:
 * a row claimed with its attempts used up is given up by the relay without a send (a final outcome: dead).
 */
function cuttable(
  storage: AnyStorage,
  w: World,
  leaseMs: number,
  flaky: (() => "before" | "after" | null) | null,
): { storage: AnyStorage; leases: Map<string, number>; cut(mode: "hang" | "fail"): void } {
  const leases = new Map<string, number>();
  let mode: "up" | "hang" | "fail" = "up";
  const flakyError = (): OutboxError => new OutboxError("STORAGE", "chaos: flaky connection", { retryable: true });
  const wrapped: Record<string, unknown> = { ...storage };
  for (const [name, value] of Object.entries(storage)) {
    if (typeof value !== "function") continue;
    wrapped[name] = (...args: unknown[]) => {
      if (mode === "hang") return new Promise(() => {});
      if (mode === "fail") return Promise.reject(new OutboxError("STORAGE", "chaos: the database is unreachable"));
      const fault = flaky?.() ?? null;
      if (fault === "before") return Promise.reject(flakyError());
      const calledAt = Date.now();
      const out = (value as (...a: unknown[]) => unknown).apply(storage, args);
      if (fault === "after") return Promise.resolve(out).then(() => Promise.reject(flakyError()));
      if (name !== "claim") return out;
      return (out as Promise<{ messages: readonly OutboxMessage[] }>).then((claim) => {
        for (const m of claim.messages) {
          if (m.attempts > MAX_ATTEMPTS) markFinal(w, m.id);
          leases.set(m.id, calledAt + leaseMs); // the lease ends no earlier than this, by this process's clock
        }
        return claim;
      });
    };
  }
  return { storage: wrapped as unknown as AnyStorage, leases, cut: (m) => (mode = m) };
}

/** Whether `e` (or an error in its `cause` chain) is a fault of a flaky connection. */
function causedByFlakiness(e: unknown): boolean {
  for (let x = e; x instanceof Error; x = x.cause) if (x.message.includes("chaos: flaky connection")) return true;
  return false;
}

/** `p`, or a rejection naming `what` if it takes longer than `ms`: a hang fails the run with a reason, not a timeout. */
async function within<T>(ms: number, p: Promise<T>, what: () => string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what()}: not done after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

async function allDead(storage: AnyStorage): Promise<Set<string>> {
  const ids = new Set<string>();
  let cursor: string | null = null;
  do {
    const page = await storage.listDead({ limit: 500, cursor });
    for (const d of page.items) ids.add(d.id);
    cursor = page.cursor;
  } while (cursor !== null);
  return ids;
}

async function chaosRun(db: Db, plan: Plan): Promise<void> {
  const rng = prng(plan.seed);
  const w = newWorld();
  const writerOutbox = createOutbox({ storage: db.writer, topics: [event] });
  const hot = ["hot-0", "hot-1", "hot-2"];
  const keyFor = (): string | null => {
    const r = rng();
    if (r < 0.3) return null;
    if (r < 0.8) return hot[Math.floor(rng() * hot.length)]!;
    return `cold-${Math.floor(rng() * 40)}`;
  };
  let n = 0;
  /** One transaction of `count` messages; 5% roll back (their ids must never be sent). */
  const write = async (count: number): Promise<void> => {
    const h = await db.begin();
    const batch: { id: string; key: string | null }[] = [];
    for (let i = 0; i < count; i++) {
      const key = keyFor();
      const delayMs = rng() < 0.05 ? Math.floor(rng() * 80) : 0;
      // deno-lint-ignore no-explicit-any
      const id = await writerOutbox.enqueue(h.tx as any, event, { n: n++ }, { key, delayMs });
      batch.push({ id, key });
    }
    if (rng() < 0.05) {
      for (const b of batch) w.rolledBack.add(b.id);
      await h.rollback();
      return;
    }
    // Known before the commit: a relay woken by it may send them before this function goes on.
    for (const b of batch) {
      w.committed.add(b.id);
      if (b.key === null) continue;
      let k = w.keys.get(b.key);
      if (!k) w.keys.set(b.key, k = { ids: [], finalPrefix: 0 });
      w.place.set(b.id, { key: b.key, index: k.ids.length });
      k.ids.push(b.id);
    }
    await h.commit();
  };
  // Most of the backlog first, the rest while the relays run.
  const upfront = Math.floor(plan.messages * 0.6);
  for (let done = 0; done < upfront;) {
    const c = Math.min(upfront - done, 1 + Math.floor(rng() * 40));
    await write(c);
    done += c;
  }

  // With database faults, leases are shorter than many drains' budgets, so a relay that holds a hot key's rows for
  // long must stop sending them before its lease ends (another relay may claim them then).
  const leaseMs = plan.faults !== "none" ? 400 : 5_000;
  const reports: DrainReport[] = [];
  const slowDrains: string[] = [];
  const unexpected: unknown[] = [];
  let stop = false;
  const stopRuns: AbortController[] = [];
  // A third of the runs share a lock between their relays (efficiency only: drains then skip while another holds it).
  const lock = rng() < 0.33 ? memoryLock() : undefined;
  let partitioned = 0;
  let flakyFailures = 0;

  /** What each process is doing, for the message when one does not stop. */
  const state = new Map<string, string>();
  /**
   * A relay process: its own connection; drains in a loop with short random budgets, some aborted, or one
   * `relay.run` loop.
   */
  const relayProcess = async (label: string, cutAfterMs: number | null, cutMode: "hang" | "fail", ordered: boolean): Promise<void> => {
    try {
      await relayLoop(label, cutAfterMs, cutMode, ordered);
    } finally {
      state.set(label, "stopped");
    }
  };
  const relayLoop = async (label: string, cutAfterMs: number | null, cutMode: "hang" | "fail", ordered: boolean): Promise<void> => {
    let calls = 0;
    const flaky = plan.faults === "flaky"
      ? () => {
        // The 4th call fails after taking effect, so every flaky run has at least one such fault.
        if (++calls === 4) return "after";
        const r = rng();
        return r < 0.015 ? "before" : r < 0.03 ? "after" : null;
      }
      : null;
    const conn = cuttable(await db.another(), w, leaseMs, flaky);
    const relay = createRelay({
      outbox: createOutbox({ storage: conn.storage, topics: [event] }),
      transport: chaosTransport(w, rng, 1 + Math.floor(rng() * 8), conn.leases, ordered),
      batchSize: 1 + Math.floor(rng() * (plan.faults !== "none" ? 100 : 40)),
      concurrency: 1 + Math.floor(rng() * 8),
      leaseMs,
      sendTimeoutMs: SEND_TIMEOUT_MS,
      storageTimeoutMs: STORAGE_TIMEOUT_MS,
      maxAttempts: MAX_ATTEMPTS,
      backoff: { baseMs: 20, maxMs: 60, minMs: 0 },
      ...(lock ? { lock } : {}),
    });
    const started = Date.now();
    let cut = false;
    if (cutAfterMs !== null) {
      setTimeout(() => {
        cut = true;
        partitioned++;
        conn.cut(cutMode);
      }, cutAfterMs);
    }
    const drainBudget = (): number => 30 + Math.floor(rng() * (plan.faults !== "none" && rng() < 0.5 ? 1_200 : 300));
    /** Counts a report; `tookMs`: the drain's wall time as the caller saw it (relay.run: the report's own). */
    const onReport = (report: DrainReport, budgetMs: number, tookMs = report.elapsedMs): void => {
      if (cut) return; // a report made across the cut is not this relay's to count
      reports.push(report);
      if (tookMs > budgetMs + SEND_TIMEOUT_MS + 1_500) slowDrains.push(`${label}: ${tookMs} ms for a budget of ${budgetMs} ms`);
    };
    if (rng() < 0.4) {
      // A long-running relay: relay.run, woken by commits (storage.subscribe) or polling, stopped at the end.
      const budgetMs = drainBudget();
      const stopRun = new AbortController();
      stopRuns.push(stopRun);
      if (stop) stopRun.abort(); // the run ended while this process was starting
      state.set(label, `relay.run, budget ${budgetMs} ms`);
      await relay.run({
        signal: stopRun.signal,
        budgetMs,
        pollIntervalMs: 10 + Math.floor(rng() * 100),
        onReport: (report) => onReport(report, budgetMs),
        onError: (e) => {
          if (cut) return; // after a cut every drain fails (mode "fail"): the loop backs off and tries again
          if (flaky && causedByFlakiness(e)) flakyFailures++;
          else unexpected.push(e);
        },
      });
      return;
    }
    while (!stop) {
      const budgetMs = drainBudget();
      const abort = rng() < 0.2 ? new AbortController() : undefined;
      const timer = abort ? setTimeout(() => abort.abort(), Math.floor(rng() * budgetMs)) : undefined;
      const t0 = Date.now();
      state.set(label, `drain since ${t0 - started} ms, budget ${budgetMs} ms`);
      try {
        const report = await relay.drain({ budgetMs, ...(abort ? { signal: abort.signal } : {}) });
        if (cut) return;
        onReport(report, budgetMs, Date.now() - t0);
        if (!report.more) await sleep(2 + Math.floor(rng() * 15));
      } catch (e) {
        // Behind a hanging cut, a drain still ends: its storage calls time out (storageTimeoutMs).
        const tookMs = Date.now() - t0;
        if (cut && tookMs > budgetMs + SEND_TIMEOUT_MS + 2 * STORAGE_TIMEOUT_MS + 1_500) {
          slowDrains.push(`${label}: ${tookMs} ms to fail behind the cut, for a budget of ${budgetMs} ms`);
        }
        if (cut) return; // the cut made it fail: the process is gone
        if (flaky && causedByFlakiness(e)) {
          flakyFailures++;
          await sleep(5 + Math.floor(rng() * 20)); // as relay.run backs off, then drains again
          continue;
        }
        unexpected.push(e);
        return;
      } finally {
        clearTimeout(timer);
      }
      if (cut) return;
      if (Date.now() - started > 60_000) return;
    }
  };

  const running = new Map<string, Promise<void>>();
  for (let i = 0; i < plan.relays; i++) {
    const cutAt = plan.faults === "cut" && i === 0 ? 100 + Math.floor(rng() * 400) : null;
    // Every other relay's transport keeps a call's messages of a key in order (Transport.orderedBatches: runs).
    running.set(`relay ${i}`, relayProcess(`relay ${i}`, cutAt, rng() < 0.5 ? "hang" : "fail", (plan.seed + i) % 2 === 0));
  }
  // With a cut, a replacement relay starts after the first cut, so one is always left.
  if (plan.faults === "cut") running.set("replacement", sleep(900).then(() => relayProcess("replacement", null, "hang", plan.seed % 2 === 1)));
  // The rest over about a second, so the cut falls while messages still come in.
  for (let done = upfront; done < plan.messages;) {
    await sleep(Math.floor(rng() * 70));
    const c = Math.min(plan.messages - done, 1 + Math.floor(rng() * 12));
    await write(c);
    done += c;
  }

  const deadline = Date.now() + 40_000;
  let pending = -1;
  while (Date.now() < deadline) {
    pending = (await within(5_000, db.writer.stats(), () => "the writer's stats()")).pending;
    // Not before the cut, if there is one: it must fall while the run goes on.
    if (pending === 0 && unexpected.length === 0 && (plan.faults !== "cut" || partitioned > 0)) break;
    if (unexpected.length > 0 || w.breaches.length > 0) break;
    await sleep(50);
  }
  stop = true;
  for (const c of stopRuns) c.abort();
  // Every process ends within a drain (its budget, at most 1,230 ms, plus the send timeout), one behind a hanging cut
  // too: its storage calls time out.
  const live = [...running];
  const stillRunning = (): string =>
    live.filter(([label]) => state.get(label) !== "stopped").map(([label]) => `${label} (${state.get(label) ?? "not started"})`).join(", ");
  await within(5_000, Promise.all(live.map(([, p]) => p)), () => `stopping the relays: still running ${stillRunning()}`);

  const cuts = plan.faults === "cut" ? `, ${partitioned} cut` : plan.faults === "flaky" ? `, ${flakyFailures} drains failed` : "";
  const ctx = `${db.label} seed ${plan.seed} (${plan.messages} messages, ${plan.relays} relays${cuts})`;
  const twice = [...w.delivered].filter(([, c]) => c > 1).map(([id]) => id);
  console.log(`[chaos] ${ctx}: ${w.committed.size} committed, ${w.rolledBack.size} rolled back, ${w.delivered.size} delivered ` +
    `(${twice.length} more than once), ${reports.length} drains reported`);
  expect(partitioned, `${ctx}: relays cut off while the run went on`).toBe(plan.faults === "cut" ? 1 : 0);
  if (plan.faults === "flaky") expect(flakyFailures, `${ctx}: drains failed by the flaky connections`).toBeGreaterThan(0);
  expect(unexpected, `${ctx}: a drain failed`).toEqual([]);
  expect(pending, `${ctx}: rows left pending`).toBe(0);
  expect(w.breaches, `${ctx}: invariant breaches`).toEqual([]);
  expect(slowDrains, `${ctx}: drains past their budget + sendTimeout (+ 2 x storageTimeout behind a cut) + 1.5 s`).toEqual([]);

  const dead = await allDead(db.writer);
  const lost = [...w.committed].filter((id) => !w.delivered.has(id) && !dead.has(id));
  expect(lost, `${ctx}: committed messages neither delivered nor dead`).toEqual([]);
  for (const id of dead) expect(w.committed.has(id), `${ctx}: dead letter ${id} was never committed`).toBe(true);
  for (const r of reports) {
    const settled = r.delivered + r.retried + r.dead + r.released + r.leaseLost;
    expect(r.claimed, `${ctx}: a report that does not add up: ${JSON.stringify(r)}`).toBe(settled);
  }
  if (plan.faults === "none") {
    expect(twice, `${ctx}: delivered more than once with no relay cut off`).toEqual([]);
    const deliveredAndDead = [...dead].filter((id) => w.delivered.has(id));
    expect(deliveredAndDead, `${ctx}: delivered, then dead-lettered`).toEqual([]);
    const sum = (f: (r: DrainReport) => number): number => reports.reduce((s, r) => s + f(r), 0);
    expect(sum((r) => r.delivered), `${ctx}: reports' delivered`).toBe(w.delivered.size);
    expect(sum((r) => r.dead), `${ctx}: reports' dead`).toBe(dead.size);
    expect(sum((r) => r.leaseLost), `${ctx}: lease lost with long leases`).toBe(0);
  }
  // Some of everything happened (a run that exercised nothing would prove nothing).
  expect(w.delivered.size, `${ctx}: delivered`).toBeGreaterThan(w.committed.size * 0.5);
}

const plans = (seeds: number[], messages: number): Plan[] =>
  seeds.map((seed) => ({ seed, messages, relays: 1 + (seed % 3), faults: seed % 2 === 1 ? "cut" : seed % 4 === 2 ? "flaky" : "none" }));

/** `CHAOS_SEEDS=100-400 npx vitest run test/relay-chaos.test.ts -t memory`: a longer sweep (of each storage's runs). */
function seeds(defaults: number[]): number[] {
  const range = /^(\d+)-(\d+)$/.exec(globalThis.process?.env?.["CHAOS_SEEDS"] ?? "");
  if (!range) return defaults;
  return Array.from({ length: Number(range[2]) - Number(range[1]) + 1 }, (_, i) => Number(range[1]) + i);
}

const STORAGES: { name: string; open(): Promise<Db>; seeds: number[]; messages: number }[] = [
  { name: "memory storage", open: memoryDb, seeds: seeds([1, 2, 3, 4, 5, 6, 7, 8]), messages: 300 },
  { name: "postgres", open: postgresDb, seeds: seeds([11, 12, 13, 14]), messages: 240 },
  { name: "libSQL file", open: libsqlDb, seeds: seeds([21, 22, 24]), messages: 200 },
  { name: "D1 (Miniflare)", open: d1Db, seeds: seeds([30, 31, 32]), messages: 150 },
];

describe("chaos: several relays, a faulty destination and lost databases, against the guarantees", () => {
  for (const storage of STORAGES) {
    for (const plan of plans(storage.seeds, storage.messages)) {
      const faults = { none: "", cut: ", one cut off", flaky: ", flaky connections" }[plan.faults];
      it(`${storage.name}, seed ${plan.seed}: ${plan.relays} relay(s)${faults}`, async () => {
        const db = await storage.open();
        try {
          await chaosRun(db, plan);
        } finally {
          await db.close();
        }
      }, 60_000);
    }
  }
});
