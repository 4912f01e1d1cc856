// The D1 storage on a real local D1 (Miniflare 4, workerd's D1) under Node: the storage conformance suite, and what
// is specific to D1 (batch-only writes, migrate through batches, CONFLICT and missing-table errors of a batch).
import type * as CF from "@cloudflare/workers-types";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type D1Binding, d1Schema, type D1Statement, d1Storage } from "../adapters/d1/mod.ts";
import { isRetryableError } from "../adapters/d1/client.ts";
import { SCHEMA_VERSIONS } from "../adapters/d1/schema.ts";
import { isOutboxError, type OutboxError, type OutboxErrorCode } from "../src/errors.ts";
import { createOutbox } from "../src/outbox.ts";
import { type NewMessage, uuidv7 } from "../src/message.ts";
import { storageConformance } from "../src/testing/mod.ts";
import { d1Fixture, startD1 } from "./d1-fixtures.ts";
import { caught } from "./helpers.ts";

// ---- type level: Cloudflare's types fit the structural ones (checked by tsc -p tsconfig.test.json) ----
type Assignable<T, U extends T> = U;
export type BindingIsD1Database = Assignable<D1Binding, CF.D1Database>;
export type StatementIsPrepared = Assignable<D1Statement, CF.D1PreparedStatement>;

let d1: Awaited<ReturnType<typeof startD1>>;
beforeAll(async () => {
  d1 = await startD1();
}, 60_000);
afterAll(async () => {
  await d1?.dispose();
});

function message(n: number, extra: Partial<NewMessage> = {}): NewMessage {
  return { id: uuidv7(), topic: "test.event", key: null, payload: JSON.stringify({ n }), headers: "{}", delayMs: 0, ...extra };
}

function expectCode(e: unknown, code: OutboxErrorCode): OutboxError {
  expect(isOutboxError(e, code), String(e)).toBe(true);
  return e as OutboxError;
}

const count = async (db: D1Binding, table: string): Promise<number> =>
  Number((await db.prepare(`SELECT count(*) AS n FROM "${table}"`).all()).results?.[0]?.["n"]);

