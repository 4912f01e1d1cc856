// outbox.enqueueMany / statementMany (issue 9 item 8): one call for many messages, typed by topic, on every storage;
// on Postgres, two transactions enqueueing overlapping keys in opposite orders through it never deadlock.
import { createClient } from "@libsql/client";
import * as v from "valibot";
import { describe, expect, it } from "vitest";
import { libsqlStorage } from "../adapters/libsql/mod.ts";
import { memoryStorage } from "../adapters/memory/mod.ts";
import { createOutbox, defineTopic, type EnqueueItem, isOutboxError } from "../mod.ts";
import { caught, codeOf } from "./helpers.ts";
import { postgresFixture, reservedTransaction } from "./postgres-fixtures.ts";

const created = defineTopic("order.created", v.object({ id: v.string() }));
const paid = defineTopic("order.paid", v.object({ id: v.string(), amount: v.number() }));

describe("enqueueMany on the memory storage", () => {
  it("writes every item in one call, in array order, and returns the ids in that order", async () => {
    const storage = memoryStorage();
    const outbox = createOutbox({ storage, topics: [created, paid] });
    const h = storage.begin();
    const ids = await outbox.enqueueMany(h.tx, [
      { topic: created, payload: { id: "o1" }, options: { key: "c7" } },
      { topic: "order.paid", payload: { id: "o1", amount: 5 }, options: { key: "c7", headers: { "x-a": "1" } } },
      { topic: paid, payload: { id: "o2", amount: 1 } },
    ]);
    expect(ids).toHaveLength(3);
    expect(new Set(ids).size).toBe(3);
    await h.commit();
    const claim = await storage.claim({ limit: 10, leaseMs: 10_000 });
    expect(claim.messages.map((m) => m.id)).toEqual(ids);
    expect(claim.messages.map((m) => [m.topic, m.key])).toEqual([["order.created", "c7"], ["order.paid", "c7"], ["order.paid", null]]);
    expect(claim.messages[1]!.headers).toEqual({ "x-a": "1" });
    expect(claim.messages[2]!.payload).toEqual({ id: "o2", amount: 1 });
  });

  it("an empty array writes nothing and returns []", async () => {
    const storage = memoryStorage();
    const outbox = createOutbox({ storage });
    const h = storage.begin();
    expect(await outbox.enqueueMany(h.tx, [])).toEqual([]);
    await h.commit();
    expect(storage.count().pending).toBe(0);
  });

  it("one bad item refuses the whole call with VALIDATION naming it, nothing written, the transaction usable", async () => {
    const storage = memoryStorage();
    const outbox = createOutbox({ storage, topics: [created, paid] });
    const h = storage.begin();
    const bad: unknown[] = [
      { topic: created, payload: { id: "o1" } },
      { topic: paid, payload: { id: "o1", amount: "5" } },
    ];
    const e = await caught(outbox.enqueueMany(h.tx, bad as EnqueueItem<typeof created | typeof paid>[]));
    expect(isOutboxError(e, "VALIDATION")).toBe(true);
    expect((e as Error).message).toMatch(/^enqueueMany: items\[1\]: payload for topic "order.paid" is invalid/);
    const unknownTopic = await caught(outbox.enqueueMany(h.tx, [{ topic: "order.shipped", payload: {} }] as never));
    expect((unknownTopic as Error).message).toMatch(/items\[0\]: unknown topic "order.shipped"/);
    expect(await codeOf(outbox.enqueueMany(h.tx, [{ topic: created, payload: { id: "x" }, options: { key: "" } }]))).toBe("VALIDATION");
    expect(await codeOf(outbox.enqueueMany(h.tx, [null] as never))).toBe("VALIDATION");
    expect(await codeOf(outbox.enqueueMany(h.tx, "nope" as never))).toBe("VALIDATION");
    await outbox.enqueueMany(h.tx, [{ topic: created, payload: { id: "ok" } }]);
    await h.commit();
    expect(storage.count().pending).toBe(1);
  });

  it("two items with one id are VALIDATION; an id already in the outbox is CONFLICT; nothing of either call written", async () => {
    const storage = memoryStorage();
    const outbox = createOutbox({ storage, topics: [created] });
    const id = "0190f3a0-0000-7000-8000-000000000001";
    const h = storage.begin();
    const twice = await caught(outbox.enqueueMany(h.tx, [
      { topic: created, payload: { id: "a" }, options: { id } },
      { topic: created, payload: { id: "b" }, options: { id } },
    ]));
    expect(isOutboxError(twice, "VALIDATION")).toBe(true);
    expect((twice as Error).message).toMatch(/items\[1\]: id .* is given to two items/);
    await outbox.enqueueMany(h.tx, [{ topic: created, payload: { id: "a" }, options: { id } }]);
    await h.commit();
    const h2 = storage.begin();
    expect(await codeOf(outbox.enqueueMany(h2.tx, [
      { topic: created, payload: { id: "fresh" } },
      { topic: created, payload: { id: "b" }, options: { id } },
    ]))).toBe("CONFLICT");
    await h2.commit();
    expect(storage.count().pending).toBe(1);
  });

  it("statementMany is a CONFIG error on a storage that cannot join a batch", async () => {
    const outbox = createOutbox({ storage: memoryStorage(), topics: [created] });
    expect(await codeOf(() => outbox.statementMany([{ topic: created, payload: { id: "o1" } }]))).toBe("CONFIG");
  });
});

