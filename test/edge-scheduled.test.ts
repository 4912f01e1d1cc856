// scheduledDrain (src/scheduled.ts): repeated budgeted drains for cron invocations, on the memory storage in Node.
import { describe, expect, it } from "vitest";
import { createRelay, type DrainOptions, type DrainReport, OutboxError, scheduledDrain } from "../mod.ts";
import { memoryLock, recordingTransport } from "../adapters/memory/mod.ts";
import { caught, codeOf, fill, memoryOutbox } from "./helpers.ts";

const report = (over: Partial<DrainReport> = {}): DrainReport => ({
  claimed: 0,
  delivered: 0,
  retried: 0,
  dead: 0,
  released: 0,
  leaseLost: 0,
  elapsedMs: 0,
  more: false,
  ...over,
});

/** A relay double that answers scripted reports and records the options each drain got. */
function scriptedRelay(reports: Array<DrainReport | Error>, delayMs = 0): { drain(o?: DrainOptions): Promise<DrainReport>; calls: DrainOptions[] } {
  const calls: DrainOptions[] = [];
  return {
    calls,
    async drain(o: DrainOptions = {}) {
      calls.push(o);
      if (delayMs > 0) await new Promise((r) => setTimeout(r, delayMs));
      const next = reports[Math.min(calls.length - 1, reports.length - 1)]!;
      if (next instanceof Error) throw next;
      return next;
    },
  };
}