describe("d1Storage", () => {
  it("is configured like the libSQL storage and sends nothing when constructed", async () => {
    const calls: string[] = [];
    const db: D1Binding = {
      prepare: (q) => {
        calls.push(q);
        return { bind: () => { throw new Error("no"); }, all: () => Promise.reject(new Error("no")) };
      },
      batch: () => Promise.reject(new Error("no")),
    };
    const s = d1Storage(db, { table: "jobs" });
    expect([s.name, s.scope, s.table]).toEqual(["d1", "d1:jobs", "jobs"]);
    expect(s.capabilities).toEqual({ batchStatement: true, skipLocked: false, serialWrites: true, keyPrefixClaims: true });
    expectCode(await caught(() => d1Storage(db, { table: "x; drop table y" })), "CONFIG");
    expectCode(await caught(() => d1Storage(db, { busyRetryMs: -1 })), "CONFIG");
    expectCode(await caught(() => d1Storage({} as never)), "CONFIG");
    expect(calls).toEqual([]);
  });

  it("enqueue appends to a statement list and refuses anything else with CONFIG", async () => {
    const f = await d1Fixture(d1.db);
    const list: D1Statement[] = [d1.db.prepare(`CREATE TABLE IF NOT EXISTS "${f.storage.table}_orders" (id TEXT PRIMARY KEY)`)];
    await f.storage.enqueue(list, [message(1), message(2)]);
    expect(list).toHaveLength(2);
    expect(await count(d1.db, f.storage.table)).toBe(0); // nothing sent yet
    for (const tx of [d1.db, undefined, {}, { execute: () => Promise.resolve() }]) {
      const e = expectCode(await caught(f.storage.enqueue(tx as never, [message(3)])), "CONFIG");
      expect(e.message).toContain("D1 has no interactive transactions");
    }
    await f.storage.batch(list);
    expect((await f.storage.stats()).pending).toBe(2);
    // outbox.enqueue through the core: the id comes back, the statement joins the list
    const outbox = createOutbox({ storage: f.storage });
    const later: D1Statement[] = [];
    const id = await outbox.enqueue(later, "test.event", { n: 3 });
    await f.storage.batch(later);
    expect((await f.storage.claim({ limit: 10, leaseMs: 1_000 })).messages.map((m) => m.id)).toContain(id);
  });

  it("statement() joins the caller's env.DB.batch atomically: a failing batch writes nothing", async () => {
    const f = await d1Fixture(d1.db);
    const e = await caught(d1.db.batch([f.storage.statement([message(1)]), d1.db.prepare("INSERT INTO no_such_table VALUES (1)")]));
    expect(String(e)).toContain("no such table");
    expect(await count(d1.db, f.storage.table)).toBe(0);
    await d1.db.batch([f.storage.statement([message(2)])]);
    expect(await count(d1.db, f.storage.table)).toBe(1);
  });

  it("a colliding id in storage.batch is CONFLICT naming it, and the whole batch is rolled back", async () => {
    const f = await d1Fixture(d1.db);
    const m = message(1);
    await f.storage.batch([f.storage.statement([m])]);
    const fresh = message(2);
    const e = expectCode(await caught(f.storage.batch([f.storage.statement([fresh]), f.storage.statement([m])])), "CONFLICT");
    expect(e.message).toBe(
      `[edge-outbox:d1] enqueue: id ${m.id} is already used by a row of table ${f.storage.table} (pending, dead or kept delivered); nothing was written`,
    );
    expect(await count(d1.db, f.storage.table)).toBe(1);
  });

  it("a missing table is CONFIG saying to call migrate() or install d1Schema()", async () => {
    const storage = d1Storage(d1.db, { table: "never_migrated" });
    for (const call of [() => storage.claim({ limit: 1, leaseMs: 1_000 }), () => storage.stats(), () => storage.batch([storage.statement([message(1)])])]) {
      const e = expectCode(await caught(call), "CONFIG");
      expect(e.message).toBe(
        "[edge-outbox:d1] table never_migrated does not exist: call storage.migrate() or install the DDL from d1Schema()",
      );
    }
  });

  it("migrate() works through batches, is idempotent, and concurrent calls apply each version once", async () => {
    const table = `outbox_mig_${process.pid}`;
    const storages = [d1Storage(d1.db, { table }), d1Storage(d1.db, { table }), d1Storage(d1.db, { table })];
    await Promise.all(storages.map((s) => s.migrate()));
    await storages[0]!.migrate();
    const versions = (await d1.db.prepare(`SELECT version FROM "${table}_migrations" ORDER BY version`).all()).results!;
    expect(versions.map((r) => Number(r["version"]))).toEqual(SCHEMA_VERSIONS.map((v) => v.version));
    const indexes = (await d1.db.prepare(`SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1`).bind(table).all()).results!;
    expect(indexes.map((r) => r["name"])).toContain(`${table}_dead_done`);
  });

  it("d1Schema() is DDL a migration tool can apply, after which migrate() does nothing", async () => {
    const table = `outbox_ddl_${process.pid}`;
    const ddl = d1Schema({ table });
    await d1.db.batch(ddl.map((s) => d1.db.prepare(s)));
    await d1.db.batch(ddl.map((s) => d1.db.prepare(s))); // idempotent
    const storage = d1Storage(d1.db, { table });
    await storage.migrate();
    await storage.batch([storage.statement([message(1)])]);
    expect((await storage.stats()).pending).toBe(1);
  });

  it("subscribe wakes in-process when storage.batch commits outbox statements or a dead letter is replayed", async () => {
    const f = await d1Fixture(d1.db);
    const stop = new AbortController();
    let wakes = 0;
    await f.storage.subscribe(() => wakes++, stop.signal);
    await f.storage.batch([d1.db.prepare("SELECT 1")]);
    await new Promise((r) => setTimeout(r, 0));
    expect(wakes).toBe(0); // no outbox statement in it
    const m = message(1);
    await f.storage.batch([f.storage.statement([m])]);
    await new Promise((r) => setTimeout(r, 0));
    expect(wakes).toBe(1);
    const c = await f.storage.claim({ limit: 1, leaseMs: 10_000 });
    await f.storage.settle(c.token, [{ id: m.id, outcome: "dead", error: "x" }]);
    expect(await f.storage.replayDead(m.id)).toBe(true);
    await new Promise((r) => setTimeout(r, 0));
    expect(wakes).toBe(2);
    stop.abort();
  });

  it("D1's documented transient errors are retryable", () => {
    for (const text of [
      "D1_ERROR: Network connection lost.",
      "D1_ERROR: Internal error while starting up D1 DB storage caused object to be reset.",
      "D1_ERROR: D1 DB reset because its code was updated.",
      "D1_ERROR: D1 DB is overloaded. Too many requests queued.",
    ]) {
      expect(isRetryableError(new Error(text)), text).toBe(true);
    }
    expect(isRetryableError(new Error("D1_ERROR: no such table: x: SQLITE_ERROR"))).toBe(false);
  });
});

storageConformance({ describe, it, expect }, {
  name: "d1 (miniflare)",
  create: () => d1Fixture(d1.db),
  semantics: 2, deliveryPositions: true,
  interactiveTransactions: false,
});
