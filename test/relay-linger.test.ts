// drain({ lingerMs }): after the outbox is empty the drain stays, woken by storage.subscribe or polling hasDue, and
// drains what commits meanwhile, within its budget, stopped by its signal; one report for the whole call.
import { describe, expect, it } from "vitest";
import { type MemoryStorage, memoryLock, memoryStorage } from "../adapters/memory/mod.ts";
import { createOutbox, createRelay, type DeliveryOutcome, type Transport } from "../mod.ts";
import type { OutboxStorage } from "../src/storage.ts";
import { codeOf, event, sleep } from "./helpers.ts";

async function commit(base: MemoryStorage, n: number): Promise<number> {
  const outbox = createOutbox({ storage: base, topics: [event] });
  const h = base.begin();
  await outbox.enqueue(h.tx, event, { n });
  await h.commit();
  return performance.now();
}

/** Records when each payload `n` was delivered; `hang` makes every send wait for its signal (the send timeout). */
function timedTransport(options: { hang?: boolean } = {}): Transport & { at: Map<number, number> } {
  const at = new Map<number, number>();
  return {
    name: "timed",
    at,
    async send(messages, { signal }): Promise<DeliveryOutcome[]> {
      if (options.hang) await new Promise((resolve) => signal.addEventListener("abort", resolve, { once: true }));
      for (const m of messages) at.set((m.payload as { n: number }).n, performance.now());
      return messages.map(() => ({ status: "delivered" }));
    },
  };
}

/** The memory storage without `subscribe` (only polling can see commits), counting its hasDue reads. */
function pollingOnly(base: MemoryStorage): { storage: OutboxStorage<unknown, never>; reads: () => number } {
  let reads = 0;
  const storage: OutboxStorage<unknown, never> = {
    ...base,
    subscribe: undefined,
    hasDue() {
      reads++;
      return base.hasDue();
    },
  };
  return { storage, reads: () => reads };
}

