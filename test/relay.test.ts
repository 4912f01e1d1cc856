import { describe, expect, it } from "vitest";
import { createRelay, type DeliveryOutcome, isOutboxError, type OutboxMessage, type Transport } from "../mod.ts";
import { functionTransport, memoryLock, memoryStorage, recordingTransport } from "../adapters/memory/mod.ts";
import type { OutboxStorage } from "../src/storage.ts";
import { createOutbox } from "../src/outbox.ts";
import { caught, codeOf, event, fill, memoryOutbox, sleep } from "./helpers.ts";

const n = (m: OutboxMessage): number => (m.payload as { n: number }).n;

describe("drain: time budget", () => {
  it("with a slow transport, returns within budgetMs + sendTimeoutMs and releases what it could not send", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 300);
    const transport = recordingTransport({ delayMs: 150 });
    const budgetMs = 1_000, sendTimeoutMs = 400;
    const relay = createRelay({ outbox, transport, batchSize: 50, concurrency: 4, leaseMs: 5_000, sendTimeoutMs });
    const t0 = performance.now();
    const report = await relay.drain({ budgetMs });
    const wall = performance.now() - t0;
    expect(wall).toBeLessThanOrEqual(budgetMs + sendTimeoutMs); // the stated bound
    expect(report.elapsedMs).toBeLessThanOrEqual(budgetMs + sendTimeoutMs);
    expect(report.delivered).toBeGreaterThan(0);
    expect(report.delivered).toBeLessThan(300);
    expect(report.more).toBe(true);
    expect(report.claimed).toBe(report.delivered + report.retried + report.dead + report.released);
    const stats = await storage.stats();
    expect(stats.pending).toBe(300 - report.delivered);
    expect(stats.leased).toBe(0); // released rows are not left leased
  });

  it("a transport that ignores its signal and never answers still cannot hold the drain past the bound", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 20);
    const hang: Transport = { name: "hang", send: () => new Promise(() => {}) };
    const relay = createRelay({ outbox, transport: hang, concurrency: 2, leaseMs: 1_000, sendTimeoutMs: 300 });
    const t0 = performance.now();
    const report = await relay.drain({ budgetMs: 500 });
    expect(performance.now() - t0).toBeLessThanOrEqual(500 + 300);
    expect(report.retried).toBeGreaterThan(0);
    expect(report.delivered).toBe(0);
    expect(report.more).toBe(true);
    const [m] = (await storage.listDead({ limit: 1 })).items;
    expect(m).toBe(undefined);
  });

  it("each send's signal aborts at sendTimeoutMs", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 1);
    let abortedAfter = -1;
    const transport = functionTransport((_m, { signal }) =>
      new Promise<void>((_, reject) => {
        const t0 = performance.now();
        signal.addEventListener("abort", () => {
          abortedAfter = performance.now() - t0;
          reject(signal.reason);
        });
      })
    );
    const report = await createRelay({ outbox, transport, leaseMs: 2_000, sendTimeoutMs: 200 }).drain({ budgetMs: 5_000 });
    expect(abortedAfter).toBeGreaterThanOrEqual(190);
    expect(abortedAfter).toBeLessThan(400);
    expect(report.retried).toBe(1);
  });

  it("a send never outlives the lease: a key's later messages are released when the lease runs short", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 6, { key: () => "k" });
    const transport = recordingTransport({ delayMs: 150 });
    // leaseMs 400 keeps 40 ms back for the settle: sends must end by 360 ms after the claim. A send starts only
    // when its whole sendTimeoutMs (200) fits: at 0 and ~150 ms, not at ~300 ms.
    const relay = createRelay({ outbox, transport, leaseMs: 400, sendTimeoutMs: 200, batchSize: 10 });
    const report = await relay.drain({ budgetMs: 280 }); // no second claim after the first batch (~300 ms)
    // (On a loaded machine the second send may start too late for the lease: then its rows are released and claimed
    // again under a fresh lease, so `claimed` can exceed 6; what never happens is a send past the lease.)
    expect(report).toMatchObject({ delivered: 2, retried: 0, leaseLost: 0 });
    expect(report.claimed).toBe(report.delivered + report.released);
    expect(report.released).toBeGreaterThanOrEqual(4);
    expect(transport.delivered.map(n)).toEqual([0, 1]);
    expect(transport.attempts).toHaveLength(2);
  });

  it("an aborted signal stops claiming and reports more when rows are due", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 5);
    const c = new AbortController();
    c.abort();
    const report = await createRelay({ outbox, transport: recordingTransport() }).drain({ signal: c.signal });
    expect(report).toMatchObject({ claimed: 0, delivered: 0, more: true });
  });

  it("more is false when everything due was drained", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 30);
    const report = await createRelay({ outbox, transport: recordingTransport(), batchSize: 7 }).drain();
    expect(report).toMatchObject({ claimed: 30, delivered: 30, more: false, released: 0, leaseLost: 0 });
  });
});

