// Transport.orderedBatches: a transport that keeps a call's messages of one key in order may get runs of a key's
// consecutive rows in one call. The relay must still never let a row of a key go (or get a final outcome) before the
// rows ahead of it have theirs, must hand back what the transport did not attempt, and must not charge a row for
// another row's failure.
import { describe, expect, it } from "vitest";
import { functionTransport, memoryInbox, recordingTransport } from "../adapters/memory/mod.ts";
import { createInbox, createRelay, type DeliveryOutcome, type OutboxMessage, type RelayOptions, type Transport } from "../mod.ts";
import type { ClaimedMessage } from "../src/storage.ts";
import { codeOf, fill, memoryOutbox } from "./helpers.ts";

const n = (m: { payload: unknown }): number => (m.payload as { n: number }).n;
const fast = { backoff: { baseMs: 1, maxMs: 1, minMs: 0 } } as const;
/** A retried row is due again after 300 ms: a drain ends with its key blocked behind it (nothing else is due). */
const slow = { backoff: { baseMs: 300, maxMs: 300, minMs: 300 } } as const;
const pause = (): Promise<void> => new Promise((r) => setTimeout(r, 350));

/** A transport that records each call's messages and answers per message with `outcome` (never skipping). */
function callLog(
  ordered: boolean,
  outcome: (m: OutboxMessage, call: number) => DeliveryOutcome = () => ({ status: "delivered" }),
  maxBatchSize = 50,
) {
  const calls: ClaimedMessage[][] = [];
  const transport: Transport = {
    name: "log",
    maxBatchSize,
    orderedBatches: ordered,
    send(messages) {
      calls.push(messages as ClaimedMessage[]);
      return Promise.resolve(messages.map((m) => outcome(m, calls.length)));
    },
  };
  return { calls, transport };
}

async function drainAll(options: RelayOptions, rounds = 50): Promise<{ delivered: number; retried: number; dead: number; released: number }> {
  const sum = { delivered: 0, retried: 0, dead: 0, released: 0 };
  const relay = createRelay(options);
  for (let i = 0; i < rounds; i++) {
    const r = await relay.drain({ budgetMs: 5_000 });
    sum.delivered += r.delivered;
    sum.retried += r.retried;
    sum.dead += r.dead;
    sum.released += r.released;
    if ((await options.outbox.storage.stats()).pending === 0) return sum;
    await new Promise((res) => setTimeout(res, 5));
  }
  throw new Error("the outbox did not drain");
}

