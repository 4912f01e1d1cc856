import { type Client, createClient, type InStatement, type Transaction } from "@libsql/client";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  isBusyError,
  type LibsqlClient,
  type LibsqlExecutor,
  libsqlSchema,
  type LibsqlStatement,
  libsqlStorage,
  type LibsqlTransaction,
} from "../adapters/libsql/mod.ts";
import { isRetryableError, runWrite } from "../adapters/libsql/client.ts";
import {
  MIGRATIONS_TABLE_DDL,
  recordVersionSql,
  renderSql,
  SCHEMA_V1,
  SCHEMA_VERSIONS,
  TABLE_PLACEHOLDER,
} from "../adapters/libsql/schema.ts";
import { libsqlSql } from "../adapters/libsql/sql.ts";
import { functionTransport } from "../adapters/memory/mod.ts";
import { createOutbox, createRelay } from "../mod.ts";
import { isOutboxError, type OutboxError, type OutboxErrorCode } from "../src/errors.ts";
import { type NewMessage, uuidv7 } from "../src/message.ts";
import { storageConformance } from "../src/testing/mod.ts";
import { libsqlFileFixture, libsqlMemoryFixture } from "./libsql-fixtures.ts";

// ---- type level: the real driver types fit the structural ones (checked by tsc -p tsconfig.test.json) ----
type Assignable<T, U extends T> = U;
export type ClientIsLibsqlClient = Assignable<LibsqlClient, Client>;
export type ClientIsExecutor = Assignable<LibsqlExecutor, Client>;
export type TransactionIsExecutor = Assignable<LibsqlExecutor, Transaction>;
export type TransactionIsLibsqlTransaction = Assignable<LibsqlTransaction, Transaction>;
export type StatementIsInStatement = Assignable<InStatement, LibsqlStatement>;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function message(n: number, extra: Partial<NewMessage> = {}): NewMessage {
  return { id: uuidv7(), topic: "test.event", key: null, payload: JSON.stringify({ n }), headers: "{}", delayMs: 0, ...extra };
}

async function caught(p: Promise<unknown> | (() => unknown)): Promise<unknown> {
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    return e;
  }
  throw new Error("expected a rejection");
}

function expectCode(e: unknown, code: OutboxErrorCode): OutboxError {
  expect(isOutboxError(e, code), String(e)).toBe(true);
  return e as OutboxError;
}

/** A client that records every call and never touches a database. */
function recordingClient(): LibsqlClient & { calls: string[] } {
  const calls: string[] = [];
  const no = (what: string) => (...args: unknown[]): never => {
    calls.push(`${what} ${JSON.stringify(args)}`);
    throw new Error("recording client: no database");
  };
  return { calls, protocol: "file", execute: no("execute"), batch: no("batch"), transaction: no("transaction") };
}

/** Wraps a client, counting round trips. */
function countingClient(inner: Client, protocol: string = inner.protocol) {
  const counts = { execute: 0, batch: 0, transaction: 0, txBatch: 0, txExecute: 0, txExecuteMultiple: 0, statements: 0 };
  /** The SQL of every statement sent in a batch, in order. */
  const sqls: string[] = [];
  const record = (s: readonly InStatement[]): void => {
    for (const st of s) sqls.push(typeof st === "string" ? st : st.sql);
  };
  const client: LibsqlClient = {
    protocol,
    execute: (s) => {
      counts.execute++;
      return inner.execute(s);
    },
    batch: (s, m) => {
      counts.batch++;
      counts.statements += s.length;
      record(s);
      return inner.batch(s, m);
    },
    transaction: async (m) => {
      counts.transaction++;
      const tx = await inner.transaction(m);
      return {
        execute: (s) => {
          counts.txExecute++;
          return tx.execute(s);
        },
        batch: (s) => {
          counts.txBatch++;
          counts.statements += s.length;
          record(s);
          return tx.batch(s);
        },
        executeMultiple: (s) => {
          counts.txExecuteMultiple++;
          return tx.executeMultiple(s);
        },
        commit: () => tx.commit(),
        rollback: () => tx.rollback(),
        close: () => tx.close(),
      };
    },
  };
  const reset = (): void => {
    for (const k of Object.keys(counts) as (keyof typeof counts)[]) counts[k] = 0;
    sqls.length = 0;
  };
  return { client, counts, sqls, reset };
}