describe("drain: concurrency and order", () => {
  it("keeps at most `concurrency` sends in flight and uses the transport's batch size for keyless messages", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 200);
    const transport = recordingTransport({ delayMs: 5, maxBatchSize: 10 });
    const report = await createRelay({ outbox, transport, batchSize: 100, concurrency: 3 }).drain();
    expect(report.delivered).toBe(200);
    expect(transport.maxInFlight).toBe(3);
    expect(transport.calls).toBe(20);
  });

  it("sends one key's messages one at a time, in order, while keys and keyless messages run in parallel", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 120, { key: (i) => (i % 4 === 3 ? null : `k${i % 3}`) });
    const inFlight = new Map<string, number>();
    let maxPerKey = 0, maxTotal = 0, total = 0;
    const order: OutboxMessage[] = [];
    const transport = functionTransport(async (m) => {
      const k = m.key ?? `none-${m.id}`;
      inFlight.set(k, (inFlight.get(k) ?? 0) + 1);
      total++;
      maxPerKey = Math.max(maxPerKey, inFlight.get(k)!);
      maxTotal = Math.max(maxTotal, total);
      await sleep(2);
      order.push(m);
      inFlight.set(k, inFlight.get(k)! - 1);
      total--;
    });
    const report = await createRelay({ outbox, transport, batchSize: 60, concurrency: 6 }).drain();
    expect(report.delivered).toBe(120);
    expect(maxPerKey).toBe(1);
    expect(maxTotal).toBeGreaterThan(1);
    for (const k of ["k0", "k1", "k2"]) {
      const got = order.filter((m) => m.key === k).map(n);
      expect(got).toEqual([...got].sort((a, b) => a - b));
      expect(got.length).toBeGreaterThan(0);
    }
  });

  it("a retrying head blocks its key: later messages of the key wait, then follow in order", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 5, { key: () => "k" });
    let failed = false;
    const transport = recordingTransport({
      outcome: (m) => {
        if (n(m) === 1 && !failed) {
          failed = true;
          return { status: "retry", error: "HTTP 503" };
        }
        return { status: "delivered" };
      },
    });
    const relay = createRelay({ outbox, transport, backoff: { baseMs: 100, maxMs: 100, minMs: 100 } });
    const r1 = await relay.drain();
    expect(r1).toMatchObject({ delivered: 1, retried: 1, released: 3 });
    expect(transport.attempts.map(n)).toEqual([0, 1]); // 2, 3, 4 were never sent while 1 was failing
    await sleep(150);
    const r2 = await relay.drain();
    expect(r2.delivered).toBe(4);
    expect(transport.delivered.map(n)).toEqual([0, 1, 2, 3, 4]);
    // Released rows did not use an attempt.
    expect(transport.delivered.map((m) => m.attempts)).toEqual([1, 2, 1, 1, 1]);
  });

  it("a dead head unblocks its key in the same drain", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 3, { key: () => "k" });
    const transport = recordingTransport({ outcome: (m) => n(m) === 0 ? { status: "dead", error: "HTTP 400" } : { status: "delivered" } });
    const report = await createRelay({ outbox, transport }).drain();
    expect(report).toMatchObject({ dead: 1, delivered: 2 });
    expect(transport.delivered.map(n)).toEqual([1, 2]);
    expect((await outbox.deadLetters.list()).items[0]!.lastError).toBe("HTTP 400");
  });
});