describe("orderedBatches: runs of a key's rows in one call", () => {
  it("a hot key goes as runs of consecutive rows in seq order, with each row's prevSeq the row before it", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 200, { key: (i) => `k${i % 2}` });
    const { calls, transport } = callLog(true);
    const sum = await drainAll({ outbox, transport, batchSize: 100, concurrency: 4 });
    expect(sum.delivered).toBe(200);
    const keyed = calls.flat();
    expect(keyed).toHaveLength(200); // each row sent once
    // Far fewer calls than rows: a call carries runs, not one head per key.
    expect(calls.length).toBeLessThanOrEqual(20);
    expect(Math.max(...calls.map((c) => c.length))).toBeGreaterThan(2);
    const lastSeq = new Map<string, number>();
    for (const call of calls) {
      const before = new Map<string, ClaimedMessage>();
      for (const m of call) {
        // In seq order within the call and across calls (calls of one key never overlap: checked below).
        expect(m.seq).toBeGreaterThan(lastSeq.get(m.key!) ?? -1);
        lastSeq.set(m.key!, m.seq);
        const prev = before.get(m.key!);
        if (prev) expect(m.prevSeq).toBe(prev.seq);
        before.set(m.key!, m);
      }
    }
    // Per key, the payloads in delivery order are 0, 2, 4, … and 1, 3, 5, …
    for (const k of ["k0", "k1"]) {
      const got = keyed.filter((m) => m.key === k).map(n);
      expect(got).toEqual([...got].sort((a, b) => a - b));
      expect(got).toHaveLength(100);
    }
  });

  it("without orderedBatches a call never holds two rows of one key", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 100, { key: (i) => `k${i % 2}` });
    const { calls, transport } = callLog(false);
    expect((await drainAll({ outbox, transport, batchSize: 100, concurrency: 4 })).delivered).toBe(100);
    for (const call of calls) expect(new Set(call.map((m) => m.key)).size).toBe(call.length);
  });

  it("a key's rows after one that is retried are released, not attempted, and go after it in order; their attempts are given back", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 10, { key: () => "k" });
    let failed = false;
    const transport = recordingTransport({
      maxBatchSize: 50,
      orderedBatches: true,
      outcome: (m) => (n(m) === 3 && !failed ? ((failed = true), { status: "retry", error: "503" }) : { status: "delivered" }),
    });
    const first = await createRelay({ outbox, transport, ...slow }).drain();
    expect(first.delivered).toBe(3); // 0, 1, 2
    expect(first.retried).toBe(1); // 3
    expect(first.released).toBe(6); // 4..9: not attempted
    expect(transport.attempts.map(n)).toEqual([0, 1, 2, 3]);
    await pause();
    await drainAll({ outbox, transport, ...fast });
    expect(transport.delivered.map(n)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    const attempts = new Map(transport.delivered.map((m) => [n(m), m.attempts]));
    expect(attempts.get(3)).toBe(2);
    expect(attempts.get(4)).toBe(1); // the released row's attempt was given back
  });

  it("a transport that delivers past a key's failed row breaks its contract: those rows are released, never counted delivered", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 6, { key: () => "k" });
    const { transport } = callLog(true, (m, call) => (call === 1 && n(m) === 2 ? { status: "retry", error: "503" } : { status: "delivered" }));
    const first = await createRelay({ outbox, transport, ...slow }).drain();
    expect(first).toMatchObject({ delivered: 2, retried: 1, released: 3 });
    expect((await storage.stats()).pending).toBe(4); // 2 (retried) and 3, 4, 5 (released)
  });

  it("a dead row ends its run: the rows after it are released with the key's queued rows, and go after it in order", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 10, { key: () => "k" });
    // Runs of at most 4: the first call carries 0..3, and 4..9 wait queued behind it.
    const { calls, transport } = callLog(true, (m) => (n(m) === 2 ? { status: "dead", error: "400" } : { status: "delivered" }), 4);
    const sum = await drainAll({ outbox, transport, batchSize: 100, ...fast });
    expect(sum).toMatchObject({ delivered: 9, dead: 1 });
    expect(calls[0]!.map(n)).toEqual([0, 1, 2, 3]);
    // Next comes 3, handed back by the first call, never 4..7 ahead of it.
    expect(calls[1]!.map(n)[0]).toBe(3);
    expect(calls.slice(1).flat().map(n)).toEqual([3, 4, 5, 6, 7, 8, 9]);
    expect((await storage.listDead({ limit: 10 })).items.map((m) => n(m))).toEqual([2]);
  });

  it("a call that throws charges each key's first row only; the key then goes a row per call, so a poison row is charged its own attempts", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 8, { key: () => "k" });
    const calls: number[][] = [];
    const attemptsAtDelivery = new Map<number, number>();
    const transport: Transport = {
      name: "poison",
      maxBatchSize: 50,
      orderedBatches: true,
      send(messages) {
        calls.push(messages.map(n));
        // The destination falls over on message 5 (say, it crashes the consumer): the whole call fails.
        if (messages.some((m) => n(m) === 5)) return Promise.reject(new Error("connection reset"));
        for (const m of messages) attemptsAtDelivery.set(n(m), m.attempts);
        return Promise.resolve(messages.map(() => ({ status: "delivered" as const })));
      },
    };
    const sum = await drainAll({ outbox, transport, maxAttempts: 3, ...fast });
    // 0..4 delivered (0 was charged once for the failed call), 5 dead after its own 3 attempts, 6, 7 after it.
    expect(sum.delivered).toBe(7);
    expect(sum.dead).toBe(1);
    expect((await storage.listDead({ limit: 10 })).items.map((m) => [n(m), m.attempts])).toEqual([[5, 3]]);
    expect(calls[0]).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    // After the failed run, a row per call: 0 alone (its retry), then 1, 2, 3, 4 and 5 one by one.
    expect(calls.slice(1, 6)).toEqual([[0], [1], [2], [3], [4]]);
    expect(calls.filter((c) => c.includes(5)).every((c) => c.length === 1 || c === calls[0])).toBe(true);
    expect(calls.slice(1).flat().filter((x) => x === 6)).toHaveLength(1); // sent once more, after 5 went dead
    // Only 0 was charged for the failed call; the rows behind it got their attempt back.
    expect([...attemptsAtDelivery].sort((a, b) => a[0] - b[0])).toEqual([[0, 2], [1, 1], [2, 1], [3, 1], [4, 1], [6, 1], [7, 1]]);
    expect(calls.flat().lastIndexOf(6)).toBeGreaterThan(calls.flat().lastIndexOf(5));
  });

  it("a run never takes a row whose send would not fit its lease, and a call's runs never mix keyless rows", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 30, { key: (i) => (i % 3 === 0 ? null : `k${i % 3}`) });
    const { calls, transport } = callLog(true);
    expect((await drainAll({ outbox, transport, batchSize: 100, concurrency: 2 })).delivered).toBe(30);
    for (const call of calls) {
      const keyless = call.filter((m) => m.key === null).length;
      expect(keyless === 0 || keyless === call.length).toBe(true);
    }
  });

  it("rejects a non-boolean orderedBatches with CONFIG, before anything is claimed", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 1);
    const transport = { name: "x", maxBatchSize: 10, orderedBatches: "yes", send: () => Promise.resolve([]) } as unknown as Transport;
    expect(await codeOf(() => createRelay({ outbox, transport }))).toBe("CONFIG");
    expect((await storage.stats()).pending).toBe(1);
  });
});