describe("drain({ lingerMs })", () => {
  it("drains a row committed during the linger, woken by the storage's subscribe; the one report counts every row", async () => {
    const base = memoryStorage();
    const transport = timedTransport();
    const relay = createRelay({ outbox: createOutbox({ storage: base }), transport });
    await commit(base, 0);
    await commit(base, 1);
    const draining = relay.drain({ budgetMs: 5_000, lingerMs: 600, lingerPollMs: 10_000 }); // polling alone would miss them
    await sleep(150);
    const t2 = await commit(base, 2);
    await sleep(150);
    const t3 = await commit(base, 3);
    const report = await draining;
    expect(report).toMatchObject({ claimed: 4, delivered: 4, retried: 0, dead: 0, released: 0, leaseLost: 0, more: false });
    expect(report.elapsedMs).toBeGreaterThanOrEqual(590);
    expect(report.elapsedMs).toBeLessThan(1_500);
    expect([...transport.at.keys()].sort()).toEqual([0, 1, 2, 3]);
    expect(transport.at.get(2)! - t2).toBeLessThan(100); // the commit's wake-up, not the 10 s poll
    expect(transport.at.get(3)! - t3).toBeLessThan(100);
    expect(base.count().pending).toBe(0);
  });

  it("without subscribe it polls hasDue every lingerPollMs; a row committed meanwhile waits about one interval", async () => {
    const base = memoryStorage();
    const { storage, reads } = pollingOnly(base);
    const transport = timedTransport();
    const relay = createRelay({ outbox: createOutbox({ storage }), transport });
    const draining = relay.drain({ budgetMs: 5_000, lingerMs: 500, lingerPollMs: 20 });
    await sleep(200);
    const t0 = await commit(base, 7);
    const report = await draining;
    expect(report).toMatchObject({ claimed: 1, delivered: 1, more: false });
    expect(transport.at.get(7)! - t0).toBeLessThan(150);
    // About lingerMs / lingerPollMs reads (timers on a loaded machine fire late: fewer, never many more).
    expect(reads()).toBeGreaterThan(5);
    expect(reads()).toBeLessThanOrEqual(30);
  });

  it("no linger by default: an empty drain returns at once", async () => {
    const relay = createRelay({ outbox: createOutbox({ storage: memoryStorage() }), transport: timedTransport() });
    const report = await relay.drain({ budgetMs: 5_000 });
    expect(report.elapsedMs).toBeLessThan(100);
  });

  it("never outlasts the budget bound: lingerMs is capped at the budget, and sends in flight end within sendTimeoutMs", async () => {
    const base = memoryStorage();
    const { storage } = pollingOnly(base);
    // Every send hangs until its timeout (200 ms), and rows keep committing all along: the worst case for the bound.
    const relay = createRelay({ outbox: createOutbox({ storage }), transport: timedTransport({ hang: true }), sendTimeoutMs: 200, leaseMs: 1_000 });
    let committing = true;
    const writer = (async () => {
      for (let n = 0; committing; n++) {
        await commit(base, n);
        await sleep(15);
      }
    })();
    const budgetMs = 500;
    const t0 = performance.now();
    const report = await relay.drain({ budgetMs, lingerMs: 60_000, lingerPollMs: 10 });
    const wall = performance.now() - t0;
    committing = false;
    await writer;
    // The stated bound: budgetMs + sendTimeoutMs + 150 ms of settling and timer slack.
    expect(wall).toBeLessThanOrEqual(budgetMs + 200 + 150);
    expect(wall).toBeGreaterThanOrEqual(budgetMs - 50 - 10); // it lingered up to the budget less the margin (50)
    expect(report.claimed).toBeGreaterThan(1);
    expect(report.more).toBe(true); // stopped for the budget while rows were due

    // Nothing ever due: a linger longer than the budget ends at the budget less the safety margin.
    const idle = createRelay({ outbox: createOutbox({ storage: memoryStorage() }), transport: timedTransport() });
    const i0 = performance.now();
    const empty = await idle.drain({ budgetMs: 300, lingerMs: 60_000, safetyMarginMs: 100 });
    const idleWall = performance.now() - i0;
    expect(idleWall).toBeGreaterThanOrEqual(190);
    expect(idleWall).toBeLessThan(300 + 100);
    expect(empty).toMatchObject({ claimed: 0, more: false });
  });

  it("an aborted signal ends the linger at once (and a drain whose signal is already aborted does not linger)", async () => {
    const base = memoryStorage();
    const listening: number[] = [];
    const storage: OutboxStorage<unknown, never> = {
      ...base,
      subscribe(onWake, signal) {
        listening.push(1);
        signal.addEventListener("abort", () => listening.pop(), { once: true });
        return base.subscribe!(onWake, signal);
      },
    };
    const relay = createRelay({ outbox: createOutbox({ storage }), transport: timedTransport() });
    const c = new AbortController();
    const t0 = performance.now();
    const draining = relay.drain({ budgetMs: 30_000, lingerMs: 20_000, signal: c.signal });
    await sleep(100);
    expect(listening).toHaveLength(1); // subscribed for the linger
    c.abort();
    const report = await draining;
    expect(performance.now() - t0).toBeLessThan(100 + 100);
    expect(report).toMatchObject({ claimed: 0, more: false });
    expect(listening).toHaveLength(0); // and unsubscribed when it ended

    const a0 = performance.now();
    await relay.drain({ lingerMs: 20_000, signal: AbortSignal.abort() });
    expect(performance.now() - a0).toBeLessThan(100);
  });

  it("with a lock held elsewhere, a lingering drain takes over when the holder releases; after its linger it reports lock-busy", async () => {
    const base = memoryStorage();
    const lock = memoryLock();
    const transport = timedTransport();
    const relay = createRelay({ outbox: createOutbox({ storage: base }), transport, lock });
    const key = `edge-outbox:relay:${base.scope ?? base.name}`;
    const holder = await lock.acquire(key, 10_000);
    expect(holder).not.toBeNull();
    await commit(base, 1);
    expect(await relay.drain({ budgetMs: 2_000 })).toMatchObject({ skipped: "lock-busy" }); // no linger: skips at once

    const draining = relay.drain({ budgetMs: 2_000, lingerMs: 600, lingerPollMs: 10 });
    await sleep(150);
    await holder!.release();
    await sleep(150);
    await commit(base, 2);
    const report = await draining;
    expect(report.skipped).toBeUndefined();
    expect(report).toMatchObject({ claimed: 2, delivered: 2 });
    expect(report.elapsedMs).toBeGreaterThanOrEqual(590);

    const again = await lock.acquire(key, 10_000);
    expect(again).not.toBeNull(); // the lingering drain released the lock
    const b0 = performance.now();
    const busy = await relay.drain({ budgetMs: 2_000, lingerMs: 200, lingerPollMs: 10 });
    expect(busy).toMatchObject({ skipped: "lock-busy", claimed: 0 });
    expect(performance.now() - b0).toBeGreaterThanOrEqual(190);
    expect(performance.now() - b0).toBeLessThan(600);
    await again!.release();
  });

  it("a storage failure while lingering rejects with STORAGE; bad linger options are CONFIG", async () => {
    const base = memoryStorage();
    let fail = false;
    const storage: OutboxStorage<unknown, never> = {
      ...base,
      hasDue: () => (fail ? Promise.reject(new Error("connection reset")) : base.hasDue()),
    };
    const relay = createRelay({ outbox: createOutbox({ storage }), transport: timedTransport() });
    const draining = relay.drain({ lingerMs: 2_000, lingerPollMs: 10 });
    await sleep(50);
    fail = true;
    expect(await codeOf(draining)).toBe("STORAGE");
    expect(await codeOf(relay.drain({ lingerMs: -1 }))).toBe("CONFIG");
    expect(await codeOf(relay.drain({ lingerMs: 1.5 }))).toBe("CONFIG");
    expect(await codeOf(relay.drain({ lingerPollMs: 0 }))).toBe("CONFIG");
  });
});