describe("drain: outcomes", () => {
  it("honours retryAfterMs as the shortest wait (by the storage clock)", async () => {
    let clock = 1_000_000;
    const { storage, outbox } = memoryOutbox({ now: () => clock });
    await fill(storage, outbox, 1);
    const transport = recordingTransport({ outcome: () => ({ status: "retry", error: "429", retryAfterMs: 60_000 }) });
    const relay = createRelay({ outbox, transport, backoff: { baseMs: 10, maxMs: 10, minMs: 0 } });
    expect((await relay.drain()).retried).toBe(1);
    clock += 59_999;
    expect(await storage.hasDue()).toBe(false);
    clock += 1;
    expect(await storage.hasDue()).toBe(true);
  });

  it("treats a throwing transport, a wrong number of outcomes and malformed outcomes as retry", async () => {
    const variants: Array<(ms: readonly OutboxMessage[]) => Promise<readonly DeliveryOutcome[]>> = [
      () => Promise.reject(new Error("socket hang up")),
      () => Promise.resolve([]),
      (ms) => Promise.resolve(ms.map(() => ({ status: "weird" } as unknown as DeliveryOutcome))),
      (ms) => Promise.resolve(ms.map(() => ({ status: "retry", error: "x", retryAfterMs: -1 }))),
    ];
    for (const send of variants) {
      const { storage, outbox } = memoryOutbox();
      await fill(storage, outbox, 2);
      const report = await createRelay({ outbox, transport: { name: "bad", send } }).drain();
      expect(report).toMatchObject({ claimed: 2, retried: 2, delivered: 0, dead: 0 });
      expect((await storage.stats()).pending).toBe(2);
    }
  });

  it("dead-letters after maxAttempts with the last error", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 1);
    const transport = recordingTransport({ outcome: () => ({ status: "retry", error: "HTTP 502" }) });
    const relay = createRelay({ outbox, transport, maxAttempts: 4, backoff: { baseMs: 1, maxMs: 1, minMs: 0 } });
    const report = await relay.drain();
    expect(report).toMatchObject({ retried: 3, dead: 1 });
    const dead = (await outbox.deadLetters.list()).items;
    expect(dead).toHaveLength(1);
    expect(dead[0]!.attempts).toBe(4);
    expect(dead[0]!.lastError).toMatch(/gave up after 4 attempts: HTTP 502/);
  });
});

describe("drain: leases and locks", () => {
  it("a relay that stalls past its lease loses its rows; its late settle is rejected and counted; the new holder delivers", async () => {
    const { storage, outbox } = memoryOutbox();
    const [id] = await fill(storage, outbox, 1);
    let releaseStall!: () => void;
    const stalled = new Promise<void>((r) => (releaseStall = r));
    // The first relay's storage pauses before settling (a frozen process, a long GC pause).
    const slowSettle: OutboxStorage<unknown, never> = {
      ...storage,
      async settle(token, s) {
        await stalled;
        return storage.settle(token, s);
      },
    };
    const a = recordingTransport();
    const relayA = createRelay({ outbox: createOutbox({ storage: slowSettle }), transport: a, leaseMs: 200, sendTimeoutMs: 100 });
    const drainA = relayA.drain({ budgetMs: 5_000 });
    await sleep(300); // A delivered but is frozen before its settle; its lease (200 ms) expires
    const b = recordingTransport();
    const reportB = await createRelay({ outbox, transport: b, leaseMs: 2_000, sendTimeoutMs: 500 }).drain();
    expect(reportB.delivered).toBe(1);
    releaseStall();
    const reportA = await drainA;
    expect(reportA.leaseLost).toBe(1);
    expect(reportA.delivered).toBe(0);
    expect(a.delivered.map((m) => m.id)).toEqual([id]);
    expect(b.delivered.map((m) => m.id)).toEqual([id]); // same id both times: the consumer can deduplicate
    expect(b.delivered[0]!.attempts).toBe(2);
    expect((await storage.stats()).pending).toBe(0);
  });

  it("skips with lock-busy when the lock is held elsewhere, and releases the lock after draining", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 3);
    const lock = memoryLock();
    const key = `edge-outbox:relay:${storage.scope ?? storage.name}`; // the default lockKey
    const other = await lock.acquire(key, 10_000);
    const relay = createRelay({ outbox, transport: recordingTransport(), lock });
    const busy = await relay.drain();
    expect(busy).toMatchObject({ skipped: "lock-busy", claimed: 0 });
    await other!.release();
    const ok = await relay.drain();
    expect(ok.delivered).toBe(3);
    expect(ok.skipped).toBe(undefined);
    expect(lock.isHeld(key)).toBe(false);
  });

  it("a lock store failure rejects with LOCK; a storage failure rejects with STORAGE (never a half report)", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 3);
    const brokenLock = { name: "broken", acquire: () => Promise.reject(new Error("ECONNREFUSED")) };
    const e1 = await caught(createRelay({ outbox, transport: recordingTransport(), lock: brokenLock }).drain());
    expect(isOutboxError(e1, "LOCK")).toBe(true);
    expect((e1 as Error).message).toMatch(/ECONNREFUSED/);

    const brokenClaim = { ...storage, claim: () => Promise.reject(new Error("connection terminated")) };
    const e2 = await caught(createRelay({ outbox: createOutbox({ storage: brokenClaim }), transport: recordingTransport() }).drain());
    expect(isOutboxError(e2, "STORAGE")).toBe(true);
    expect((e2 as Error).cause).toBeInstanceOf(Error);

    const brokenSettle = { ...storage, settle: () => Promise.reject(new Error("disk full")) };
    const e3 = await caught(createRelay({ outbox: createOutbox({ storage: brokenSettle }), transport: recordingTransport() }).drain());
    expect(isOutboxError(e3, "STORAGE")).toBe(true);
    // Nothing was lost: the rows are leased and come back when the lease expires.
    expect((await storage.stats()).pending).toBe(3);
  });
});