function tempDir(): { url: string; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), "edge-outbox-libsql-test-"));
  return { url: `file:${join(dir, "db.sqlite")}`, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

describe("libsqlStorage: configuration", () => {
  it("rejects hostile table names with CONFIG before any SQL is sent", async () => {
    const client = recordingClient();
    for (const table of ["outbox; drop table x", 'out"box', "", "1outbox", "a".repeat(64), "outbox--", "out box"]) {
      const e = expectCode(await caught(() => libsqlStorage(client, { table })), "CONFIG");
      expect(e.message).toContain("table");
    }
    expectCode(await caught(() => libsqlSchema({ table: "x; drop table y" })), "CONFIG");
    expectCode(await caught(() => libsqlSql("x y")), "CONFIG");
    expect(client.calls).toEqual([]);
  });

  it("accepts a plain identifier, and constructing sends nothing", () => {
    const client = recordingClient();
    const s = libsqlStorage(client, { table: "app_outbox_2" });
    expect(s.table).toBe("app_outbox_2");
    expect(s.name).toBe("libsql");
    expect(s.capabilities).toEqual({ batchStatement: true, skipLocked: false, serialWrites: true, keyPrefixClaims: true });
    expect(s.statement([message(1)]).sql).toContain('"app_outbox_2"');
    expect(client.calls).toEqual([]);
  });

  it("validates options with CONFIG errors naming the field", async () => {
    const client = recordingClient();
    const bad: [unknown, string][] = [
      [{ retainDeliveredMs: -1 }, "retainDeliveredMs"],
      [{ retainDeliveredMs: 1.5 }, "retainDeliveredMs"],
      [{ busyRetryMs: "soon" }, "busyRetryMs"],
      [{ table: 7 }, "table"],
      [{ tabel: "outbox" }, "tabel"],
    ];
    for (const [options, field] of bad) {
      const e = expectCode(await caught(() => libsqlStorage(client, options as never)), "CONFIG");
      expect(e.message).toContain(field);
    }
    expectCode(await caught(() => libsqlStorage({} as never)), "CONFIG");
    expect(client.calls).toEqual([]);
  });
});

describe("libsqlStorage: schema", () => {
  it("exports DDL for a table that a migration tool can run, after which migrate() is a no-op", async () => {
    const ddl = libsqlSchema({ table: "my_outbox" });
    expect(ddl.length).toBeGreaterThan(3);
    for (const s of ddl) expect(s).not.toContain(TABLE_PLACEHOLDER);
    expect(ddl.join("\n")).toContain('CREATE TABLE IF NOT EXISTS "my_outbox"');
    expect(ddl.join("\n")).toContain('"my_outbox_counters"');
    expect(ddl.join("\n")).toContain('"my_outbox_migrations"');
    const client = createClient({ url: ":memory:" });
    try {
      await client.batch(ddl, "write");
      await client.batch(ddl, "write"); // idempotent
      const storage = libsqlStorage(client, { table: "my_outbox" });
      await storage.migrate();
      const versions = await client.execute("SELECT version FROM my_outbox_migrations");
      expect(versions.rows.map((r) => Number(r["version"]))).toEqual(SCHEMA_VERSIONS.map((v) => v.version));
      await client.batch([storage.statement([message(1)])], "write");
      expect((await storage.stats()).pending).toBe(1);
    } finally {
      client.close();
    }
  });

  it("migrate is idempotent and safe to run concurrently from two clients on one file", async () => {
    const { url, remove } = tempDir();
    const a = createClient({ url }), b = createClient({ url });
    try {
      const sa = libsqlStorage(a), sb = libsqlStorage(b);
      await Promise.all([sa.migrate(), sb.migrate(), sa.migrate(), sb.migrate()]);
      await sa.migrate();
      const rows = (await a.execute("SELECT version FROM outbox_migrations")).rows;
      expect(rows.map((r) => Number(r["version"]))).toEqual(SCHEMA_VERSIONS.map((v) => v.version));
      const tables = (await a.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")).rows.map((r) => r["name"]);
      expect(tables).toContain("outbox");
      expect(tables).toContain("outbox_counters");
    } finally {
      a.close();
      b.close();
      remove();
    }
  });

  it("migrate runs concurrently on one :memory: client", async () => {
    const client = createClient({ url: ":memory:" });
    try {
      const s = libsqlStorage(client);
      await Promise.all([s.migrate(), libsqlStorage(client).migrate(), s.migrate()]);
      expect((await client.execute("SELECT count(*) AS n FROM outbox_migrations")).rows[0]!["n"]).toBe(SCHEMA_VERSIONS.length);
    } finally {
      client.close();
    }
  });

  it("the real Client and Transaction types are accepted where the structural ones are expected", async () => {
    const f = await libsqlMemoryFixture();
    try {
      const client: Client = f.client;
      const storage = libsqlStorage(client);
      const stmt: InStatement = storage.statement([message(1)]);
      await client.batch([stmt], "write");
      const tx: Transaction = await client.transaction("write");
      await storage.enqueue(tx, [message(2)]);
      await tx.commit();
      expect((await storage.stats()).pending).toBe(2);
    } finally {
      await f.close();
    }
  });
});

describe("libsqlStorage: missing table", () => {
  it("every call on a table that was never migrated is CONFIG saying to call migrate() or install libsqlSchema()", async () => {
    const dir = tempDir();
    for (const url of [":memory:", dir.url]) {
      const client = createClient({ url });
      try {
        const storage = libsqlStorage(client, { table: "never_made" });
        const calls: [string, () => Promise<unknown>][] = [
          ["claim", () => storage.claim({ limit: 1, leaseMs: 1_000 })],
          ["settle", () => storage.settle("t", [{ id: uuidv7(), outcome: "delivered" }])],
          ["hasDue", () => storage.hasDue()],
          ["stats", () => storage.stats()],
          ["listDead", () => storage.listDead({ limit: 1 })],
          ["replayDead", () => storage.replayDead(uuidv7())],
          ["purge", () => storage.purge({ status: "dead", olderThan: 0, limit: 1 })],
        ];
        for (const [what, call] of calls) {
          const e = expectCode(await caught(call), "CONFIG");
          expect(e.message, what).toBe(
            "[edge-outbox:libsql] table never_made does not exist: call storage.migrate() or install the DDL from libsqlSchema()",
          );
          expect(String((e.cause as Error).message)).toMatch(/no such table/);
        }
        const tx = await client.transaction("write");
        expectCode(await caught(storage.enqueue(tx, [message(1)])), "CONFIG");
        tx.close();
        expectCode(await caught(storage.enqueue(client, [message(2)])), "CONFIG");
      } finally {
        client.close();
      }
    }
    dir.remove();
  });
});

describe("libsqlStorage: writes", () => {
  it("statement() joins an atomic batch: a failure after it leaves no message", async () => {
    const f = await libsqlMemoryFixture();
    try {
      const e = await caught(f.client.batch([f.storage.statement([message(1), message(2)]), "INSERT INTO no_such_table VALUES (1)"], "write"));
      expect(e).toBeInstanceOf(Error);
      expect((await f.storage.stats()).pending).toBe(0);
      await f.client.batch([f.storage.statement([])], "write"); // an empty list inserts nothing
      expect((await f.storage.stats()).pending).toBe(0);
    } finally {
      await f.close();
    }
  });

  it("enqueue keeps array order as seq order in one statement, and a rollback leaves nothing", async () => {
    const f = await libsqlFileFixture();
    try {
      const ms = Array.from({ length: 300 }, (_, i) => message(i, { key: i % 3 === 0 ? null : `k${i % 2}` }));
      ms.reverse(); // ids no longer sorted: seq must follow the array, not the id
      const { client, counts } = countingClient(f.client);
      const tx = await client.transaction("write");
      await f.storage.enqueue(tx, ms);
      await f.storage.enqueue(tx, []);
      expect(counts.txExecute).toBe(1);
      await tx.rollback();
      expect((await f.storage.stats()).pending).toBe(0);
      const h = await f.begin();
      await f.storage.enqueue(h.tx, ms);
      await h.commit();
      const claim = await f.storage.claim({ limit: 1000, leaseMs: 10_000 });
      expect(claim.messages.map((m) => m.id)).toEqual(ms.map((m) => m.id));
    } finally {
      await f.close();
    }
  });

  it("one message goes as parameters, several as one JSON array: the same columns either way", async () => {
    const f = await libsqlFileFixture();
    try {
      const sql = libsqlSql("outbox");
      const shapes = (n: number): NewMessage[] => [
        message(n, { key: "k", headers: '{"x-a":"1"}', delayMs: 60_000 }),
        message(n + 1, { payload: JSON.stringify({ s: "ü\u0000-free", n: 1.5 }) }),
      ];
      const single = shapes(1);
      const many = shapes(3);
      for (const m of single) {
        const st = f.storage.statement([m]);
        expect(st.sql).toBe(sql.enqueueOne);
        await f.client.batch([st], "write");
      }
      const st = f.storage.statement(many);
      expect(st.sql).toBe(sql.enqueue);
      await f.client.batch([st], "write");
      const rows = (await f.client.execute(
        "SELECT id, topic, key, payload, headers, status, attempts, available_at - created_at AS delay, typeof(available_at) AS t FROM outbox ORDER BY seq",
      )).rows.map((r) => ({ ...r }));
      const expected = [...single, ...many].map((m) => ({
        id: m.id, topic: m.topic, key: m.key ?? null, payload: m.payload, headers: m.headers, status: "pending", attempts: 0,
        delay: m.delayMs, t: "integer",
      }));
      expect(rows).toEqual(expected);
    } finally {
      await f.close();
    }
  });

  it("a duplicate id is a non-retryable CONFLICT error with the adapter prefix and the driver cause", async () => {
    const f = await libsqlMemoryFixture();
    try {
      const m = message(1);
      await f.client.batch([f.storage.statement([m])], "write");
      const tx = await f.client.transaction("write");
      const e = expectCode(await caught(f.storage.enqueue(tx, [m])), "CONFLICT");
      tx.close();
      expect(e.message).toMatch(/^\[edge-outbox:libsql\] enqueue: id /);
      expect(e.retryable).toBe(false);
      expect((e.cause as { code?: string }).code).toBe("SQLITE_CONSTRAINT");
    } finally {
      await f.close();
    }
  });

  it("enqueue with the client itself is a standalone atomic insert", async () => {
    for (const make of [libsqlMemoryFixture, libsqlFileFixture]) {
      const f = await make();
      try {
        await f.storage.enqueue(f.client, [message(1), message(2)]);
        expect((await f.storage.stats()).pending).toBe(2);
      } finally {
        await f.close();
      }
    }
  });

  it("timestamps come from the database clock", async () => {
    const f = await libsqlMemoryFixture();
    try {
      await f.client.batch([f.storage.statement([message(1, { delayMs: 5_000 })])], "write");
      const row = (await f.client.execute("SELECT created_at, available_at FROM outbox")).rows[0]!;
      expect(Number(row["available_at"]) - Number(row["created_at"])).toBe(5_000);
      expect(Math.abs(Number(row["created_at"]) - Date.now())).toBeLessThan(5_000);
      expect(Number.isInteger(Number(row["created_at"]))).toBe(true);
    } finally {
      await f.close();
    }
  });

  it("works with a client in intMode bigint", async () => {
    const client = createClient({ url: ":memory:", intMode: "bigint" });
    try {
      const s = libsqlStorage(client);
      await s.migrate();
      await client.batch([s.statement([message(1)])], "write");
      const c = await s.claim({ limit: 5, leaseMs: 1_000 });
      expect(typeof c.now).toBe("number");
      expect(typeof c.messages[0]!.seq).toBe("number");
      expect(typeof c.messages[0]!.createdAt).toBe("number");
      expect(await s.settle(c.token, [{ id: c.messages[0]!.id, outcome: "delivered" }])).toEqual({ applied: 1, lost: [] });
      const st = await s.stats();
      expect(st.window.delivered).toBe(1);
      expect(typeof st.window.maxLatencyMs).toBe("number");
    } finally {
      client.close();
    }
  });
});

describe("libsqlStorage: claims and settles", () => {
  it("claimed rows of a key are a prefix of its queue, in seq order", async () => {
    const f = await libsqlMemoryFixture();
    try {
      const [a1, b1, a2, n1, b2, a3] = [
        message(1, { key: "a" }), message(2, { key: "b" }), message(3, { key: "a" }),
        message(4), message(5, { key: "b" }), message(6, { key: "a" }),
      ];
      await f.client.batch([f.storage.statement([a1!, b1!, a2!, n1!, b2!, a3!])], "write");
      const ids = (c: { messages: readonly { id: string }[] }): string[] => c.messages.map((m) => m.id);
      const c1 = await f.storage.claim({ limit: 3, leaseMs: 10_000 });
      expect(ids(c1)).toEqual([a1!.id, b1!.id, a2!.id]);
      // a3 waits behind leased a1/a2, b2 behind b1; the keyless row flows.
      const c2 = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
      expect(ids(c2)).toEqual([n1!.id]);
      await f.storage.settle(c1.token, [
        { id: a1!.id, outcome: "delivered" },
        { id: a2!.id, outcome: "retry", delayMs: 0, error: "again" },
        { id: b1!.id, outcome: "retry", delayMs: 60_000, error: "later" },
      ]);
      // a2 is due again and a3 follows it; b1 backs off and keeps b2 blocked.
      const c3 = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
      expect(ids(c3)).toEqual([a2!.id, a3!.id]);
      expect(c3.messages[0]!.attempts).toBe(2);
      expect(c3.messages[0]!.lastError).toBe("again");
      expect(c3.leaseUntil - c3.now).toBe(10_000);
    } finally {
      await f.close();
    }
  });

  it("settle is one batch round trip on a server client, one locked transaction on a local file", async () => {
    const mem = await libsqlMemoryFixture();
    const file = await libsqlFileFixture();
    try {
      for (const [f, protocol] of [[mem, "http"], [file, "file"]] as const) {
        const { client, counts, reset } = countingClient(f.client, protocol);
        const storage = libsqlStorage(client);
        const ms = [message(1), message(2), message(3), message(4)];
        await f.client.batch([storage.statement(ms)], "write");
        const c = await storage.claim({ limit: 10, leaseMs: 10_000 });
        reset();
        const r = await storage.settle(c.token, [
          { id: ms[0]!.id, outcome: "delivered" },
          { id: ms[1]!.id, outcome: "retry", delayMs: 1_000, error: "503" },
          { id: ms[2]!.id, outcome: "dead", error: "400" },
          { id: ms[3]!.id, outcome: "released" },
        ]);
        expect(r).toEqual({ applied: 4, lost: [] });
        // The not-applied check, counters, one statement per outcome kind; no delivery positions: this storage made
        // the claim, and no row of it has a key.
        expect(counts.statements).toBe(6);
        if (protocol === "http") {
          expect(counts).toMatchObject({ batch: 1, transaction: 0, execute: 0 });
        } else {
          // Local: BEGIN DEFERRED, lock (executeMultiple), one batch, COMMIT (executeMultiple): no network.
          expect(counts).toMatchObject({ batch: 0, transaction: 1, txBatch: 1, txExecute: 0, execute: 0 });
        }
      }
    } finally {
      await mem.close();
      await file.close();
    }
  });

  it("a settle of this storage's own claim names its rows by seq, of another instance's claim by id: the same outcomes, lost ids included", async () => {
    const outcome = async (via: "own" | "other") => {
      const f = await libsqlFileFixture();
      try {
        const { client, sqls, reset } = countingClient(f.client);
        const claimer = libsqlStorage(client);
        const settler = via === "own" ? claimer : libsqlStorage(client);
        const ms = [message(0, { key: "k" }), message(1), message(2), message(3), message(4)];
        await f.client.batch([claimer.statement(ms)], "write");
        const c = await claimer.claim({ limit: 10, leaseMs: 30_000 });
        expect(c.messages.map((m) => m.id)).toEqual(ms.map((m) => m.id));
        // ms[4]'s lease ended and another relay claimed it: this settle of it must not apply.
        await f.client.execute({ sql: "UPDATE outbox SET lease_token = 'another' WHERE id = ?", args: [ms[4]!.id] });
        const unknown = uuidv7();
        reset();
        const r = await settler.settle(c.token, [
          { id: ms[0]!.id, outcome: "delivered" },
          { id: ms[1]!.id, outcome: "retry", delayMs: 60_000, error: "503" },
          { id: ms[2]!.id, outcome: "dead", error: "400" },
          { id: ms[3]!.id, outcome: "released" },
          { id: ms[4]!.id, outcome: "delivered" },
          { id: unknown, outcome: "delivered" },
          { id: ms[0]!.id, outcome: "dead", error: "again" },
        ]);
        const by = sqls[0]!.includes("o.seq = j.value") ? "seq" : sqls[0]!.includes("o.id = j.value") ? "id" : "?";
        // Settled again: the first settle applied (the memo of the claim is gone), so every id is lost now.
        const again = await settler.settle(c.token, [{ id: ms[3]!.id, outcome: "delivered" }]);
        const rows = (await f.client.execute("SELECT id, status, lease_token, attempts, last_error, available_at - created_at > 10000 AS later FROM outbox ORDER BY seq")).rows
          .map((x) => ({ ...x }));
        const positions = (await f.client.execute("SELECT key, seq FROM outbox_positions")).rows.map((x) => ({ ...x }));
        const counters = (await f.client.execute("SELECT sum(delivered) AS d, sum(retried) AS r, sum(dead) AS x FROM outbox_counters")).rows
          .map((x) => ({ ...x }));
        return { by, r, again, rows, positions, counters, ids: ms.map((m) => m.id), seq0: c.messages[0]!.seq, unknown };
      } finally {
        await f.close();
      }
    };
    const own = await outcome("own");
    const other = await outcome("other");
    expect(own.by).toBe("seq");
    expect(other.by).toBe("id");
    for (const o of [own, other]) {
      const [m0, m1, m2, m3, m4] = o.ids;
      expect(o.r).toEqual({ applied: 4, lost: [m4, o.unknown, m0] });
      expect(o.again).toEqual({ applied: 0, lost: [m3] });
      expect(o.rows).toEqual([
        { id: m1, status: "pending", lease_token: null, attempts: 1, last_error: "503", later: 1 },
        { id: m2, status: "dead", lease_token: null, attempts: 1, last_error: "400", later: 1 },
        { id: m3, status: "pending", lease_token: null, attempts: 0, last_error: null, later: 0 },
        { id: m4, status: "pending", lease_token: "another", attempts: 1, last_error: null, later: 1 },
      ]);
      expect(o.positions).toEqual([{ key: "k", seq: o.seq0 }]);
      expect(o.counters).toEqual([{ d: 1, r: 1, x: 1 }]);
    }
  });

  it("two settles of one claim at once, sharing an id: each id applies once, the later settle reports the shared id lost", async () => {
    for (const fixture of [libsqlFileFixture, libsqlMemoryFixture]) {
      const f = await fixture();
      try {
        const ms = [message(1), message(2, { key: "k" }), message(3)];
        await f.client.batch([f.storage.statement(ms)], "write");
        const c = await f.storage.claim({ limit: 10, leaseMs: 30_000 });
        const [a, b, cc] = ms.map((m) => m.id) as [string, string, string];
        const [r1, r2] = await Promise.all([
          f.storage.settle(c.token, [{ id: a, outcome: "delivered" }, { id: b, outcome: "delivered" }]),
          f.storage.settle(c.token, [{ id: b, outcome: "dead", error: "x" }, { id: cc, outcome: "retry", delayMs: 60_000, error: "503" }]),
        ]);
        expect(r1.applied + r2.applied).toBe(3);
        expect([...r1.lost, ...r2.lost]).toEqual([b]);
        const rows = (await f.client.execute("SELECT id, status, last_error FROM outbox ORDER BY seq")).rows.map((x) => ({ ...x }));
        // b went with whichever settle ran first: delivered (deleted) or dead.
        const bRow = rows.find((x) => x["id"] === b);
        expect(bRow === undefined ? r1.lost.length === 0 : bRow["status"] === "dead" && r2.lost.length === 0).toBe(true);
        expect(rows.filter((x) => x["id"] !== b)).toEqual([{ id: cc, status: "pending", last_error: "503" }]);
        // Every id of the claim is settled: settling one again is lost, and changes nothing.
        expect(await f.storage.settle(c.token, [{ id: cc, outcome: "delivered" }])).toEqual({ applied: 0, lost: [cc] });
        expect((await f.client.execute("SELECT count(*) AS n FROM outbox WHERE id = ?", [cc])).rows[0]!["n"]).toBe(1);
      } finally {
        await f.close();
      }
    }
  });

  it("delivered rows are kept with retainDeliveredMs and purged by status", async () => {
    const f = await libsqlFileFixture({ retainDeliveredMs: 60_000 });
    try {
      expect(f.storage.retainDeliveredMs).toBe(60_000);
      const ms = [message(1), message(2), message(3)];
      await f.client.batch([f.storage.statement(ms)], "write");
      const c = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
      await f.storage.settle(c.token, ms.map((m) => ({ id: m.id, outcome: "delivered" as const })));
      const rows = (await f.client.execute("SELECT status, done_at, lease_token FROM outbox")).rows;
      expect(rows.map((r) => r["status"])).toEqual(["delivered", "delivered", "delivered"]);
      for (const r of rows) {
        expect(r["done_at"]).not.toBeNull();
        expect(r["lease_token"]).toBeNull();
      }
      const s = await f.storage.stats();
      expect(s.pending).toBe(0);
      expect(s.window.delivered).toBe(3);
      expect(await f.storage.purge({ status: "dead", olderThan: s.now + 1, limit: 10 })).toBe(0);
      expect(await f.storage.purge({ status: "delivered", olderThan: s.now - 60_000, limit: 10 })).toBe(0);
      expect(await f.storage.purge({ status: "delivered", olderThan: s.now + 1, limit: 2 })).toBe(2);
      expect(await f.storage.purge({ status: "delivered", olderThan: s.now + 1, limit: 2 })).toBe(1);
      expect((await f.client.execute("SELECT count(*) AS n FROM outbox")).rows[0]!["n"]).toBe(0);
    } finally {
      await f.close();
    }
  });

  it("purge drops counter buckets older than 7 days", async () => {
    const f = await libsqlMemoryFixture();
    try {
      const now = (await f.storage.stats()).now;
      await f.client.execute({
        sql: "INSERT INTO outbox_counters (bucket, shard, delivered) VALUES (?, 0, 1), (?, 0, 1)",
        args: [now - 8 * 86_400_000, now - 60_000],
      });
      await f.storage.purge({ status: "dead", olderThan: now, limit: 10 });
      expect((await f.client.execute("SELECT count(*) AS n FROM outbox_counters")).rows[0]!["n"]).toBe(1);
    } finally {
      await f.close();
    }
  });

  it("bad arguments are VALIDATION errors, sent nowhere", async () => {
    const f = await libsqlMemoryFixture();
    try {
      expectCode(await caught(f.storage.claim({ limit: 0, leaseMs: 1_000 })), "VALIDATION");
      expectCode(await caught(f.storage.claim({ limit: 1, leaseMs: -5 })), "VALIDATION");
      expectCode(await caught(f.storage.listDead({ limit: 10, cursor: "1 OR 1=1" })), "VALIDATION");
      expectCode(await caught(f.storage.listDead({ limit: 10, cursor: "-1" })), "VALIDATION");
      expectCode(await caught(f.storage.purge({ status: "pending" as never, olderThan: 0, limit: 1 })), "VALIDATION");
      expectCode(await caught(f.storage.settle("t", [{ id: "x", outcome: "retry", delayMs: -1, error: "" }])), "VALIDATION");
      expectCode(await caught(f.storage.stats({ windowMs: -1 })), "VALIDATION");
      expect(await f.storage.settle("t", [])).toEqual({ applied: 0, lost: [] });
    } finally {
      await f.close();
    }
  });
});

describe("libsqlStorage: replay, ids, due age, scope, wake-ups", () => {
  it("a replayed dead letter re-enters at the tail of its key: not claimable beside a later leased message, then after it", async () => {
    for (const make of [libsqlMemoryFixture, libsqlFileFixture]) {
      const f = await make();
      try {
        const [a1, a2] = [message(1, { key: "k" }), message(2, { key: "k" })];
        await f.client.batch([f.storage.statement([a1!])], "write");
        const c1 = await f.storage.claim({ limit: 1, leaseMs: 10_000 });
        await f.storage.settle(c1.token, [{ id: a1!.id, outcome: "dead", error: "400" }]);
        await f.client.batch([f.storage.statement([a2!])], "write");
        const other = await f.another();
        const c2 = await other.claim({ limit: 10, leaseMs: 10_000 }); // another relay leases a2
        expect(c2.messages.map((m) => m.id)).toEqual([a2!.id]);
        expect(await f.storage.replayDead(a1!.id)).toBe(true);
        expect((await f.storage.claim({ limit: 10, leaseMs: 10_000 })).messages).toEqual([]); // a1 waits behind a2
        expect(await other.settle(c2.token, [{ id: a2!.id, outcome: "delivered" }])).toEqual({ applied: 1, lost: [] });
        const c3 = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
        expect(c3.messages.map((m) => [m.id, m.attempts, m.payload])).toEqual([[a1!.id, 1, { n: 1 }]]);
        expect(c3.messages[0]!.seq).toBeGreaterThan(c2.messages[0]!.seq);
        // The replayed row's new seq is never handed out again once it is gone.
        await f.storage.settle(c3.token, [{ id: a1!.id, outcome: "delivered" }]);
        const a3 = message(3, { key: "k" });
        await f.client.batch([f.storage.statement([a3])], "write");
        const c4 = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
        expect(c4.messages[0]!.seq).toBeGreaterThan(c3.messages[0]!.seq);
      } finally {
        await f.close();
      }
    }
  });

  it("an id a row already has (pending, dead, kept delivered) is CONFLICT, nothing written, the transaction still usable", async () => {
    const f = await libsqlFileFixture({ retainDeliveredMs: 60_000 });
    try {
      const [pending, dead, delivered] = [message(1), message(2), message(3)];
      await f.client.batch([f.storage.statement([dead!, delivered!])], "write");
      const c = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
      await f.storage.settle(c.token, [{ id: dead!.id, outcome: "dead", error: "x" }, { id: delivered!.id, outcome: "delivered" }]);
      await f.client.batch([f.storage.statement([pending!])], "write");
      for (const taken of [pending!, dead!, delivered!]) {
        const fresh = message(10);
        const h = await f.begin();
        const e = expectCode(await caught(f.storage.enqueue(h.tx, [fresh, { ...taken, payload: '{"other":1}' }])), "CONFLICT");
        expect(e.message).toBe(
          `[edge-outbox:libsql] enqueue: id ${taken.id} is already used by a row of table outbox (pending, dead or kept delivered); nothing was written`,
        );
        expect(e.retryable).toBe(false);
        await f.storage.enqueue(h.tx, [fresh]); // the transaction goes on
        await h.commit();
        const rows = (await f.client.execute({ sql: "SELECT id, payload FROM outbox WHERE id IN (?, ?)", args: [fresh.id, taken.id] })).rows;
        expect(rows.map((r) => [r["id"], r["payload"]]).sort()).toEqual([[fresh.id, fresh.payload], [taken.id, taken.payload]].sort());
      }
      // standalone enqueue on the client: the same error, nothing written
      const again = expectCode(await caught(f.storage.enqueue(f.client, [message(20), pending!])), "CONFLICT");
      expect(again.message).toContain(pending!.id);
      expect((await f.storage.stats()).pending).toBe(4);
      // statement() in the caller's batch: the whole batch fails atomically with the driver's constraint error
      const before = (await f.client.execute("SELECT count(*) AS n FROM outbox")).rows[0]!["n"];
      await caught(f.client.batch([f.storage.statement([message(30)]), f.storage.statement([pending!])], "write"));
      expect((await f.client.execute("SELECT count(*) AS n FROM outbox")).rows[0]!["n"]).toBe(before);
      // an id whose row was delivered and deleted is accepted again
      const gone = message(40);
      await f.client.batch([f.storage.statement([gone])], "write");
      await f.client.execute({ sql: "DELETE FROM outbox WHERE id = ?", args: [gone.id] });
      await f.storage.enqueue(f.client, [gone]);
    } finally {
      await f.close();
    }
  });

  it("stats().oldestDueAgeMs counts from when a row became due; delayed and leased rows do not count", async () => {
    const f = await libsqlMemoryFixture();
    try {
      expect((await f.storage.stats()).oldestDueAgeMs).toBeNull();
      await f.client.batch([f.storage.statement([message(1, { delayMs: 60_000 })])], "write");
      const s1 = await f.storage.stats();
      expect(s1.oldestPendingAgeMs).not.toBeNull();
      expect(s1.oldestDueAgeMs).toBeNull(); // delayed: not due
      const due = message(2);
      await f.client.batch([f.storage.statement([due])], "write");
      await f.client.execute({ sql: "UPDATE outbox SET available_at = available_at - 7000 WHERE id = ?", args: [due.id] });
      const s2 = await f.storage.stats();
      expect(s2.oldestDueAgeMs).toBeGreaterThanOrEqual(7_000);
      expect(s2.oldestDueAgeMs).toBeLessThan(12_000);
      await f.storage.claim({ limit: 10, leaseMs: 10_000 }); // leased: no longer due
      expect((await f.storage.stats()).oldestDueAgeMs).toBeNull();
    } finally {
      await f.close();
    }
  });

  it("scope is libsql:<table>", () => {
    const client = recordingClient();
    expect(libsqlStorage(client).scope).toBe("libsql:outbox");
    expect(libsqlStorage(client, { table: "jobs" }).scope).toBe("libsql:jobs");
    expect(client.calls).toEqual([]);
  });

  it("subscribe wakes in-process at commit of a begin() handle, a standalone enqueue and a replay; not before commit", async () => {
    const f = await libsqlFileFixture({ watchIntervalMs: 0 });
    const stop = new AbortController();
    try {
      let wakes = 0;
      const relayStorage = await f.another(); // another storage, same file; its wake channel is its own client's
      const sameClient = libsqlStorage(f.client, { watchIntervalMs: 0 });
      await sameClient.subscribe(() => wakes++, stop.signal);
      const h = await f.storage.begin();
      await f.storage.enqueue(h, [message(1)]);
      await sleep(5);
      expect(wakes).toBe(0); // not committed yet
      await h.commit();
      await sleep(0);
      expect(wakes).toBe(1);
      const quiet = await f.storage.begin(); // a transaction without an enqueue wakes nobody
      await quiet.commit();
      await f.storage.enqueue(f.client, [message(2)]);
      await sleep(0);
      expect(wakes).toBe(2);
      const c = await relayStorage.claim({ limit: 1, leaseMs: 10_000 });
      await relayStorage.settle(c.token, [{ id: c.messages[0]!.id, outcome: "dead", error: "x" }]);
      expect(await f.storage.replayDead(c.messages[0]!.id)).toBe(true);
      await sleep(0);
      expect(wakes).toBe(3);
      stop.abort();
      await f.storage.enqueue(f.client, [message(3)]);
      await sleep(0);
      expect(wakes).toBe(3); // unsubscribed
    } finally {
      stop.abort();
      await f.close();
    }
  });

  it("subscribe's watch sees commits from another connection and from the caller's own batches", async () => {
    const f = await libsqlFileFixture();
    const stop = new AbortController();
    try {
      const wakes: number[] = [];
      const watcher = libsqlStorage(f.connect(), { watchIntervalMs: 20 });
      await watcher.subscribe(() => wakes.push(Date.now()), stop.signal);
      await sleep(60);
      expect(wakes).toEqual([]); // nothing committed: no wake-up
      const t0 = Date.now();
      await f.client.batch([f.storage.statement([message(1)])], "write"); // another client: invisible in-process
      const deadline = Date.now() + 2_000;
      while (wakes.length === 0 && Date.now() < deadline) await sleep(5);
      expect(wakes.length).toBe(1);
      expect(wakes[0]! - t0).toBeLessThan(1_000);
      // deliveries delete rows but never move the sequence head: no spurious wake-up
      const c = await f.storage.claim({ limit: 5, leaseMs: 10_000 });
      await f.storage.settle(c.token, c.messages.map((m) => ({ id: m.id, outcome: "delivered" as const })));
      await sleep(100);
      expect(wakes.length).toBe(1);
      stop.abort();
      await f.client.batch([f.storage.statement([message(2)])], "write");
      await sleep(100);
      expect(wakes.length).toBe(1);
    } finally {
      stop.abort();
      await f.close();
    }
  });

  it("watchIntervalMs defaults to 0 on servers and is validated", async () => {
    const client = recordingClient();
    expectCode(await caught(() => libsqlStorage(client, { watchIntervalMs: -1 })), "CONFIG");
    const remote = { ...recordingClient(), protocol: "http" };
    const stop = new AbortController();
    await libsqlStorage(remote).subscribe(() => {}, stop.signal); // no watch: nothing is sent
    stop.abort();
    expect(remote.calls).toEqual([]);
  });
});

describe("libsqlStorage: network failures", () => {
  it("a refused or reset connection over http:// is a retryable STORAGE error", async () => {
    const { createServer } = await import("node:net");
    const reset = createServer((socket) => socket.resetAndDestroy());
    await new Promise<void>((r) => reset.listen(0, "127.0.0.1", () => r()));
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, "127.0.0.1", () => r()));
    const closedPort = (closed.address() as { port: number }).port;
    await new Promise<void>((r) => closed.close(() => r())); // nothing listens there now
    try {
      for (const port of [(reset.address() as { port: number }).port, closedPort]) {
        const client = createClient({ url: `http://127.0.0.1:${port}` });
        try {
          const storage = libsqlStorage(client, { busyRetryMs: 0 });
          for (const call of [() => storage.claim({ limit: 1, leaseMs: 1_000 }), () => storage.stats(), () => storage.enqueue(client, [message(1)])]) {
            const e = expectCode(await caught(call), "STORAGE");
            expect(e.message).toMatch(/^\[edge-outbox:libsql\] \w+ failed: fetch failed/);
            expect(e.retryable).toBe(true);
          }
        } finally {
          client.close();
        }
      }
    } finally {
      reset.close();
    }
  });

  it("workerd's and browsers' fetch failures are retryable too", () => {
    for (const e of [
      new Error("Network connection lost."),
      new TypeError("Failed to fetch"),
      new TypeError("fetch failed", { cause: Object.assign(new Error("other side closed"), { code: "UND_ERR_SOCKET" }) }),
      new Error("D1_ERROR: Network connection lost."),
    ]) {
      expect(isRetryableError(e), e.message).toBe(true);
    }
    expect(isRetryableError(new Error("SQLITE_ERROR: near \"x\": syntax error"))).toBe(false);
  });
});