describe("scheduledDrain", () => {
  it("drains everything in several drains of drainBudgetMs and stops idle; the summary adds the reports up", async () => {
    const { storage, outbox } = memoryOutbox();
    const ids = await fill(storage, outbox, 300);
    const transport = recordingTransport({ delayMs: 5 });
    const relay = createRelay({ outbox, transport, batchSize: 20, concurrency: 2, leaseMs: 2_000, sendTimeoutMs: 500 });
    const seen: DrainReport[] = [];
    const summary = await scheduledDrain(relay, { budgetMs: 20_000, drainBudgetMs: 200, onReport: (r) => seen.push(r) });
    expect(summary.stopped).toBe("idle");
    expect(summary.more).toBe(false);
    expect(summary.delivered).toBe(300);
    expect(summary.drains).toBe(seen.length);
    expect(summary.drains).toBeGreaterThanOrEqual(2);
    expect(summary.claimed).toBe(seen.reduce((n, r) => n + r.claimed, 0));
    expect(transport.delivered.map((m) => m.id).sort()).toEqual([...ids].sort());
    expect((await storage.stats()).pending).toBe(0);
  });

  it("a backlog larger than the budget: returns within budgetMs + sendTimeoutMs, with more: true and stopped: budget", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 2_000);
    const transport = recordingTransport({ delayMs: 20 });
    const relay = createRelay({ outbox, transport, batchSize: 10, concurrency: 2, leaseMs: 1_000, sendTimeoutMs: 200 });
    const t0 = performance.now();
    const summary = await scheduledDrain(relay, { budgetMs: 1_000, drainBudgetMs: 300 });
    const wall = performance.now() - t0;
    expect(summary.stopped).toBe("budget");
    expect(summary.more).toBe(true);
    expect(summary.drains).toBeGreaterThanOrEqual(3);
    expect(summary.delivered).toBeGreaterThan(0);
    expect(summary.delivered).toBeLessThan(2_000);
    expect(summary.elapsedMs).toBeLessThanOrEqual(1_000 + 200);
    expect(wall).toBeLessThan(1_000 + 200 + 1_500);
    expect((await storage.stats()).pending).toBe(2_000 - summary.delivered);
  });

  it("gives each drain at most what is left of the total budget", async () => {
    const relay = scriptedRelay([report({ claimed: 1, delivered: 1, more: true })], 60);
    const summary = await scheduledDrain(relay, { budgetMs: 400, drainBudgetMs: 250, minDrainMs: 50 });
    expect(summary.stopped).toBe("budget");
    const budgets = relay.calls.map((c) => c.budgetMs!);
    expect(budgets[0]).toBe(250);
    for (const b of budgets.slice(1)) expect(b).toBeLessThanOrEqual(400 - 60 + 5);
    expect(budgets.at(-1)!).toBeGreaterThanOrEqual(50);
    expect(budgets.at(-1)!).toBeLessThan(250);
  });

  it("stops at once when the lock is held by another drain", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 5);
    const lock = memoryLock();
    const relay = createRelay({ outbox, transport: recordingTransport(), lock, lockKey: "scheduled-test" });
    const held = await lock.acquire("scheduled-test", 10_000);
    expect(held).not.toBeNull();
    const summary = await scheduledDrain(relay, { budgetMs: 5_000 });
    await held?.release();
    expect(summary).toMatchObject({ drains: 1, claimed: 0, stopped: "lock-busy", more: false });
    expect((await storage.stats()).pending).toBe(5);
  });

  it("maxDrains, signal and a drain that makes no progress end the loop", async () => {
    const more = report({ claimed: 2, delivered: 2, more: true });
    const r1 = scriptedRelay([more]);
    expect(await scheduledDrain(r1, { budgetMs: 10_000, maxDrains: 3 })).toMatchObject({ drains: 3, delivered: 6, stopped: "max-drains", more: true });

    const controller = new AbortController();
    const r2 = scriptedRelay([more]);
    const s2 = await scheduledDrain(r2, { budgetMs: 10_000, signal: controller.signal, onReport: () => controller.abort() });
    expect(s2).toMatchObject({ drains: 1, stopped: "signal" });
    expect(r2.calls[0]!.signal).toBe(controller.signal);

    const r3 = scriptedRelay([report({ more: true })]);
    expect(await scheduledDrain(r3, { budgetMs: 10_000 })).toMatchObject({ drains: 1, stopped: "no-progress", more: true });
  });

  it("a failing drain rejects with its OutboxError after the earlier drains were reported", async () => {
    const seen: DrainReport[] = [];
    const relay = scriptedRelay([report({ claimed: 3, delivered: 3, more: true }), new OutboxError("STORAGE", "[edge-outbox:test] db down", { retryable: true })]);
    const e = await caught(scheduledDrain(relay, { budgetMs: 10_000, onReport: (r) => seen.push(r) }));
    expect(e).toBeInstanceOf(OutboxError);
    expect((e as OutboxError).code).toBe("STORAGE");
    expect((e as OutboxError).message).toContain("db down");
    expect(seen).toHaveLength(1);

    const foreign = scriptedRelay([new Error("socket hang up")]);
    const e2 = await caught(scheduledDrain(foreign, { budgetMs: 10_000 }));
    expect((e2 as OutboxError).code).toBe("STORAGE");
    expect((e2 as OutboxError).message).toBe("[edge-outbox:scheduled] drain failed: socket hang up");
  });

  it("bad options are CONFIG errors and no drain runs", async () => {
    const relay = scriptedRelay([report()]);
    const bad: unknown[] = [
      undefined,
      {},
      { budgetMs: 0 },
      { budgetMs: 1.5 },
      { budgetMs: 1_000, drainBudgetMs: -1 },
      { budgetMs: 1_000, minDrainMs: 2_000 },
      { budgetMs: 1_000, maxDrains: 0 },
      { budgetMs: 1_000, signal: {} },
      { budgetMs: 1_000, onReport: "log" },
    ];
    for (const options of bad) expect(await codeOf(scheduledDrain(relay, options as never))).toBe("CONFIG");
    expect(await codeOf(scheduledDrain({} as never, { budgetMs: 1_000 }))).toBe("CONFIG");
    expect(relay.calls).toHaveLength(0);
    const e = await caught(scheduledDrain(relay, { budgetMs: 1_000, minDrainMs: 2_000 }));
    expect((e as Error).message).toBe("scheduledDrain options: minDrainMs (2000) must not exceed budgetMs (1000)");
  });
});
