// Outcomes a transport may return that a storage would refuse: no such outcome may fail a settle, because a failed
// settle leaves the delivered messages of the same claim unsettled, and they are sent again after the lease expires.
import { afterEach, describe, expect, it } from "vitest";
import { recordingTransport } from "../adapters/memory/mod.ts";
import { createOutbox, createRelay, type DeliveryOutcome, type OutboxMessage, parseRetryAfter } from "../mod.ts";
import { MAX_RETRY_AFTER_MS } from "../src/backoff.ts";
import { uuidv7 } from "../src/message.ts";
import type { OutboxStorage } from "../src/storage.ts";
import { libsqlMemoryFixture } from "./libsql-fixtures.ts";
import { postgresFixture } from "./postgres-fixtures.ts";

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const n = (m: OutboxMessage): number => (m.payload as { n: number }).n;

// n = 0, 2, 4, … are delivered; the odd ones answer with an outcome a careless relay would hand to the storage as is.
const hostile: DeliveryOutcome[] = [
  { status: "retry", error: "429", retryAfterMs: parseRetryAfter("100000000000000000000")! }, // 1e23 ms
  { status: "retry", error: "429", retryAfterMs: Infinity },
  { status: "retry", error: "429", retryAfterMs: 2 ** 60 },
  { status: "retry", error: "503", retryAfterMs: 1_500.25 },
  { status: "retry", error: "bad\u0000byte and a lone \uD800 surrogate" },
  { status: "dead", error: "x".repeat(1_999) + "\uD83D\uDE00" }, // truncation must not split the pair
];

interface Target {
  storage: OutboxStorage<unknown, unknown>;
  enqueue(count: number): Promise<void>;
  /** available_at − now of every pending row, ms, by the database clock. */
  waits(): Promise<number[]>;
  close(): Promise<void>;
}

const row = (i: number) => ({
  id: uuidv7(),
  topic: "test.event",
  key: null,
  payload: JSON.stringify({ n: i }),
  headers: "{}",
  delayMs: 0,
});

const targets: Record<string, () => Promise<Target>> = {
  libsql: async () => {
    const f = await libsqlMemoryFixture();
    return {
      storage: f.storage as OutboxStorage<unknown, unknown>,
      enqueue: async (count) => {
        const tx = await f.storage.begin();
        await f.storage.enqueue(tx, Array.from({ length: count }, (_, i) => row(i)));
        await tx.commit();
      },
      waits: async () => {
        const now = Date.now();
        const rs = await f.client.execute(`SELECT available_at FROM outbox WHERE status = 'pending'`);
        return rs.rows.map((r) => Number(r["available_at"]) - now);
      },
      close: () => f.close(),
    };
  },
  postgres: async () => {
    const f = await postgresFixture();
    return {
      storage: f.storage as OutboxStorage<unknown, unknown>,
      enqueue: (count) => f.sql.begin((tx) => f.storage.enqueue(tx, Array.from({ length: count }, (_, i) => row(i)))).then(() => {}),
      waits: async () => {
        const rows = await f.sql.unsafe(
          `SELECT (extract(epoch from available_at - now()) * 1000)::float8 AS w FROM "${f.schema}".outbox WHERE status = 'pending'`,
        );
        return rows.map((r) => Number(r["w"]));
      },
      close: () => f.close(),
    };
  },
};

describe.each(Object.keys(targets))("hostile outcomes on %s", (name) => {
  let target: Target | undefined;
  afterEach(async () => {
    await target?.close();
    target = undefined;
  });

  it("a huge, infinite or fractional retryAfterMs and unstorable error texts settle; the delivered rows of the claim are not resent", async () => {
    target = await targets[name]!();
    const count = hostile.length * 2;
    await target.enqueue(count);
    const transport = recordingTransport({ outcome: (m) => n(m) % 2 === 0 ? { status: "delivered" } : hostile[(n(m) - 1) / 2]! });
    const relay = createRelay({ outbox: createOutbox({ storage: target.storage }), transport, batchSize: 100, leaseMs: 400, sendTimeoutMs: 100 });
    const first = await relay.drain({ budgetMs: 2_000 }).catch((e: unknown) => e);
    await sleep(500); // past the lease: rows a failed settle left behind are due again
    await relay.drain({ budgetMs: 2_000 }).catch(() => {});
    // Each delivered message went out once (on a refused settle, the second drain sends them again).
    const sentEven = transport.attempts.filter((m) => n(m) % 2 === 0).map(n).sort((a, b) => a - b);
    expect(sentEven).toEqual(Array.from({ length: hostile.length }, (_, i) => 2 * i));
    expect(first).toMatchObject({ claimed: count, delivered: hostile.length, retried: hostile.length - 1, dead: 1, leaseLost: 0 });
    const waits = (await target.waits()).sort((a, b) => a - b);
    expect(waits).toHaveLength(hostile.length - 1);
    // Three waits are clamped to one day, the 1500.25 ms one is rounded up (it is at least that long).
    expect(waits.filter((w) => w > MAX_RETRY_AFTER_MS - 60_000 && w <= MAX_RETRY_AFTER_MS + 1_000)).toHaveLength(3);
    expect(waits[0]).toBeLessThanOrEqual(1_600);
    const dead = await target.storage.listDead({ limit: 10 });
    expect(dead.items).toHaveLength(1);
    expect(dead.items[0]!.lastError!.endsWith("\uD83D\uDE00") || dead.items[0]!.lastError!.endsWith("…")).toBe(true);
    expect(dead.items[0]!.lastError).not.toMatch(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/);
  });
});