describe("createRelay options", () => {
  const { outbox } = memoryOutbox();
  const transport = recordingTransport();
  const bad: Array<[Record<string, unknown>, RegExp]> = [
    [{ batchSize: 0 }, /batchSize/],
    [{ concurrency: 1.5 }, /concurrency/],
    [{ leaseMs: 1_000, sendTimeoutMs: 600 }, /leaseMs must be at least twice sendTimeoutMs/],
    [{ maxAttempts: 0 }, /maxAttempts/],
    [{ backoff: { baseMs: -1 } }, /backoff\.baseMs/],
    [{ backoff: { typo: 1 } }, /backoff/],
    [{ transport: { name: "x" } }, /transport/],
    [{ lock: {} }, /lock/],
  ];
  for (const [opts, message] of bad) {
    it(`rejects ${JSON.stringify(opts)} with CONFIG`, async () => {
      const e = await caught(() => createRelay({ outbox, transport, ...opts } as never));
      expect(isOutboxError(e, "CONFIG")).toBe(true);
      expect((e as Error).message).toMatch(message);
    });
  }
  it("rejects bad drain options with CONFIG", async () => {
    const relay = createRelay({ outbox, transport });
    expect(await codeOf(relay.drain({ budgetMs: -1 }))).toBe("CONFIG");
    expect(await codeOf(relay.drain({ signal: "no" as never }))).toBe("CONFIG");
  });
});

describe("run()", () => {
  it("keeps draining until its signal aborts, and survives storage failures", async () => {
    const storage = memoryStorage();
    let failClaims = 2;
    const flaky = {
      ...storage,
      claim: (o: { limit: number; leaseMs: number }) => failClaims-- > 0 ? Promise.reject(new Error("db restarting")) : storage.claim(o),
    };
    const outbox = createOutbox({ storage: flaky, topics: [event] });
    const transport = recordingTransport();
    const errors: string[] = [];
    const controller = new AbortController();
    const running = createRelay({ outbox, transport }).run({
      signal: controller.signal,
      pollIntervalMs: 10,
      onError: (e) => errors.push(e.code),
    });
    await sleep(100);
    const h = storage.begin();
    await outbox.enqueue(h.tx, event, { n: 42 });
    await h.commit();
    for (let i = 0; i < 100 && transport.delivered.length === 0; i++) await sleep(10);
    controller.abort();
    await running;
    expect(errors).toEqual(["STORAGE", "STORAGE"]);
    expect(transport.delivered.map(n)).toEqual([42]);
  });
});