describe("functionTransport with maxBatchSize", () => {
  it("rejects a bad maxBatchSize with CONFIG", async () => {
    for (const bad of [0, 1.5, 1_001, Number.NaN, "10"]) {
      expect(await codeOf(() => functionTransport(() => {}, { maxBatchSize: bad as number }))).toBe("CONFIG");
    }
  });

  it("calls the handler in order and skips a key's later messages once one throws; other keys of the call go on", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 12, { key: (i) => `k${i % 2}` });
    const seen: number[] = [];
    let thrown = false;
    const transport = functionTransport((m) => {
      seen.push(n(m));
      if (n(m) === 4 && !thrown) {
        thrown = true;
        throw new Error("boom");
      }
    }, { maxBatchSize: 20 });
    expect(transport.orderedBatches).toBe(true);
    const first = await createRelay({ outbox, transport, concurrency: 1, ...slow }).drain();
    expect(first.retried).toBe(1);
    // k0 is 0, 2, 4, …: after 4 threw, 6, 8, 10 were skipped in that call; k1 (odd) went on.
    const firstCall = seen.slice(0, seen.indexOf(4) + 1);
    expect(firstCall).toContain(4);
    expect(seen.filter((x) => x === 6)).toHaveLength(0);
    await pause();
    await drainAll({ outbox, transport, concurrency: 1, ...fast });
    const evens = seen.filter((x) => x % 2 === 0);
    expect(evens).toEqual([0, 2, 4, 4, 6, 8, 10]);
    expect(seen.filter((x) => x % 2 === 1)).toEqual([1, 3, 5, 7, 9, 11]);
  });
});

describe("orderedBatches into a strict inbox", () => {
  it("runs through functionTransport into inbox.process with order.strict: nothing held, each key processed once, in commit order, with no gap", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 300, { key: (i) => `k${i % 3}` });
    const inbox = createInbox({ storage: memoryInbox(), consumer: "ordered-e2e" });
    const results: string[] = [];
    const processed = new Map<string, number[]>();
    const gaps: number[] = [];
    let flaky = 0;
    const transport = functionTransport(async (m) => {
      const c = m as ClaimedMessage;
      // Every 37th message fails once first (a retry mid-run): the key's later messages of that call go again later.
      if (n(m) % 37 === 5 && flaky++ % 2 === 0) throw new Error("consumer busy");
      const r = await inbox.process(m.id, (_tx, info) => {
        if (info.order?.gap) gaps.push(n(m));
        processed.set(m.key!, [...(processed.get(m.key!) ?? []), n(m)]);
      }, { order: { key: m.key!, seq: c.seq, prevSeq: c.prevSeq ?? null, strict: true } });
      results.push(r);
    }, { maxBatchSize: 25 });
    await drainAll({ outbox, transport, batchSize: 100, concurrency: 4, ...fast });
    expect(results.filter((r) => r === "held")).toEqual([]);
    expect(gaps).toEqual([]);
    for (const k of [0, 1, 2]) {
      expect(processed.get(`k${k}`)).toEqual(Array.from({ length: 100 }, (_, i) => 3 * i + k));
    }
  });
});