describe("statementMany on libSQL", () => {
  it("one statement inserts every item in the caller's atomic batch, in array order", async () => {
    const client = createClient({ url: ":memory:" });
    try {
      const storage = libsqlStorage(client);
      await storage.migrate();
      const outbox = createOutbox({ storage, topics: [created, paid] });
      await client.execute("create table orders (id text primary key)");
      const stmt = outbox.statementMany([
        { topic: created, payload: { id: "o1" }, options: { key: "c7" } },
        { topic: "order.paid", payload: { id: "o1", amount: 5 }, options: { key: "c7" } },
        { topic: created, payload: { id: "o2" } },
      ]);
      await client.batch([{ sql: "insert into orders (id) values (?)", args: ["o1"] }, stmt], "write");
      const claim = await storage.claim({ limit: 10, leaseMs: 10_000 });
      expect(claim.messages.map((m) => m.payload)).toEqual([{ id: "o1" }, { id: "o1", amount: 5 }, { id: "o2" }]);
      expect(await codeOf(() => outbox.statementMany([]))).toBe("VALIDATION");
      expect(await codeOf(() => outbox.statementMany([{ topic: paid, payload: { id: "o3" } } as never]))).toBe("VALIDATION");
    } finally {
      client.close();
    }
  });

  it("enqueueMany works inside an interactive libSQL transaction", async () => {
    const client = createClient({ url: ":memory:" });
    try {
      const storage = libsqlStorage(client);
      await storage.migrate();
      const outbox = createOutbox({ storage, topics: [created] });
      const tx = await storage.begin();
      const ids = await outbox.enqueueMany(tx, [{ topic: created, payload: { id: "o1" } }, { topic: created, payload: { id: "o2" } }]);
      await tx.commit();
      expect((await storage.claim({ limit: 10, leaseMs: 10_000 })).messages.map((m) => m.id)).toEqual(ids);
    } finally {
      client.close();
    }
  });
});

describe("enqueueMany on Postgres", () => {
  it("two transactions enqueueing overlapping keys in opposite orders never deadlock", async () => {
    const f = await postgresFixture();
    try {
      const outbox = createOutbox({ storage: f.storage, topics: [created] });
      const keys = ["k1", "k2", "k3", "k4", "k5", "k6"];
      const rounds = 15;
      for (let r = 0; r < rounds; r++) {
        const [t1, t2] = await Promise.all([reservedTransaction(f.sql), reservedTransaction(f.sql)]);
        const run = async (t: typeof t1, order: string[]): Promise<void> => {
          try {
            await outbox.enqueueMany(t.tx, order.map((key) => ({ topic: created, payload: { id: `${r}-${key}` }, options: { key } })));
            await t.commit();
          } catch (e) {
            await t.rollback().catch(() => {});
            throw e;
          }
        };
        await Promise.all([run(t1, keys), run(t2, [...keys].reverse())]);
      }
      const stats = await f.storage.stats();
      expect(stats.pending).toBe(rounds * 2 * keys.length);
    } finally {
      await f.close();
    }
  }, 60_000);

  it("control: the same messages through separate enqueue calls in opposite orders do deadlock (40P01, STORAGE)", async () => {
    const f = await postgresFixture();
    try {
      const outbox = createOutbox({ storage: f.storage, topics: [created] });
      const [t1, t2] = await Promise.all([reservedTransaction(f.sql), reservedTransaction(f.sql)]);
      await outbox.enqueue(t1.tx, created, { id: "1a" }, { key: "a" });
      await outbox.enqueue(t2.tx, created, { id: "2b" }, { key: "b" });
      const results = await Promise.allSettled([
        outbox.enqueue(t1.tx, created, { id: "1b" }, { key: "b" }),
        outbox.enqueue(t2.tx, created, { id: "2a" }, { key: "a" }),
      ]);
      const failed = results.filter((x) => x.status === "rejected");
      expect(failed).toHaveLength(1);
      const e = (failed[0] as PromiseRejectedResult).reason;
      expect(isOutboxError(e, "STORAGE")).toBe(true);
      expect(String((e as Error).message)).toMatch(/deadlock/);
      await t1.rollback();
      await t2.rollback();
    } finally {
      await f.close();
    }
  }, 60_000);
});

describe("typing", () => {
  it("items are typed by topic, by object and by name", async () => {
    const storage = memoryStorage();
    const outbox = createOutbox({ storage, topics: [created, paid] });
    const h = storage.begin();
    const key: string | undefined = undefined;
    await outbox.enqueueMany(h.tx, [
      { topic: created, payload: { id: "o1" } },
      { topic: "order.paid", payload: { id: "o1", amount: 5 }, options: { key: key ?? null } },
    ]);
    // @ts-expect-error order.created's payload has no amount and needs id
    await caught(outbox.enqueueMany(h.tx, [{ topic: created, payload: { amount: 5 } }]));
    // @ts-expect-error order.paid by name needs amount
    await caught(outbox.enqueueMany(h.tx, [{ topic: "order.paid", payload: { id: "o1" } }]));
    // @ts-expect-error not a declared topic
    await caught(outbox.enqueueMany(h.tx, [{ topic: "order.shipped", payload: { id: "o1" } }]));
    // @ts-expect-error a key is a string or null
    await caught(outbox.enqueueMany(h.tx, [{ topic: created, payload: { id: "o1" }, options: { key: 7 } }]));
    const ids: string[] = await outbox.enqueueMany(h.tx, []);
    expect(ids).toEqual([]);
    await h.rollback();

    // Without declared topics, any topic object or name is accepted.
    const open = createOutbox({ storage });
    const h2 = storage.begin();
    expect(await open.enqueueMany(h2.tx, [{ topic: created, payload: { id: "o1" } }, { topic: "any.name", payload: [1, 2] }])).toHaveLength(2);
    await h2.rollback();
  });
});