describe("libsqlStorage: purge cost", () => {
  /** Wraps a client, recording every statement it is sent (batches included). */
  function recordingStatements(inner: Client): { client: LibsqlClient; sent: LibsqlStatement[] } {
    const sent: LibsqlStatement[] = [];
    const client: LibsqlClient = {
      protocol: "http", // plain batches, so every statement goes through batch()
      execute: (s) => {
        sent.push(s);
        return inner.execute(s);
      },
      batch: (s, m) => {
        sent.push(...s);
        return inner.batch(s, m);
      },
      transaction: (m) => inner.transaction(m),
    };
    return { client, sent };
  }

  it("a purge chunk reads its status's (done_at, seq) index: no table scan, no sort", async () => {
    const f = await libsqlMemoryFixture();
    try {
      const { client, sent } = recordingStatements(f.client);
      const storage = libsqlStorage(client);
      const purges: [string, LibsqlStatement][] = [];
      for (const status of ["dead", "delivered"] as const) {
        sent.length = 0;
        await storage.purge({ status, olderThan: Date.now(), limit: 1_000 });
        const purge = sent.find((s) => s.sql.startsWith('DELETE FROM "outbox" WHERE seq IN'));
        expect(purge, "the purge statement").toBeDefined();
        purges.push([status, purge!]);
      }
      // EXPLAIN only after the purges: libsql 0.5 resets an EXPLAIN statement only when it is garbage-collected, and
      // until then a commit on the same connection fails with "SQL statements in progress".
      for (const [status, purge] of purges) {
        const plan = (await f.client.execute({ sql: `EXPLAIN QUERY PLAN ${purge.sql}`, args: purge.args })).rows.map((r) => String(r["detail"]));
        expect(plan.join(" | "), status).toMatch(new RegExp(`USING (COVERING )?INDEX outbox_${status}_done \\(done_at<\\?\\)`));
        expect(plan.join(" | "), status).not.toMatch(/TEMP B-TREE|SCAN outbox(?! USING)/);
      }
    } finally {
      await f.close();
    }
  });

  it("schema versions 2 and 3 upgrade a populated version-1 table in place", async () => {
    const client = createClient({ url: ":memory:" });
    try {
      const v1 = [MIGRATIONS_TABLE_DDL, ...SCHEMA_V1.statements, recordVersionSql(1)].map((s) => renderSql(s, "outbox"));
      await client.batch(v1, "write");
      const old = libsqlStorage(client, { retainDeliveredMs: 60_000 });
      const ms = Array.from({ length: 30 }, (_, i) => message(i, { key: i % 2 ? "k" : null }));
      await client.batch([old.statement(ms)], "write");
      // Half of the first 20 delivered (kept: retention), half dead, as a version-1 relay left them (this code's
      // settle needs version 3's positions table, so the rows are written directly).
      await client.execute(`UPDATE outbox SET status = CASE seq % 2 WHEN 0 THEN 'delivered' ELSE 'dead' END,
        done_at = ${Date.now() - 1_000}, attempts = 1, last_error = CASE seq % 2 WHEN 0 THEN NULL ELSE 'x' END WHERE seq <= 20`);
      const before = (await client.execute("SELECT * FROM outbox ORDER BY seq")).rows;

      await old.migrate();
      const versions = (await client.execute("SELECT version FROM outbox_migrations ORDER BY version")).rows.map((r) => Number(r["version"]));
      expect(versions).toEqual([1, 2, 3]);
      const tables = (await client.execute("SELECT name FROM sqlite_master WHERE type = 'table'")).rows.map((r) => r["name"]);
      expect(tables).toContain("outbox_positions");
      const indexes = (await client.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'outbox'")).rows.map((r) => r["name"]);
      expect(indexes).toContain("outbox_dead_done");
      expect(indexes).toContain("outbox_delivered_done");
      expect(indexes).not.toContain("outbox_done");
      expect((await client.execute("SELECT * FROM outbox ORDER BY seq")).rows).toEqual(before);
      const now = (await old.stats()).now;
      expect(await old.purge({ status: "dead", olderThan: now + 1, limit: 100 })).toBe(10);
      expect(await old.purge({ status: "delivered", olderThan: now + 1, limit: 100 })).toBe(10);
      expect((await old.stats()).pending).toBe(10);
      // The pending rows of key k flow, and their positions start with the first delivery after the upgrade.
      const c = await old.claim({ limit: 100, leaseMs: 10_000 });
      const k = c.messages.filter((m) => m.key === "k");
      expect(k.length).toBe(5);
      expect(k.map((m) => m.prevSeq)).toEqual([null, null, null, null, null]);
      await old.settle(c.token, c.messages.map((m) => m.id === k[0]!.id ? { id: m.id, outcome: "delivered" as const } : { id: m.id, outcome: "released" as const }));
      const next = await old.claim({ limit: 100, leaseMs: 10_000 });
      expect(next.messages.filter((m) => m.key === "k").map((m) => m.prevSeq)).toEqual([k[0]!.seq, k[0]!.seq, k[0]!.seq, k[0]!.seq]);
      await old.migrate(); // idempotent
    } finally {
      client.close();
    }
  });
});

describe("libsqlStorage: busy databases", () => {
  it("isBusyError recognises what @libsql/client 0.18 throws", () => {
    expect(isBusyError({ code: "SQLITE_BUSY", rawCode: 5 })).toBe(true);
    expect(isBusyError({ code: "SQLITE_LOCKED" })).toBe(true);
    expect(isBusyError({ code: "TRANSACTION_ACTIVE" })).toBe(true);
    expect(isBusyError({ code: "SQLITE_UNKNOWN", extendedCode: "SQLITE_BUSY_SNAPSHOT" })).toBe(true);
    expect(isBusyError({ code: "SQLITE_CONSTRAINT", rawCode: 2067 })).toBe(false);
    expect(isBusyError(new Error("x"))).toBe(false);
  });

  it("a claim from a second connection waits asynchronously while a write transaction is open, then succeeds", async () => {
    const f = await libsqlFileFixture();
    try {
      const m = message(1);
      await f.storage.enqueue(f.client, [m]);
      const other = f.connect();
      const relayStorage = libsqlStorage(other);
      const holder = await f.client.transaction("write");
      await holder.execute("INSERT INTO outbox_counters (bucket, shard) VALUES (1, 1)");

      let ticks = 0;
      const timer = setInterval(() => ticks++, 5);
      let done = false;
      const claimP = relayStorage.claim({ limit: 10, leaseMs: 10_000 }).finally(() => (done = true));
      await sleep(150);
      expect(done).toBe(false);
      expect(ticks).toBeGreaterThan(5); // the event loop kept running while the claim retried
      await holder.commit();
      const claim = await claimP;
      clearInterval(timer);
      expect(claim.messages.map((x) => x.id)).toEqual([m.id]);

      // The relay's client is healthy after its busy retries: nothing was left in progress on its connections.
      expect(await relayStorage.settle(claim.token, [{ id: m.id, outcome: "delivered" }])).toEqual({ applied: 1, lost: [] });
      await other.execute("INSERT INTO outbox_counters (bucket, shard) VALUES (2, 2)"); // autocommit
      const seen = await f.client.execute("SELECT count(*) AS n FROM outbox_counters WHERE shard = 2");
      expect(seen.rows[0]!["n"]).toBe(1);
      const tx = await other.transaction("write");
      await tx.execute("INSERT INTO outbox_counters (bucket, shard) VALUES (3, 3)");
      await tx.commit();
    } finally {
      await f.close();
    }
  });

  it("busy errors surface as retryable STORAGE errors once the retry budget is spent", async () => {
    const f = await libsqlFileFixture();
    try {
      const other = f.connect();
      const impatient = libsqlStorage(other, { busyRetryMs: 0 });
      const patient = libsqlStorage(other, { busyRetryMs: 100 });
      await impatient.hasDue(); // mode probe done before the lock is taken
      const holder = await f.client.transaction("write");
      await holder.execute("INSERT INTO outbox_counters (bucket, shard) VALUES (1, 1)");
      try {
        for (const [what, p] of [
          ["claim", () => impatient.claim({ limit: 1, leaseMs: 1_000 })],
          ["settle", () => impatient.settle("t", [{ id: uuidv7(), outcome: "delivered" }])],
          ["purge", () => impatient.purge({ status: "dead", olderThan: 0, limit: 1 })],
          ["replayDead", () => impatient.replayDead(uuidv7())],
          ["migrate", () => impatient.migrate()],
          ["begin", () => impatient.begin()],
          ["enqueue", () => impatient.enqueue(other, [message(1)])],
        ] as const) {
          const e = expectCode(await caught(p()), "STORAGE");
          expect(e.retryable).toBe(true);
          expect(e.message).toContain(`[edge-outbox:libsql] ${what} failed: SQLITE_BUSY`);
          expect((e.cause as { code?: string }).code).toBe("SQLITE_BUSY");
        }
        // enqueue inside the caller's context never retries, even with a budget.
        const t0 = Date.now();
        expectCode(await caught(patient.enqueue(other, [message(2)])), "STORAGE");
        expect(Date.now() - t0).toBeLessThan(50);
        const t1 = Date.now();
        expectCode(await caught(patient.claim({ limit: 1, leaseMs: 1_000 })), "STORAGE");
        expect(Date.now() - t1).toBeGreaterThanOrEqual(30);
        // Reads still work while a writer holds the lock.
        expect(await impatient.hasDue()).toBe(false);
      } finally {
        await holder.commit();
      }
      // Nothing was poisoned: every call works once the lock is free.
      await impatient.enqueue(other, [message(3)]);
      const c = await impatient.claim({ limit: 5, leaseMs: 1_000 });
      expect(c.messages).toHaveLength(1);
      expect((await impatient.settle(c.token, [{ id: c.messages[0]!.id, outcome: "delivered" }])).applied).toBe(1);
    } finally {
      await f.close();
    }
  });

  it("begin() waits for the lock asynchronously and gives a working write transaction", async () => {
    const f = await libsqlFileFixture();
    try {
      const other = f.connect();
      const s2 = libsqlStorage(other);
      const holder = await f.storage.begin();
      await f.storage.enqueue(holder, [message(1)]);
      let ticks = 0;
      const timer = setInterval(() => ticks++, 5);
      const p = s2.begin();
      await sleep(100);
      expect(ticks).toBeGreaterThan(5);
      await holder.commit();
      const tx = await p;
      clearInterval(timer);
      await s2.enqueue(tx, [message(2)]);
      await tx.commit();
      expect((await f.storage.stats()).pending).toBe(2);
    } finally {
      await f.close();
    }
  });

  it("on :memory:, TRANSACTION_ACTIVE is retryable and retried until the transaction ends", async () => {
    const f = await libsqlMemoryFixture();
    try {
      await f.storage.enqueue(f.client, [message(1)]);
      const holder = await f.client.transaction("write");
      const e = expectCode(await caught(libsqlStorage(f.client, { busyRetryMs: 0 }).claim({ limit: 1, leaseMs: 1_000 })), "STORAGE");
      expect(e.retryable).toBe(true);
      expect((e.cause as { code?: string }).code).toBe("TRANSACTION_ACTIVE");
      const p = f.storage.claim({ limit: 1, leaseMs: 1_000 });
      await sleep(50);
      await holder.commit();
      expect((await p).messages).toHaveLength(1);
    } finally {
      await f.close();
    }
  });
});

storageConformance({ describe, it, expect }, { name: "libsql :memory:", create: () => libsqlMemoryFixture(), semantics: 2, deliveryPositions: true });
storageConformance({ describe, it, expect }, { name: "libsql file", create: () => libsqlFileFixture(), semantics: 2, deliveryPositions: true });

describe("libSQL local file: this process's relay-side writes take turns and commit together", () => {
  /** A fresh file with table `w` (`columns`), the lock statement runWrite takes, and the fixture closed after `use`. */
  async function withTable(columns: string, use: (f: Awaited<ReturnType<typeof libsqlFileFixture>>, lock: string) => Promise<void>) {
    const f = await libsqlFileFixture();
    try {
      await f.client.execute(`CREATE TABLE w (${columns})`);
      await use(f, libsqlSql("outbox").lock);
    } finally {
      await f.close();
    }
  }

  it("concurrent writes on one client never meet as SQLITE_BUSY; those queued together share one commit, each in its own savepoint", () =>
    withTable("k TEXT PRIMARY KEY", async (f, lock) => {
      const write = (...keys: string[]) => runWrite(f.client, keys.map((k) => ({ sql: "INSERT INTO w (k) VALUES (?)", args: [k] })), lock);
      // Issued at once: they queue and go in one transaction. Without the queue, each would open its own
      // transaction on its own pooled connection and all but one fail with BUSY.
      const outcomes = await Promise.allSettled([write("a"), write("b1", "b2"), write("c1", "a"), write("d"), write("e")]);
      expect(outcomes.map((o) => o.status)).toEqual(["fulfilled", "fulfilled", "rejected", "fulfilled", "fulfilled"]);
      expect(String((outcomes[2] as PromiseRejectedResult).reason)).toMatch(/UNIQUE constraint failed/);
      // The failed write was rolled back alone, its first statement too ("c1"); its neighbours were committed.
      const rows = await f.client.execute("SELECT k FROM w ORDER BY k");
      expect(rows.rows.map((r) => r["k"])).toEqual(["a", "b1", "b2", "d", "e"]);
      // 40 writes at once (a relay's claims and settles, many relays on one client): all apply, none is BUSY.
      const many = await Promise.allSettled(Array.from({ length: 40 }, (_, i) => write(`m${i}`)));
      expect(many.filter((o) => o.status === "rejected")).toEqual([]);
      expect(Number((await f.client.execute("SELECT count(*) AS n FROM w")).rows[0]!["n"])).toBe(45);
    }));

  it("writes issued in the same turn of the event loop (a relay's claim ahead and the settle of the rows it just sent) share one transaction, in the order issued", () =>
    withTable("k TEXT PRIMARY KEY, at INTEGER", async (f, lock) => {
      let transactions = 0;
      const open = f.client.transaction.bind(f.client);
      f.client.transaction = ((mode) => (transactions++, open(mode))) as typeof f.client.transaction;
      const write = (k: string) =>
        runWrite(f.client, [{ sql: "INSERT INTO w (k, at) VALUES (?, (SELECT count(*) FROM w))", args: [k] }], lock);
      const first = write("claim");
      // The settle is issued a few promise hops later, as the relay's is (a send resolves, then its outcome settles).
      for (let i = 0; i < 5; i++) await Promise.resolve();
      const second = write("settle");
      await Promise.all([first, second]);
      expect(transactions).toBe(1);
      const rows = await f.client.execute("SELECT k, at FROM w ORDER BY at");
      expect(rows.rows.map((r) => [r["k"], Number(r["at"])])).toEqual([["claim", 0], ["settle", 1]]);
      // A write issued once the queue is idle again opens a transaction of its own.
      await write("later");
      expect(transactions).toBe(2);
    }));

  /** A fresh file holding `count` messages over `keys` keys (message i keyed `k<i % keys>`); closed after `use`. */
  async function withKeyedBacklog(count: number, keys: number, use: (f: Awaited<ReturnType<typeof libsqlFileFixture>>, sent: NewMessage[]) => Promise<void>) {
    const f = await libsqlFileFixture();
    try {
      const sent: NewMessage[] = Array.from({ length: count }, (_, i) => message(i, { key: `k${i % keys}` }));
      for (let i = 0; i < sent.length; i += 500) await f.client.batch([f.storage.statement(sent.slice(i, i + 500))], "write");
      await use(f, sent);
    } finally {
      await f.close();
    }
  }

  it("a relay over a few deep keys: the claim that waits for the keys a settle frees is made with that settle and joins its commit (one commit per settle, not two); every row once, keys in order", () =>
    withKeyedBacklog(1_200, 4, async (f, sent) => {
      let transactions = 0;
      const open = f.client.transaction.bind(f.client);
      f.client.transaction = ((mode) => (transactions++, open(mode))) as typeof f.client.transaction;
      const calls = { claims: 0, settles: 0 };
      const storage = {
        ...f.storage,
        claim: (o: Parameters<typeof f.storage.claim>[0]) => (calls.claims++, f.storage.claim(o)),
        settle: (t: string, s: Parameters<typeof f.storage.settle>[1]) => (calls.settles++, f.storage.settle(t, s)),
      };
      const got = new Map<string, string[]>();
      const transport = functionTransport((m) => void got.set(m.key!, [...(got.get(m.key!) ?? []), m.id]));
      const report = await createRelay({ outbox: createOutbox({ storage }), transport, batchSize: 100, concurrency: 8 }).drain({ budgetMs: 30_000 });
      expect(report).toMatchObject({ delivered: 1_200, released: 0, more: false });
      for (const key of ["k0", "k1", "k2", "k3"]) expect(got.get(key)).toEqual(sent.filter((m) => m.key === key).map((m) => m.id));
      // Every claim but the first, its probe ahead and the drain's last (which confirms nothing is left) shares a
      // settle's commit: about one transaction per settle (25 for 12 settles when each claim waited for its settle).
      expect(calls.claims).toBeGreaterThanOrEqual(12);
      expect(transactions).toBeLessThanOrEqual(calls.settles + 3);
    }));

  it("a relay over many keys of one row per claim: after a claim ahead finds nothing, no more empty claims (each walks every pending row holding the writer); the keys a settle frees are claimed with it", () =>
    withKeyedBacklog(2_000, 100, async (f) => {
      const claims: number[] = [];
      const storage = { ...f.storage, claim: (o: Parameters<typeof f.storage.claim>[0]) => f.storage.claim(o).then((c) => (claims.push(c.messages.length), c)) };
      const report = await createRelay({ outbox: createOutbox({ storage }), transport: functionTransport(() => {}), batchSize: 100, concurrency: 8 })
        .drain({ budgetMs: 30_000 });
      expect(report).toMatchObject({ delivered: 2_000, more: false });
      // One row of each of the 100 keys per claim: 20 full claims; the first claim ahead, the one made with the last
      // settle and the drain's last find nothing (every other claim did before: 21 of 41).
      expect(claims.filter((n) => n === 0).length, claims.join(",")).toBeLessThanOrEqual(3);
    }));

  it("a write of another connection (your own transaction) still meets a queued write as SQLITE_BUSY (the caller retries), and the queue moves on after it", () =>
    withTable("k TEXT PRIMARY KEY", async (f, lock) => {
      const other = f.connect();
      const tx = await other.transaction("write");
      await tx.execute("INSERT INTO w (k) VALUES ('held')");
      const e = await caught(runWrite(f.client, [{ sql: "INSERT INTO w (k) VALUES ('x')", args: [] }], lock));
      expect(isBusyError(e), String(e)).toBe(true);
      await tx.commit();
      await runWrite(f.client, [{ sql: "INSERT INTO w (k) VALUES ('x')", args: [] }], lock); // the queue is not stuck
      expect((await f.client.execute("SELECT k FROM w ORDER BY k")).rows.map((r) => r["k"])).toEqual(["held", "x"]);
    }));
});
