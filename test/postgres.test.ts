// The Postgres storage on the machine's PostgreSQL server: the conformance suite, then what is specific to Postgres
// (structural types, hostile names, migrations, commit-order locks, errors and dropped connections).
import { connect as netConnect, createServer, type Socket } from "node:net";
import postgres from "postgres";
import { describe, expect, it } from "vitest";
import {
  advisoryLockKey,
  type PostgresClient,
  type PostgresExecutor,
  type PostgresLockClient,
  type PostgresReservedConnection,
  postgresSchema,
  postgresStorage,
} from "../adapters/postgres/mod.ts";
import { isConnectionError, isRetryableError } from "../adapters/postgres/client.ts";
import { ADVISORY_KEY_SQL } from "../adapters/postgres/lock.ts";
import {
  CLAIM_CONTINUE_FUNCTION_DDL,
  CLAIM_FUNCTION_DDL,
  LATEST_SCHEMA_VERSION,
  MAX_TABLE_NAME_LENGTH,
  MIGRATIONS_TABLE_DDL,
  recordVersionSql,
  renderSql,
  SCHEMA_VERSIONS,
  TABLE_PLACEHOLDER,
} from "../adapters/postgres/schema.ts";
import { postgresSql } from "../adapters/postgres/sql.ts";
import { CLAIM_CONTINUE_FUNCTION_V9, CLAIM_FUNCTION_V9 } from "./fixtures/postgres-claim-v9.ts";
import { createOutbox, createRelay } from "../mod.ts";
import { recordingTransport } from "../adapters/memory/mod.ts";
import { isOutboxError, type OutboxError, type OutboxErrorCode } from "../src/errors.ts";
import { type NewMessage, uuidv7 } from "../src/message.ts";
import { storageConformance } from "../src/testing/mod.ts";
import { connect, PG_URL, postgresFixture, randomSuffix, reservedTransaction, type Sql, START_HINT } from "./postgres-fixtures.ts";

// ---- type level: the real driver types fit the structural ones (checked by tsc -p tsconfig.test.json) ----
type Assignable<T, U extends T> = U;
export type SqlIsClient = Assignable<PostgresClient, postgres.Sql>;
export type TypedSqlIsClient = Assignable<PostgresClient, postgres.Sql<{ bigint: bigint }>>;
export type SqlIsLockClient = Assignable<PostgresLockClient, postgres.Sql>;
export type SqlIsExecutor = Assignable<PostgresExecutor, postgres.Sql>;
export type TransactionSqlIsExecutor = Assignable<PostgresExecutor, postgres.TransactionSql>;
export type ReservedSqlIsExecutor = Assignable<PostgresExecutor, postgres.ReservedSql>;
export type ReservedSqlIsReservedConnection = Assignable<PostgresReservedConnection, postgres.ReservedSql>;

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

/** A fake postgres.js client that records every call and never touches a database. */
function recordingClient(): PostgresClient & PostgresLockClient & { calls: string[] } {
  const calls: string[] = [];
  const no = (what: string) => (...args: unknown[]): never => {
    calls.push(`${what} ${JSON.stringify(args)}`);
    throw new Error("recording client: no database");
  };
  const fn = Object.assign((...args: unknown[]) => no("tag")(...args), {
    calls,
    unsafe: no("unsafe"),
    begin: no("begin"),
    reserve: no("reserve"),
  });
  return fn as unknown as PostgresClient & PostgresLockClient & { calls: string[] };
}

/** Waits until `check` is true (polling), failing after `ms`. */
async function until(check: () => Promise<boolean> | boolean, ms = 10_000, what = "condition"): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** Whether a backend of `appName` is waiting on a lock (advisory or row). */
async function waitingOnLock(admin: Sql, appName: string): Promise<boolean> {
  const rows = await admin`select count(*)::int as n from pg_stat_activity where application_name = ${appName} and wait_event_type = 'Lock'`;
  return rows[0]!["n"] > 0;
}

storageConformance({ describe, it, expect }, { name: "postgres", create: () => postgresFixture(), semantics: 2, deliveryPositions: true });

describe("postgresStorage: configuration", () => {
  it("rejects hostile table and schema names with CONFIG before any SQL is sent", async () => {
    const client = recordingClient();
    const hostile = ["outbox; drop table x", 'out"box', "out'box", "", "1outbox", "out box", "outbox--", "outbox/*", "é", "a".repeat(64)];
    for (const table of [...hostile, "a".repeat(MAX_TABLE_NAME_LENGTH + 1)]) {
      const e = expectCode(await caught(() => postgresStorage(client, { table })), "CONFIG");
      expect(e.message).toContain("table");
      expectCode(await caught(() => postgresSchema({ table })), "CONFIG");
    }
    for (const schema of hostile) {
      const e = expectCode(await caught(() => postgresStorage(client, { schema })), "CONFIG");
      expect(e.message).toContain("schema");
      expectCode(await caught(() => postgresSchema({ schema })), "CONFIG");
    }
    expectCode(await caught(() => postgresSql({ schema: "public", table: "x; drop table y" })), "CONFIG");
    expect(client.calls).toEqual([]);
  });

  it("accepts plain identifiers up to the length limit; constructing sends nothing", () => {
    const client = recordingClient();
    const s = postgresStorage(client, { table: "a".repeat(MAX_TABLE_NAME_LENGTH), schema: "App_2" });
    expect(s.table).toBe("a".repeat(MAX_TABLE_NAME_LENGTH));
    expect(s.schema).toBe("App_2");
    expect(s.name).toBe("postgres");
    expect(s.capabilities).toEqual({ batchStatement: false, skipLocked: true, serialWrites: false, keyPrefixClaims: true, continueClaims: true });
    expect(s.scope).toBe(`postgres:App_2.${"a".repeat(MAX_TABLE_NAME_LENGTH)}`);
    expect(postgresStorage(client).scope).toBe("postgres:public.outbox");
    expect(postgresStorage(client).table).toBe("outbox");
    expect(postgresStorage(client).schema).toBe("public");
    expect(client.calls).toEqual([]);
  });

  it("validates options with CONFIG errors naming the field, and refuses a non-client", async () => {
    const client = recordingClient();
    const bad: [unknown, string][] = [
      [{ retainDeliveredMs: -1 }, "retainDeliveredMs"],
      [{ busyRetryMs: "soon" }, "busyRetryMs"],
      [{ table: 7 }, "table"],
      [{ tabel: "outbox" }, "tabel"],
      [{ notify: "yes" }, "notify"],
    ];
    for (const [options, field] of bad) {
      const e = expectCode(await caught(() => postgresStorage(client, options as never)), "CONFIG");
      expect(e.message).toContain(field);
    }
    expectCode(await caught(() => postgresStorage({} as never)), "CONFIG");
    expect(client.calls).toEqual([]);
  });

  it("has no statement(): capabilities.batchStatement is false and outbox.statement() throws CONFIG", async () => {
    const client = recordingClient();
    const storage = postgresStorage(client);
    expect(storage.statement).toBe(undefined);
    expect(storage.capabilities.batchStatement).toBe(false);
    const outbox = createOutbox({ storage });
    const e = expectCode(await caught(() => outbox.statement("test.event", { n: 1 })), "CONFIG");
    expect(e.message).toContain("postgres");
    expect(client.calls).toEqual([]);
  });

  it("the real Sql, TransactionSql and ReservedSql work where the structural types are expected", async () => {
    const f = await postgresFixture();
    try {
      const sql: postgres.Sql = f.sql;
      const storage = postgresStorage(sql, { schema: f.schema });
      await sql.begin(async (tx: postgres.TransactionSql) => {
        await storage.enqueue(tx, [message(1)]);
      });
      const reserved: postgres.ReservedSql = await sql.reserve();
      try {
        await reserved`begin`;
        await storage.enqueue(reserved, [message(2)]);
        await reserved`commit`;
      } finally {
        reserved.release();
      }
      expectCode(await caught(storage.enqueue(sql, [message(3)])), "CONFIG"); // the pool: refused
      await postgresStorage(sql, { schema: f.schema, standaloneEnqueue: true }).enqueue(sql, [message(3)]); // opted in
      expect((await storage.stats()).pending).toBe(3);
    } finally {
      await f.close();
    }
  });
});

describe("postgresStorage: schema and migrations", () => {
  it("exports DDL a migration tool can run (idempotent), after which migrate() is a no-op", async () => {
    const schema = `eo_test_ddl_${randomSuffix()}`;
    const ddl = postgresSchema({ table: "my_outbox", schema });
    for (const s of ddl) expect(s).not.toContain(TABLE_PLACEHOLDER);
    const all = ddl.join("\n");
    expect(all).toContain(`CREATE SCHEMA IF NOT EXISTS "${schema}"`);
    expect(all).toContain(`CREATE TABLE IF NOT EXISTS "${schema}"."my_outbox"`);
    expect(all).toContain(`"${schema}"."my_outbox_counters"`);
    expect(all).toContain(`"${schema}"."my_outbox_migrations"`);
    expect(postgresSchema({ table: "o" }).join("\n")).not.toContain("CREATE SCHEMA");
    const sql = connect(`eo-test-ddl-${randomSuffix()}`, { max: 2 });
    try {
      for (let i = 0; i < 2; i++) {
        await sql.begin(async (tx) => {
          for (const s of ddl) await tx.unsafe(s);
        });
      }
      const storage = postgresStorage(sql, { table: "my_outbox", schema });
      await storage.migrate();
      const versions = await sql.unsafe(`SELECT version FROM "${schema}".my_outbox_migrations`);
      expect(versions.map((r) => r["version"])).toEqual(SCHEMA_VERSIONS.map((v) => v.version));
      expect(LATEST_SCHEMA_VERSION).toBe(10);
      await sql.begin((tx) => storage.enqueue(tx, [message(1)]));
      expect((await storage.stats()).pending).toBe(1);
    } finally {
      await sql.unsafe(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => {});
      await sql.end({ timeout: 5 });
    }
  });

  it("migrate creates the schema, and is safe when several processes migrate at once", async () => {
    const schema = `eo_test_mig_${randomSuffix()}`;
    const app = `eo-test-mig-${randomSuffix()}`;
    const clients = [connect(app, { max: 1 }), connect(app, { max: 1 }), connect(app, { max: 1 }), connect(app, { max: 1 })];
    try {
      await Promise.all(clients.map((c) => postgresStorage(c, { schema }).migrate()));
      await Promise.all(clients.map((c) => postgresStorage(c, { schema, table: "second" }).migrate()));
      const a = clients[0]!;
      const tables = await a`select table_name from information_schema.tables where table_schema = ${schema} order by 1`;
      expect(tables.map((r) => r["table_name"])).toEqual([
        "outbox",
        "outbox_counters",
        "outbox_keys",
        "outbox_migrations",
        "outbox_positions",
        "second",
        "second_counters",
        "second_keys",
        "second_migrations",
        "second_positions",
      ]);
      const versions = await a.unsafe(`SELECT version FROM "${schema}".outbox_migrations ORDER BY 1`);
      expect(versions.map((r) => r["version"])).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      const indexes = await a`select indexname from pg_indexes where schemaname = ${schema} and tablename = 'outbox' order by 1`;
      expect(indexes.map((r) => r["indexname"])).toEqual([
        "outbox_dead",
        "outbox_done",
        "outbox_due",
        "outbox_free",
        "outbox_id_key",
        "outbox_key",
        "outbox_pkey",
      ]);
    } finally {
      await clients[0]!.unsafe(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => {});
      await Promise.all(clients.map((c) => c.end({ timeout: 5 })));
    }
  });
});

/** Creates `schema` with the outbox as schema versions 1 … `upTo` left it (recorded as applied). */
async function installUpTo(sql: Sql, schema: string, upTo: number): Promise<void> {
  await sql.begin(async (tx) => {
    await tx.unsafe(`CREATE SCHEMA "${schema}"`);
    await tx.unsafe(renderSql(MIGRATIONS_TABLE_DDL, { schema }));
    for (const version of SCHEMA_VERSIONS.filter((v) => v.version <= upTo)) {
      for (const s of version.statements) await tx.unsafe(renderSql(s, { schema }));
      await tx.unsafe(renderSql(recordVersionSql(version.version), { schema }));
    }
  });
}

/** Drains `storage` with one relay (at most 20 drains) until every message of `sent` is delivered, each key's in order. */
async function expectDrainsInKeyOrder(
  storage: ReturnType<typeof postgresStorage>,
  sent: readonly NewMessage[],
  relayOptions: { batchSize: number; concurrency: number },
): Promise<void> {
  const transport = recordingTransport();
  const relay = createRelay({ outbox: createOutbox({ storage }), transport, ...relayOptions });
  for (let i = 0; i < 20 && transport.delivered.length < sent.length; i++) await relay.drain({ budgetMs: 2_000 });
  expect(transport.delivered.map((m) => m.id).sort()).toEqual(sent.map((m) => m.id).sort());
  for (const key of new Set(sent.map((m) => m.key))) {
    if (key === null) continue;
    expect(transport.delivered.filter((m) => m.key === key).map((m) => m.id)).toEqual(sent.filter((m) => m.key === key).map((m) => m.id));
  }
}

describe("postgresStorage: schema v1 -> v2 upgrade", () => {
  it("migrate() upgrades a POPULATED v1 table (keys table filled, _pending dropped); the backlog then drains in key order", async () => {
    const schema = `eo_test_up_${randomSuffix()}`;
    const sql = connect(`eo-test-up-${randomSuffix()}`, { max: 4 });
    try {
      await installUpTo(sql, schema, 1); // a v1 install, exactly as version 1 of migrate() left it
      // Its rows, written as v1's enqueue wrote them (no key table then): 3 keys + keyless, one dead, one delayed.
      const ids: string[] = [];
      for (let i = 0; i < 300; i++) {
        const id = uuidv7();
        ids.push(id);
        await sql.unsafe(
          `INSERT INTO "${schema}".outbox (id, topic, key, payload, headers, status, available_at)
           VALUES ($1::uuid, 'test.event', $2, $3::json, '{}', $4, now() + $5::int * interval '1 millisecond')`,
          [id, i % 4 === 3 ? null : `k${i % 4}`, JSON.stringify({ i }), i === 5 ? "dead" : "pending", i === 7 ? 300 : 0],
        );
      }
      const storage = postgresStorage(sql, { schema });
      await storage.migrate();
      const versions = await sql.unsafe(`SELECT version FROM "${schema}".outbox_migrations ORDER BY 1`);
      expect(versions.map((r) => r["version"])).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      const keys = await sql.unsafe(`SELECT key FROM "${schema}".outbox_keys ORDER BY 1`);
      expect(keys.map((r) => r["key"])).toEqual(["k0", "k1", "k2"]);
      const indexes = await sql.unsafe(`SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = 'outbox'`, [schema]);
      expect(indexes.map((r) => r["indexname"])).not.toContain("outbox_pending");
      expect(indexes.map((r) => r["indexname"])).toContain("outbox_free");
      await storage.migrate(); // idempotent
      // Drain with two relays at once; each key's deliveries follow seq (= the v1 insert order here).
      const transport = recordingTransport();
      const relays = [storage, postgresStorage(connect(`eo-test-up-${randomSuffix()}`, { max: 2 }), { schema })].map((s) =>
        createRelay({ outbox: createOutbox({ storage: s }), transport, batchSize: 20, concurrency: 4 })
      );
      const end = Date.now() + 30_000;
      while (transport.delivered.length < 299 && Date.now() < end) {
        await Promise.all(relays.map((r) => r.drain({ budgetMs: 2_000 })));
        await sleep(20);
      }
      expect(transport.delivered).toHaveLength(299); // all but the dead one
      const order = new Map(ids.map((id, i) => [id, i]));
      for (const key of ["k0", "k1", "k2"]) {
        const got = transport.delivered.filter((m) => m.key === key).map((m) => order.get(m.id)!);
        expect(got).toEqual([...got].sort((a, b) => a - b));
        expect(got.length).toBeGreaterThan(70);
      }
      expect((await storage.stats()).dead).toBe(1);
      expect((await sql.unsafe(`SELECT count(*)::int AS n FROM "${schema}".outbox_keys`))[0]!["n"]).toBeLessThanOrEqual(3);
    } finally {
      await sql.unsafe(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => {});
      await sql.end({ timeout: 5 });
    }
  }, 60_000);
});

describe("postgresStorage: schema v4 -> v5 (the claim function's clock)", () => {
  it("a relay of this version claims on a v4 schema; migrate() replaces <table>_claim while a claim is outstanding, which then settles; createdAt is the stored time cut to ms, on ms boundaries too", async () => {
    const schema = `eo_test_v5_${randomSuffix()}`;
    const sql = connect(`eo-test-v5-${randomSuffix()}`, { max: 4 });
    try {
      await installUpTo(sql, schema, 4);
      const storage = postgresStorage(sql, { schema });
      const sent = Array.from({ length: 6 }, (_, i) => message(i));
      await sql.begin((tx) => storage.enqueue(tx, sent));
      // Stored times whose cut to ms is easy to get wrong in float arithmetic: exact ms, .999999 s, far ahead.
      const stamps = [
        ["2026-12-01 10:00:00.123+00", Date.UTC(2026, 11, 1, 10, 0, 0, 123)],
        ["2026-12-01 10:00:00.999999+00", Date.UTC(2026, 11, 1, 10, 0, 0, 999)],
        ["2038-01-19 03:14:08.001+00", Date.UTC(2038, 0, 19, 3, 14, 8, 1)],
        ["2099-12-31 23:59:59.999999+00", Date.UTC(2099, 11, 31, 23, 59, 59, 999)],
        ["1999-12-31 23:59:59.000001+00", Date.UTC(1999, 11, 31, 23, 59, 59, 0)],
        ["2001-09-09 01:46:40+00", Date.UTC(2001, 8, 9, 1, 46, 40, 0)],
      ] as const;
      for (const [i, [at]] of stamps.entries()) {
        await sql.unsafe(`UPDATE "${schema}".outbox SET created_at = $1::timestamptz WHERE id = $2::uuid`, [at, sent[i]!.id]);
      }
      const before = await storage.claim({ limit: 3, leaseMs: 30_000 }); // on the v4 schema
      await storage.migrate();
      const versions = await sql.unsafe(`SELECT version FROM "${schema}".outbox_migrations ORDER BY 1`);
      expect(versions.map((r) => r["version"])).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      const body = await sql.unsafe(
        `SELECT p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1 AND p.proname = 'outbox_claim' AND p.pronargs = 3`,
        [schema],
      );
      expect(body).toHaveLength(1);
      expect(String(body[0]!["prosrc"])).toContain("v_now float8");
      const after = await storage.claim({ limit: 3, leaseMs: 30_000 });
      const created = new Map([...before.messages, ...after.messages].map((m) => [m.id, m.createdAt]));
      expect(stamps.map((_, i) => created.get(sent[i]!.id))).toEqual(stamps.map(([, ms]) => ms));
      expect(after.leaseUntil - after.now).toBe(30_000);
      const settled = await storage.settle(before.token, before.messages.map((m) => ({ id: m.id, outcome: "delivered" as const })));
      expect(settled).toEqual({ applied: 3, lost: [] });
      expect((await storage.settle(after.token, after.messages.map((m) => ({ id: m.id, outcome: "delivered" as const })))).applied).toBe(3);
      expect((await storage.stats()).pending).toBe(0);
    } finally {
      await sql.unsafe(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => {});
      await sql.end({ timeout: 5 });
    }
  });
});

describe("postgresStorage: schema v5 -> v6 (claims that continue held keys)", () => {
  it("on a v5 schema a claim asked to continue claims as before (nothing of a held key); migrate() adds the overload while rows are leased, and the next claim continues the held key behind them; a drain then delivers every key in order", async () => {
    const schema = `eo_test_v6_${randomSuffix()}`;
    const sql = connect(`eo-test-v6-${randomSuffix()}`, { max: 4 });
    try {
      await installUpTo(sql, schema, 5);
      const storage = postgresStorage(sql, { schema });
      // k1: 2 rows, then k0: 20, then k1: 4 more.
      const sent = Array.from({ length: 26 }, (_, i) => message(i, { key: i >= 2 && i < 22 ? "k0" : "k1" }));
      await sql.begin((tx) => storage.enqueue(tx, sent));
      const ids = (c: { messages: readonly { id: string }[] }): string[] => c.messages.map((m) => m.id);
      const a = await storage.claim({ limit: 2, leaseMs: 30_000 }); // k1's first two
      const b = await storage.claim({ limit: 2, leaseMs: 30_000 }); // k0's first two (k1 is held)
      expect([ids(a), ids(b)]).toEqual([[sent[0]!.id, sent[1]!.id], [sent[2]!.id, sent[3]!.id]]);
      const cont = { after: [b.messages[1]!.seq], tokens: [a.token, b.token] }; // continue k0 only
      const onV5 = await storage.claim({ limit: 2, leaseMs: 30_000, continue: cont });
      expect(onV5.messages).toEqual([]); // both keys' heads are leased: the 3-argument claim takes nothing
      await storage.migrate();
      const versions = await sql.unsafe(`SELECT version FROM "${schema}".outbox_migrations ORDER BY 1`);
      expect(versions.map((r) => r["version"])).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      const onV6 = await storage.claim({ limit: 2, leaseMs: 30_000, continue: cont });
      expect(ids(onV6)).toEqual([sent[4]!.id, sent[5]!.id]); // k0's next rows; nothing of k1, which was not named
      // Named with a token that does not hold k0's rows (a's: it holds k1's): nothing.
      expect(await storage.claim({ limit: 2, leaseMs: 30_000, continue: { after: [onV6.messages[1]!.seq], tokens: [a.token] } }))
        .toMatchObject({ messages: [] });
      expect(await storage.claim({ limit: 2, leaseMs: 30_000 })).toMatchObject({ messages: [] });
      for (const c of [a, b, onV6]) {
        expect((await storage.settle(c.token, c.messages.map((m) => ({ id: m.id, outcome: "released" as const })))).applied).toBe(c.messages.length);
      }
      await expectDrainsInKeyOrder(storage, sent, { batchSize: 10, concurrency: 4 });
      expect((await storage.stats()).pending).toBe(0);
    } finally {
      await sql.unsafe(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => {});
      await sql.end({ timeout: 5 });
    }
  }, 60_000);
});

describe("postgresStorage: schema v3 -> v4 (the claim function)", () => {
  it("a relay on a v3 schema gets CONFIG naming migrate(); migrate() adds <table>_claim to the populated table, which then drains in key order", async () => {
    const schema = `eo_test_v4_${randomSuffix()}`;
    const sql = connect(`eo-test-v4-${randomSuffix()}`, { max: 4 });
    try {
      await installUpTo(sql, schema, 3); // a v3 install, as version 3 of migrate() left it, with rows from this enqueue
      const storage = postgresStorage(sql, { schema });
      const sent = Array.from({ length: 60 }, (_, i) => message(i, { key: i % 4 === 3 ? null : `k${i % 4}` }));
      await sql.begin((tx) => storage.enqueue(tx, sent));
      const e = expectCode(await caught(storage.claim({ limit: 10, leaseMs: 10_000 })), "CONFIG");
      expect(e.message).toBe(
        `[edge-outbox:postgres] the claim function ${schema}.outbox_claim does not exist: the schema predates version 4 ` +
          "of edge-outbox's Postgres schema; call storage.migrate() (or install the DDL from postgresSchema())",
      );
      expect((await storage.stats()).leased).toBe(0); // the failed claim changed nothing
      await storage.migrate();
      const versions = await sql.unsafe(`SELECT version FROM "${schema}".outbox_migrations ORDER BY 1`);
      expect(versions.map((r) => r["version"])).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      const fns = await sql.unsafe(
        `SELECT p.proname, p.pronargs FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1 ORDER BY 2`,
        [schema],
      );
      expect(fns.map((r) => [r["proname"], r["pronargs"]])).toEqual([["outbox_claim", 3], ["outbox_claim", 5]]);
      await expectDrainsInKeyOrder(storage, sent, { batchSize: 7, concurrency: 4 });
    } finally {
      await sql.unsafe(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => {});
      await sql.end({ timeout: 5 });
    }
  }, 60_000);
});

describe("postgresStorage: writes", () => {
  it("a late settle of an expired claim, which still applies to its row that kept its token, leaves a key another claim holds as that claim set it", async () => {
    const f = await postgresFixture();
    try {
      const keyed = [message(0, { key: "k" }), message(1, { key: "k" })];
      const keyless = message(2);
      await f.sql.begin((tx) => f.storage.enqueue(tx, [...keyed, keyless]));
      const a = await f.storage.claim({ limit: 10, leaseMs: 1 });
      expect(a.messages).toHaveLength(3);
      await sleep(20); // A's lease has expired
      const b = await f.storage.claim({ limit: 2, leaseMs: 60_000 }); // takes key k's rows; the keyless row keeps A's token
      expect(b.messages.map((m) => m.id)).toEqual(keyed.map((m) => m.id));
      const keyAt = async (): Promise<number> =>
        Number((await f.sql.unsafe(`SELECT ${"floor(extract(epoch FROM available_at) * 1000)::float8"} AS at FROM "${f.schema}".outbox_keys WHERE key = 'k'`))[0]!["at"]);
      const held = await keyAt();
      expect(held).toBeGreaterThan(b.now + 59_000); // B's lease
      // A settles all three late: its keyless row still carries A's token and applies; k's rows are B's and are lost.
      const late = await f.storage.settle(a.token, a.messages.map((m) => ({ id: m.id, outcome: "delivered" as const })));
      expect(late.applied).toBe(1);
      expect([...late.lost].sort()).toEqual(keyed.map((m) => m.id).sort());
      expect(await keyAt()).toBe(held); // not moved to "due now" by A
      expect((await f.storage.claim({ limit: 10, leaseMs: 60_000 })).messages).toEqual([]);
      // B's own settle moves the key (its rows are gone: the key is due now, and the next claim drops its row).
      expect((await f.storage.settle(b.token, b.messages.map((m) => ({ id: m.id, outcome: "delivered" as const })))).applied).toBe(2);
      expect(await keyAt()).toBeLessThanOrEqual(Date.now() + 1_000);
    } finally {
      await f.close();
    }
  });

  it("a settle that leaves its key's due time as it is does not lock the key row: a claim continuing the key while that settle's transaction is open still continues it", async () => {
    const f = await postgresFixture();
    const reserved = await f.sql.reserve();
    try {
      const rows = Array.from({ length: 6 }, (_, i) => message(i, { key: "k" }));
      await f.sql.begin((tx) => f.storage.enqueue(tx, rows));
      const c1 = await f.storage.claim({ limit: 3, leaseMs: 60_000 });
      expect(c1.messages.map((m) => m.id)).toEqual(rows.slice(0, 3).map((m) => m.id));
      const keyAt = async (): Promise<string> =>
        String((await f.sql.unsafe(`SELECT available_at::text AS at FROM "${f.schema}".outbox_keys WHERE key = 'k'`))[0]!["at"]);
      const before = await keyAt();
      // The settle of c1's first row, left uncommitted: the key's new head is c1's second row, due when c1's lease
      // ends, which is the key row's value already.
      const { settleDelivered } = postgresSql({ schema: f.schema, table: "outbox" });
      await reserved.unsafe("BEGIN");
      expect(await reserved.unsafe(settleDelivered, [c1.token, `{${c1.messages[0]!.id}}`])).toHaveLength(0); // applied
      // Before, the settle rewrote the key row and held it locked: this continuation skipped the key and got nothing.
      const c2 = await f.storage.claim({ limit: 3, leaseMs: 60_000, continue: { after: [c1.messages[2]!.seq], tokens: [c1.token] } });
      expect(c2.messages.map((m) => m.id)).toEqual(rows.slice(3).map((m) => m.id));
      await reserved.unsafe("COMMIT");
      expect(await keyAt()).not.toBe(before); // c2's lease moved the key row
      const settle = (c: typeof c1, from: number) =>
        f.storage.settle(c.token, c.messages.slice(from).map((m) => ({ id: m.id, outcome: "delivered" as const })));
      expect((await settle(c1, 1)).applied).toBe(2);
      expect((await settle(c2, 0)).applied).toBe(3);
      // A settle that changes the key's due time still writes it: the key is empty and due now, and the next claim
      // deletes its row.
      expect((await f.storage.claim({ limit: 10, leaseMs: 60_000 })).messages).toEqual([]);
      expect(await f.sql.unsafe(`SELECT 1 FROM "${f.schema}".outbox_keys`)).toHaveLength(0);
      expect((await f.storage.stats()).pending).toBe(0);
    } finally {
      await reserved.unsafe("ROLLBACK").catch(() => {}); // a failed expectation leaves the settle open
      reserved.release();
      await f.close();
    }
  });

  it("enqueue keeps array order as seq order in one statement; a rollback leaves nothing", async () => {
    const f = await postgresFixture();
    try {
      const ms = Array.from({ length: 300 }, (_, i) => message(i, { key: i % 3 === 0 ? null : `k${i}` }));
      ms.reverse(); // ids no longer sorted: seq must follow the array, not the id
      const statements: string[] = [];
      const counting: PostgresExecutor = {
        unsafe: (q, p, o) => {
          statements.push(q);
          return f.sql.unsafe(q, p as never, o);
        },
      };
      await caught(f.sql.begin(async (tx) => {
        await f.storage.enqueue({ unsafe: (q, p, o) => (statements.push(q), tx.unsafe(q, p as never, o)) }, ms);
        await f.storage.enqueue(counting, []);
        throw new Error("roll back");
      }));
      expect(statements).toHaveLength(1);
      expect((await f.storage.stats()).pending).toBe(0);
      await f.sql.begin((tx) => f.storage.enqueue(tx, ms));
      const claim = await f.storage.claim({ limit: 1000, leaseMs: 10_000 });
      expect(claim.messages.map((m) => m.id)).toEqual(ms.map((m) => m.id));
    } finally {
      await f.close();
    }
  });

  it("an id a row already has (pending, dead, kept delivered) is CONFLICT: nothing of the call is kept, the transaction stays usable", async () => {
    const f = await postgresFixture({ retainDeliveredMs: 60_000 });
    try {
      const pending = message(1), dead = message(2, { key: "k" }), kept = message(3);
      await f.sql.begin((tx) => f.storage.enqueue(tx, [pending, dead, kept]));
      const c = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
      await f.storage.settle(c.token, [
        { id: dead.id, outcome: "dead", error: "x" },
        { id: kept.id, outcome: "delivered" },
        { id: pending.id, outcome: "released" },
      ]);
      for (const taken of [pending, dead, kept]) {
        const fresh = message(9, { key: "k" });
        let after: unknown = null;
        const e = expectCode(
          await caught(f.sql.begin(async (tx) => {
            const err = await caught(f.storage.enqueue(tx, [fresh, { ...taken, payload: "{}" }]));
            // The transaction is still usable after the refusal: the next statement runs.
            after = (await tx.unsafe("SELECT 1 AS one"))[0]!["one"];
            throw err;
          })),
          "CONFLICT",
        );
        expect(e.message).toContain(taken.id);
        expect(e.message).toMatch(/^\[edge-outbox:postgres\] /);
        expect(after).toBe(1);
        const [row] = await f.sql.unsafe(`SELECT count(*)::int AS n FROM "${f.schema}".outbox WHERE id = $1::uuid`, [fresh.id]);
        expect(row!["n"]).toBe(0);
      }
      // Committed in the same transaction as the refusal: the caller may go on and commit other work.
      const other = message(10);
      await f.sql.begin(async (tx) => {
        await caught(f.storage.enqueue(tx, [pending]));
        await f.storage.enqueue(tx, [other]);
      });
      expect((await f.storage.stats()).pending).toBe(2);
      expectCode(await caught(f.storage.enqueue({} as never, [other])), "VALIDATION");
    } finally {
      await f.close();
    }
  });

  it("timestamps come from the database clock, in whole epoch milliseconds", async () => {
    const f = await postgresFixture();
    try {
      await f.sql.begin((tx) => f.storage.enqueue(tx, [message(1, { delayMs: 5_000 })]));
      const [row] = await f.sql.unsafe(
        `SELECT floor(extract(epoch FROM created_at) * 1000)::float8 AS c, floor(extract(epoch FROM available_at) * 1000)::float8 AS a,
           floor(extract(epoch FROM now()) * 1000)::float8 AS now FROM "${f.schema}".outbox`,
      );
      expect(row!["a"] - row!["c"]).toBe(5_000);
      expect(Math.abs(row!["c"] - row!["now"])).toBeLessThan(5_000);
      const s = await f.storage.stats();
      expect(Number.isInteger(s.now)).toBe(true);
      expect(s.pending).toBe(1);
      expect(s.due).toBe(0);
    } finally {
      await f.close();
    }
  });

  it("works with a client that transforms column names (postgres.camel) and parses int8 as bigint", async () => {
    const f = await postgresFixture({}, { transform: postgres.camel, types: { bigint: postgres.BigInt } });
    try {
      const m = message(1, { key: "k" });
      await f.sql.begin((tx) => f.storage.enqueue(tx, [m]));
      const c = await f.storage.claim({ limit: 5, leaseMs: 1_000 });
      expect(c.messages.map((x) => x.id)).toEqual([m.id]);
      expect(typeof c.messages[0]!.seq).toBe("number");
      expect(c.messages[0]!.lastError).toBeNull();
      expect(c.leaseUntil - c.now).toBe(1_000);
      expect(await f.storage.settle(c.token, [{ id: m.id, outcome: "dead", error: "x" }])).toEqual({ applied: 1, lost: [] });
      const page = await f.storage.listDead({ limit: 5 });
      expect(page.items[0]!.lastError).toBe("x");
      expect((await f.storage.stats()).window.dead).toBe(1);
    } finally {
      await f.close();
    }
  });

  it("with retainDeliveredMs, delivered rows are kept and purged in bounded chunks", async () => {
    const f = await postgresFixture({ retainDeliveredMs: 60_000 });
    try {
      await f.sql.begin((tx) => f.storage.enqueue(tx, [message(1), message(2), message(3)]));
      const c = await f.storage.claim({ limit: 5, leaseMs: 10_000 });
      await f.storage.settle(c.token, c.messages.map((m) => ({ id: m.id, outcome: "delivered" as const })));
      const [row] = await f.sql.unsafe(`SELECT count(*)::int AS n FROM "${f.schema}".outbox WHERE status = 'delivered'`);
      expect(row!["n"]).toBe(3);
      const s = await f.storage.stats();
      expect(s.pending).toBe(0);
      expect(s.window.delivered).toBe(3);
      expect(await f.storage.purge({ status: "delivered", olderThan: s.now - 60_000, limit: 10 })).toBe(0);
      expect(await f.storage.purge({ status: "delivered", olderThan: s.now + 60_000, limit: 2 })).toBe(2);
      expect(await f.storage.purge({ status: "delivered", olderThan: s.now + 60_000, limit: 2 })).toBe(1);
    } finally {
      await f.close();
    }
  });
});

/**
 * A one-connection client of `f`'s database that collects the plans auto_explain logs, a storage on it, and
 * `explain`/`quiet` to turn the logging of every statement (nested ones too) on and off: with `analyze`, the
 * executed plans; with `buffers`, also their buffer counts, without timing.
 */
function planCapture(f: Awaited<ReturnType<typeof postgresFixture>>) {
  const plans: string[] = [];
  const c = f.connect({ max: 1, onnotice: (n) => { if (String(n["message"]).includes("plan:")) plans.push(String(n["message"])); } });
  const explain = async (o: { analyze?: boolean; buffers?: boolean } = {}): Promise<void> => {
    await c.unsafe(`LOAD 'auto_explain'`);
    const analyze = o.analyze ? " SET auto_explain.log_analyze = on;" : "";
    const buffers = o.buffers ? " SET auto_explain.log_buffers = on; SET auto_explain.log_timing = off;" : "";
    await c.unsafe(`SET auto_explain.log_min_duration = 0;${analyze}${buffers} SET auto_explain.log_nested_statements = on; SET client_min_messages = log`);
  };
  const quiet = async (): Promise<void> => void (await c.unsafe(`SET auto_explain.log_min_duration = -1; SET client_min_messages = notice`));
  return { c, plans, storage: postgresStorage(c, f.options), explain, quiet };
}

/** The nodes of logged plan text: each node's line with its detail lines. */
const planNodes = (text: string): string[] => text.split(/\n(?=\s*->|\S)/);

describe("postgresStorage: plans of a drain over few keys", () => {
  /** The plan nodes (a node's line and its detail lines) of `plans` that scan `index`. */
  const nodes = (plans: string, index: string): string[] => planNodes(plans).filter((n) => n.includes(`using ${index} on `));
  it("a continued claim and a keyed settle read each key's rows through the (key, seq) index: no primary-key walk filtered by key, no bitmap scan", async () => {
    const f = await postgresFixture();
    const { plans, storage, explain, quiet } = planCapture(f);
    try {
      // 20,000 rows round-robin over 10 keys, as in bench/README.md "7 keys", analysed: few keys in the statistics.
      const sent = Array.from({ length: 20_000 }, (_, i) => message(i, { key: `c-${i % 10}` }));
      for (let i = 0; i < sent.length; i += 10_000) await f.sql.begin((tx) => f.storage.enqueue(tx, sent.slice(i, i + 10_000)));
      await f.sql.unsafe(`VACUUM ANALYZE "${f.schema}".outbox`);
      const delivered = (m: { id: string }) => ({ id: m.id, outcome: "delivered" as const });
      const continueAfter = (claim: Awaited<ReturnType<typeof storage.claim>>) => {
        const last = new Map<string, number>();
        for (const m of claim.messages) if (m.key !== null) last.set(m.key, m.seq);
        return { after: [...last.values()], tokens: [claim.token] };
      };
      // A drain's steady state: each claim continues the keys of the one before, which is settled after it.
      let held = await storage.claim({ limit: 100, leaseMs: 30_000 });
      for (let round = 0; round < 6; round++) {
        const last = round === 5;
        if (last) await explain();
        const next = await storage.claim({ limit: 100, leaseMs: 30_000, continue: continueAfter(held) });
        expect(next.messages.length).toBe(100);
        expect((await storage.settle(held.token, held.messages.map(delivered))).applied).toBe(100);
        held = next;
      }
      await quiet();
      const claimPlans = plans.filter((p) => p.includes("outbox_claim") || p.includes("lk AS")).join("\n");
      const settlePlans = plans.filter((p) => p.includes("DELETE FROM")).join("\n");
      expect(claimPlans).toContain("lk AS");
      expect(settlePlans).toContain("nh AS");
      for (const text of [claimPlans, settlePlans]) {
        expect(text).not.toMatch(/Bitmap/);
        // A primary-key scan may probe seqs (the continued rows), never walk a range of them filtering keys out.
        for (const node of nodes(text, "outbox_pkey")) expect(node).not.toMatch(/Filter: .*\bkey (=|>=|<=) (?!ANY)/);
      }
      // The claim's per-key reads (every key's prefix) and the settle's head lookup. A continued key is checked on its
      // key row (schema v10), no longer by reading its rows up to the caller's last one.
      expect(nodes(claimPlans, "outbox_key").length).toBeGreaterThanOrEqual(1);
      for (const node of nodes(claimPlans, "outbox_key")) expect(node).not.toMatch(/seq <= /);
      expect(nodes(claimPlans, "outbox_keys_pkey").some((n) => /lease_token = ANY/.test(n) || /Index Cond: \(key = a\.key\)/.test(n))).toBe(true);
      expect(nodes(settlePlans, "outbox_key").length).toBeGreaterThanOrEqual(1);
    } finally {
      await f.close();
    }
  }, 60_000);
});

describe("postgresStorage: a claim over many due deep keys (schema v8)", () => {
  it("reads its locked keys only until it has limit rows: 50 of 100 due keys read for a claim of 100, each a 2-row prefix; the unread keys stay due, and empty keys are still deleted", async () => {
    const f = await postgresFixture();
    const { plans, storage, explain, quiet } = planCapture(f);
    try {
      // 100 keys x 4 rows, round-robin: every key due; ceil(100 / ceil(100 / 2)) = 2 rows per key read.
      const sent = Array.from({ length: 400 }, (_, i) => message(i, { key: `k${i % 100}` }));
      await f.sql.begin((tx) => f.storage.enqueue(tx, sent));
      await explain({ analyze: true });
      const first = await storage.claim({ limit: 100, leaseMs: 30_000 });
      await quiet();
      const byKey = new Map<string, string[]>();
      for (const m of first.messages) byKey.set(m.key!, [...(byKey.get(m.key!) ?? []), m.id]);
      expect(first.messages).toHaveLength(100);
      expect(byKey.size).toBe(50);
      for (const [key, ids] of byKey) expect(ids).toEqual(sent.filter((m) => m.key === key).slice(0, 2).map((m) => m.id));
      // The per-key read (the lateral index scan of the claim statement) ran once per key read: 50, not 100.
      const claimPlan = plans.find((p) => p.includes("pre AS"))!;
      const loops = [...claimPlan.matchAll(/Index Scan using outbox_key on outbox \S+ .*loops=(\d+)\)/g)].map((m) => Number(m[1]));
      expect(loops, claimPlan).toContain(50);
      expect(Math.max(...loops), claimPlan).toBe(50);
      // The 50 keys not read were neither taken for empty (deleted) nor moved: the next claim (another connection,
      // while the first holds its leases) reads them, ceil(100 / ceil(50 / 2)) = 4 rows each: 25 whole queues.
      expect((await f.sql.unsafe(`SELECT count(*)::int AS n FROM "${f.schema}".outbox_keys`))[0]!["n"]).toBe(100);
      const other = await f.another();
      const second = await other.claim({ limit: 100, leaseMs: 30_000 });
      const secondKeys = new Set(second.messages.map((m) => m.key!));
      expect(second.messages).toHaveLength(100);
      expect(secondKeys.size).toBe(25);
      for (const key of secondKeys) expect(byKey.has(key)).toBe(false);
      const delivered = (m: { id: string }) => ({ id: m.id, outcome: "delivered" as const });
      expect((await storage.settle(first.token, first.messages.map(delivered))).applied).toBe(100);
      expect((await other.settle(second.token, second.messages.map(delivered))).applied).toBe(100);
      // The rest, claim after settle: every key's rows in its order; then every key is empty, and a claim that reads
      // them (a key without pending rows is read as a row of nulls) deletes their key rows.
      const got = [...first.messages, ...second.messages];
      for (let i = 0; i < 10; i++) {
        const next = await storage.claim({ limit: 100, leaseMs: 30_000 });
        if (next.messages.length === 0) break;
        got.push(...next.messages);
        expect((await storage.settle(next.token, next.messages.map(delivered))).applied).toBe(next.messages.length);
      }
      expect(got).toHaveLength(400);
      for (let k = 0; k < 100; k++) {
        const key = `k${k}`;
        expect(got.filter((m) => m.key === key).map((m) => m.id)).toEqual(sent.filter((m) => m.key === key).map((m) => m.id));
      }
      expect((await storage.claim({ limit: 100, leaseMs: 30_000 })).messages).toHaveLength(0);
      expect((await f.sql.unsafe(`SELECT count(*)::int AS n FROM "${f.schema}".outbox_keys`))[0]!["n"]).toBe(0);
    } finally {
      await f.close();
    }
  }, 60_000);
});

/**
 * The claim functions as schema version 8 created them: version 9's text (test/fixtures/postgres-claim-v9.ts) without
 * the `maxKeys` setting (version 9 added only the `v_max_keys` declaration and its use as the due-key lock's limit).
 * Throws if the text has drifted, so the test never runs on a function it did not mean.
 */
function claimFunctionsV8(): string[] {
  return [CLAIM_FUNCTION_V9, CLAIM_CONTINUE_FUNCTION_V9].map((ddl) => {
    const v8 = ddl
      .replace(/\n  -- The most due keys to lock[^\n]*\n  v_max_keys integer := [^\n]*;/, "")
      .replace("ORDER BY k.available_at LIMIT v_max_keys", "ORDER BY k.available_at LIMIT p_limit");
    if (v8.includes("v_max_keys") || v8 === ddl) throw new Error("the claim function's text no longer matches what version 9 changed");
    return v8;
  });
}

describe("postgresStorage: maxKeys (schema v9)", () => {
  it("a claim with maxKeys locks at most that many due keys; on a v8 schema the setting is ignored (a relay of this version runs there unchanged); migrate() replaces the functions while rows are leased, which then settle; every key then drains in order", async () => {
    const schema = `eo_test_v9_${randomSuffix()}`;
    const sql = connect(`eo-test-v9-${randomSuffix()}`, { max: 4 });
    try {
      await installUpTo(sql, schema, 8);
      for (const ddl of claimFunctionsV8()) await sql.unsafe(renderSql(ddl, { schema }));
      const storage = postgresStorage(sql, { schema });
      // 6 keys x 3 rows, round-robin.
      const sent = Array.from({ length: 18 }, (_, i) => message(i, { key: `k${i % 6}` }));
      await sql.begin((tx) => storage.enqueue(tx, sent));
      const keysOf = (c: { messages: readonly { key: string | null }[] }): Set<string> => new Set(c.messages.map((m) => m.key!));
      // v8: 6 keys locked, ceil(6 / 3) = 2 rows read per key until 6 rows: 3 keys, though maxKeys says 2.
      const onV8 = await storage.claim({ limit: 6, leaseMs: 30_000, maxKeys: 2 });
      expect(onV8.messages).toHaveLength(6);
      expect(keysOf(onV8).size).toBe(3);
      await storage.migrate();
      const versions = await sql.unsafe(`SELECT version FROM "${schema}".outbox_migrations ORDER BY 1`);
      expect(versions.map((r) => r["version"])).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      // v9: of the 3 keys left, 2, each its whole queue (ceil(100 / 1) rows read per key).
      const onV9 = await storage.claim({ limit: 100, leaseMs: 30_000, maxKeys: 2 });
      expect(keysOf(onV9).size).toBe(2);
      expect(onV9.messages).toHaveLength(6);
      for (const key of keysOf(onV9)) expect(keysOf(onV8).has(key)).toBe(false);
      expect((await storage.claim({ limit: 100, leaseMs: 30_000, maxKeys: 0 })).messages).toEqual([]);
      for (const c of [onV8, onV9]) {
        expect((await storage.settle(c.token, c.messages.map((m) => ({ id: m.id, outcome: "released" as const })))).applied).toBe(c.messages.length);
      }
      await expectDrainsInKeyOrder(storage, sent, { batchSize: 10, concurrency: 1 });
      expect((await storage.stats()).pending).toBe(0);
    } finally {
      await sql.unsafe(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => {});
      await sql.end({ timeout: 5 });
    }
  }, 60_000);

  it("refuses a maxKeys that is not a non-negative integer with VALIDATION, before anything is sent: nothing is leased", async () => {
    const f = await postgresFixture();
    try {
      await f.sql.begin((tx) => f.storage.enqueue(tx, [message(1, { key: "k" }), message(2)]));
      for (const maxKeys of [-1, 1.5, Number.NaN, "2" as unknown as number]) {
        const e = expectCode(await caught(f.storage.claim({ limit: 10, leaseMs: 10_000, maxKeys })), "VALIDATION");
        expect(e.message).toContain("claim maxKeys must be a non-negative integer");
      }
      expect((await f.storage.stats()).leased).toBe(0);
      expect((await f.storage.claim({ limit: 10, leaseMs: 10_000, maxKeys: 10 })).messages).toHaveLength(2);
    } finally {
      await f.close();
    }
  });
});

describe("postgresStorage: schema v9 -> v10 (continued keys checked on the key row)", () => {
  it("on a real v9 schema (no key token) a claim continues a held key as before and a settle that releases rows applies; migrate() adds the column and replaces the functions while rows are leased; a key continued across the upgrade is not continued (no token yet), the next claim sets it, and every key then drains in order", async () => {
    const schema = `eo_test_v10_${randomSuffix()}`;
    const sql = connect(`eo-test-v10-${randomSuffix()}`, { max: 4 });
    try {
      await installUpTo(sql, schema, 9);
      // Exactly as version 9 left it: its function texts, and no lease_token column on the key table.
      for (const ddl of [CLAIM_FUNCTION_V9, CLAIM_CONTINUE_FUNCTION_V9]) await sql.unsafe(renderSql(ddl, { schema }));
      await sql.unsafe(`ALTER TABLE "${schema}".outbox_keys DROP COLUMN lease_token`);
      const storage = postgresStorage(sql, { schema });
      const sent = Array.from({ length: 40 }, (_, i) => message(i, { key: `k${i % 2}` }));
      await sql.begin((tx) => storage.enqueue(tx, sent));
      const ids = (c: { messages: readonly { id: string }[] }): string[] => c.messages.map((m) => m.id);
      const of = (key: string, from: number, n: number) => sent.filter((m) => m.key === key).slice(from, from + n).map((m) => m.id);
      const lastOf = (c: { messages: readonly { key: string | null; seq: number }[] }, key: string) => c.messages.filter((m) => m.key === key).at(-1)!.seq;
      // One key's first two rows, then the other's (the first is held); the keys are due at the same time.
      const a = await storage.claim({ limit: 2, leaseMs: 30_000 });
      const k0 = a.messages[0]!.key!, k1 = k0 === "k0" ? "k1" : "k0";
      expect(ids(a)).toEqual(of(k0, 0, 2));
      const a1 = await storage.claim({ limit: 2, leaseMs: 30_000 });
      expect(ids(a1)).toEqual(of(k1, 0, 2));
      const continueK0 = { after: [lastOf(a, k0)], tokens: [a.token, a1.token] };
      const b0 = await storage.claim({ limit: 2, leaseMs: 30_000, continue: continueK0 });
      expect(ids(b0)).toEqual(of(k0, 2, 2)); // v9 continues by reading the rows up to `after`
      // A settle that releases (or retries) rows runs on the v9 schema too: there is no key token to clear there.
      const released = await storage.settle(b0.token, b0.messages.map((m) => ({ id: m.id, outcome: "released" as const })));
      expect(released).toEqual({ applied: 2, lost: [] });
      const b = await storage.claim({ limit: 2, leaseMs: 30_000, continue: continueK0 });
      expect(ids(b)).toEqual(of(k0, 2, 2));
      await storage.migrate();
      const versions = await sql.unsafe(`SELECT version FROM "${schema}".outbox_migrations ORDER BY 1`);
      expect(versions.map((r) => r["version"])).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      const tokens = await sql.unsafe(`SELECT count(lease_token)::int AS n FROM "${schema}".outbox_keys`);
      expect(tokens[0]!["n"]).toBe(0); // the column is there, null on every key row
      // Continued across the upgrade: no token on the key row, so not continued (nothing claimed past b's rows).
      const c = await storage.claim({ limit: 10, leaseMs: 30_000, continue: { after: [lastOf(b, k0), lastOf(a1, k1)], tokens: [a.token, a1.token, b.token] } });
      expect(c.messages).toEqual([]);
      for (const x of [a, a1, b]) {
        expect((await storage.settle(x.token, x.messages.map((m) => ({ id: m.id, outcome: "delivered" as const })))).applied).toBe(x.messages.length);
      }
      // A claim of the keys from their heads sets the token, and the key is continued behind it.
      const d = await storage.claim({ limit: 2, leaseMs: 30_000 });
      const k = d.messages[0]!.key!;
      expect((await sql.unsafe(`SELECT lease_token::text AS t FROM "${schema}".outbox_keys WHERE key = $1`, [k]))[0]!["t"]).toBe(d.token);
      const e = await storage.claim({ limit: 2, leaseMs: 30_000, maxKeys: 0, continue: { after: [lastOf(d, k)], tokens: [d.token] } });
      expect(ids(e)).toEqual(of(k, k === k0 ? 6 : 4, 2));
      for (const x of [d, e]) {
        expect((await storage.settle(x.token, x.messages.map((m) => ({ id: m.id, outcome: "released" as const })))).applied).toBe(x.messages.length);
      }
      // This storage settled on the v9 schema without the token; on v10 its release cleared it.
      expect((await sql.unsafe(`SELECT lease_token FROM "${schema}".outbox_keys WHERE key = $1`, [k]))[0]!["lease_token"]).toBeNull();
      const rest = sent.filter((m) => ![a, a1, b].some((x) => ids(x).includes(m.id)));
      await expectDrainsInKeyOrder(storage, rest, { batchSize: 5, concurrency: 4 });
      expect((await storage.stats()).pending).toBe(0);
    } finally {
      await sql.unsafe(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => {});
      await sql.end({ timeout: 5 });
    }
  }, 60_000);
});

describe("postgresStorage: claim plans under stale statistics", () => {
  it("a connection whose first claims saw an empty table still claims in O(rows claimed) after 200,000 rows arrive unanalysed: the claim is planned per call with its values (no cached generic plan), index scans with conditions only", async () => {
    const f = await postgresFixture();
    const { plans, storage, explain, quiet } = planCapture(f);
    const table = `"${f.schema}".outbox`;
    try {
      // No ANALYZE will come (autovacuum off for the table): the statistics stay those of an empty table.
      await f.sql.unsafe(`ALTER TABLE ${table} SET (autovacuum_enabled = false)`);
      await f.sql.unsafe(`ANALYZE ${table}`);
      // The connection's first claims, of both claim functions, on the empty table (one keyed row to continue).
      await f.sql.begin((tx) => f.storage.enqueue(tx, [message(1, { key: "k-0" })]));
      const first = await storage.claim({ limit: 100, leaseMs: 30_000 });
      expect(first.messages).toHaveLength(1);
      await storage.claim({ limit: 100, leaseMs: 30_000, continue: { after: [first.messages[0]!.seq], tokens: [first.token] } });
      // 200,000 rows: half over 10 keys, half keyless, and the key rows an enqueue writes.
      await f.sql.unsafe(`INSERT INTO ${table} (id, topic, key, payload, headers, status, created_at, available_at)
        SELECT gen_random_uuid(), 'orders', CASE WHEN i % 2 = 0 THEN 'k-' || (i % 10) END, '{}'::json, '{}'::json,
          'pending', now(), now() FROM generate_series(1, 200000) AS i`);
      await f.sql.unsafe(`INSERT INTO "${f.schema}".outbox_keys (key) SELECT 'k-' || k FROM generate_series(0, 9) AS k ON CONFLICT (key) DO NOTHING`);
      await explain({ analyze: true, buffers: true });
      const due = await storage.claim({ limit: 100, leaseMs: 30_000 });
      const last = new Map<string, number>();
      for (const m of due.messages) if (m.key !== null) last.set(m.key, m.seq);
      const continued = await storage.claim({ limit: 100, leaseMs: 30_000, continue: { after: [...last.values()], tokens: [due.token] } });
      await quiet();
      expect(due.messages).toHaveLength(100);
      expect(last.size).toBeGreaterThan(0);
      expect(continued.messages).toHaveLength(100);
      const statements = plans.filter((p) => !p.includes("Query Text: SET TRANSACTION"));
      // Planned with the call's values folded in (a cached generic plan shows "$n" here): a generic plan made on
      // the empty table walked the whole partial index outbox_due in the claim's UPDATE, 2.8 s per claim at 200,000.
      const lockContinued = statements.find((p) => p.includes("o.seq = ANY (p_after)"));
      expect(lockContinued, plans.join("\n")).toMatch(/seq = ANY \('\{[0-9,]+\}'::bigint\[\]\)/);
      expect(statements.filter((p) => p.includes("pre AS"))).toHaveLength(2);
      for (const plan of statements) {
        expect(plan).not.toMatch(/Seq Scan|Merge Join|Hash Join|Bitmap/);
        // Every index scan of the outbox's tables has a condition: none walks a whole index.
        for (const node of planNodes(plan).filter((n) => / on outbox(_keys|_positions)? /.test(n) && /Index (Only )?Scan/.test(n))) {
          expect(node, plan).toMatch(/Index Cond: /);
        }
        // O(rows claimed): a claim of 100 touches about 2,000 buffers; a walk of an index of 200,000 rows, far more.
        const buffers = Number(/Buffers: shared hit=(\d+)/.exec(plan)?.[1] ?? 0);
        expect(buffers, plan).toBeLessThan(5_000);
      }
    } finally {
      await f.close();
    }
  }, 60_000);
});

describe("postgresStorage: per-key commit order (advisory locks before seq)", () => {
  it("the lock is taken before nextval: a writer blocked on a key draws its seq after rows committed meanwhile", async () => {
    const f = await postgresFixture();
    const admin = f.connect({ max: 1, connection: { application_name: `${f.appName}-admin` } });
    const other = f.connect({ max: 2, connection: { application_name: `${f.appName}-other` } });
    try {
      const a = message(1, { key: "k" }), b = message(2, { key: "k" }), c = message(3), d = message(4, { key: "j" });
      const t1 = await reservedTransaction(f.sql);
      await f.storage.enqueue(t1.tx, [a]); // holds the lock of "k" until commit
      const t2 = await reservedTransaction(other);
      const blocked = f.storage.enqueue(t2.tx, [b]); // waits for "k"
      await until(() => waitingOnLock(admin, `${f.appName}-other`), 5_000, "the second writer to wait on the key lock");
      await f.sql.begin((tx) => f.storage.enqueue(tx, [c])); // keyless: no lock, commits at once
      await f.sql.begin((tx) => f.storage.enqueue(tx, [d])); // another key: not blocked
      await t1.commit();
      await blocked;
      await t2.commit();
      const rows = await f.sql.unsafe(`SELECT id::text AS id, seq FROM "${f.schema}".outbox ORDER BY seq`);
      // b was inserted (id drawn) before c and d, but drew its seq only after a committed and after c and d.
      expect(rows.map((r) => r["id"])).toEqual([a.id, c.id, d.id, b.id]);
    } finally {
      await f.close();
    }
  });

  it("the enqueue plan gates the insert on the lock InitPlan (One-Time Filter) below the nextval projection", async () => {
    const f = await postgresFixture();
    try {
      const sql = postgresSql({ schema: f.schema, table: "outbox" });
      const arg = JSON.stringify([[uuidv7(), "t", "k", "{}", "{}", 0]]);
      const plan = (await f.sql.unsafe(`EXPLAIN (VERBOSE, COSTS OFF) ${sql.enqueue}`, [arg])).map((r) => String(r["QUERY PLAN"]));
      const text = plan.join("\n");
      const nextval = plan.findIndex((l) => l.includes("nextval("));
      const gate = plan.findIndex((l) => l.includes("One-Time Filter"));
      const lock = plan.findIndex((l) => l.includes("pg_advisory_xact_lock("));
      expect(nextval, text).toBeGreaterThan(-1);
      expect(gate, text).toBeGreaterThan(nextval); // deeper in the tree: evaluated before any row reaches nextval
      expect(lock, text).toBeGreaterThan(-1);
      expect(text).toMatch(/CTE l[\s\S]*pg_advisory_xact_lock/);
    } finally {
      await f.close();
    }
  });

  it("one call with several keys sorts its locks; two calls in opposite key orders can deadlock (retryable STORAGE)", async () => {
    const f = await postgresFixture();
    const other = f.connect({ max: 2 });
    try {
      // One call each, keys given in opposite orders: sorted inside the statement, so no deadlock.
      const t1 = await reservedTransaction(f.sql), t2 = await reservedTransaction(other);
      await f.storage.enqueue(t1.tx, [message(1, { key: "b" }), message(2, { key: "a" })]);
      const second = f.storage.enqueue(t2.tx, [message(3, { key: "a" }), message(4, { key: "b" })]);
      await sleep(50);
      await t1.commit();
      await second;
      await t2.commit();
      // Two calls per transaction, in opposite orders: PostgreSQL detects the deadlock and aborts one (40P01).
      const u1 = await reservedTransaction(f.sql), u2 = await reservedTransaction(other);
      await f.storage.enqueue(u1.tx, [message(5, { key: "a" })]);
      await f.storage.enqueue(u2.tx, [message(6, { key: "b" })]);
      const results = await Promise.allSettled([
        f.storage.enqueue(u1.tx, [message(7, { key: "b" })]),
        f.storage.enqueue(u2.tx, [message(8, { key: "a" })]),
      ]);
      const failed = results.filter((r) => r.status === "rejected");
      expect(failed).toHaveLength(1);
      const e = expectCode((failed[0] as PromiseRejectedResult).reason, "STORAGE");
      expect(e.retryable).toBe(true);
      expect((e.cause as { code?: string }).code).toBe("40P01");
      const [ok, bad] = results[0]!.status === "fulfilled" ? [u1, u2] : [u2, u1];
      await bad!.rollback();
      await ok!.commit();
      expect((await f.storage.stats()).pending).toBe(6);
    } finally {
      await f.close();
    }
  });
});

describe("postgresStorage: enqueue handles, ids, replay, stats, missing table, wake-up", () => {
  it("outbox.enqueue(sql, …) with the pool is CONFIG at once, even while the caller's transaction holds that key", async () => {
    const f = await postgresFixture();
    try {
      const outbox = createOutbox({ storage: f.storage });
      let refused: unknown;
      const t0 = Date.now();
      await f.sql.begin(async (tx) => {
        await outbox.enqueue(tx, "test.event", { n: 1 }, { key: "k" }); // holds the key's advisory lock
        // The pool runs on another connection: it would wait on that lock forever (no deadlock is detected).
        refused = await Promise.race([
          caught(outbox.enqueue(f.sql, "test.event", { n: 2 }, { key: "k" })),
          sleep(3_000).then(() => "hung"),
        ]);
      });
      expect(refused).not.toBe("hung");
      const e = expectCode(refused, "CONFIG");
      expect(e.message).toMatch(/not a transaction/);
      expect(e.message).toMatch(/standaloneEnqueue/);
      expect(Date.now() - t0).toBeLessThan(2_000);
      expect((await f.storage.stats()).pending).toBe(1); // only the transaction's message
    } finally {
      await f.close();
    }
  });

  it("standaloneEnqueue: true accepts the pool (its own transaction) and never hangs on a key the caller holds", async () => {
    const f = await postgresFixture();
    try {
      const standalone = postgresStorage(f.sql, { ...f.options, standaloneEnqueue: true });
      const outbox = createOutbox({ storage: standalone });
      await outbox.enqueue(f.sql, "test.event", { n: 1 }, { key: "k" });
      expect((await f.storage.stats()).pending).toBe(1);
      let refused: unknown;
      await f.sql.begin(async (tx) => {
        await outbox.enqueue(tx, "test.event", { n: 2 }, { key: "j" });
        refused = await Promise.race([
          caught(outbox.enqueue(f.sql, "test.event", { n: 3 }, { key: "j" })),
          sleep(15_000).then(() => "hung"),
        ]);
      });
      const e = expectCode(refused, "CONFIG");
      expect(e.message).toMatch(/waited 5 s for a key lock/);
      expect((await f.storage.stats()).pending).toBe(2);
    } finally {
      await f.close();
    }
  }, 30_000);

  it("replay re-enters at the tail of its key with a new seq: not claimable while a later message is leased, then after it", async () => {
    const f = await postgresFixture();
    try {
      const [a, b] = [message(1, { key: "k" }), message(2, { key: "k" })];
      await f.sql.begin((tx) => f.storage.enqueue(tx, [a, b]));
      const c1 = await f.storage.claim({ limit: 1, leaseMs: 10_000 });
      await f.storage.settle(c1.token, [{ id: a.id, outcome: "dead", error: "poison" }]);
      const c2 = await (await f.another()).claim({ limit: 10, leaseMs: 10_000 }); // another claimer leases b
      expect(c2.messages.map((m) => m.id)).toEqual([b.id]);
      expect(await f.storage.replayDead(a.id)).toBe(true);
      expect((await f.storage.claim({ limit: 10, leaseMs: 10_000 })).messages).toHaveLength(0); // b is in flight
      expect(await f.storage.hasDue()).toBe(false);
      await f.storage.settle(c2.token, [{ id: b.id, outcome: "delivered" }]);
      const c3 = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
      expect(c3.messages.map((m) => m.id)).toEqual([a.id]);
      expect(c3.messages[0]!.seq).toBeGreaterThan(c2.messages[0]!.seq);
      expect(c3.messages[0]!.attempts).toBe(1);
    } finally {
      await f.close();
    }
  });

  it("deep keys: a claim takes whole prefixes of about half the due keys, in due order, and the next claim the rest; shallow keys all fit in one claim", async () => {
    const f = await postgresFixture();
    try {
      // 10 keys x 30 rows, interleaved in commit order (k0, k1, …, k9, k0, …), all due since the same commit (their
      // key rows tie in due order: which keys a claim reads first among them is the database's choice).
      const deep = Array.from({ length: 300 }, (_, i) => message(i, { key: `k${i % 10}` }));
      await f.sql.begin((tx) => f.storage.enqueue(tx, deep));
      const perKey = (ms: readonly { key: string | null; id: string }[]): Map<string | null, string[]> => {
        const m = new Map<string | null, string[]>();
        for (const x of ms) m.set(x.key, [...(m.get(x.key) ?? []), x.id]);
        return m;
      };
      const queue = (key: string): string[] => deep.filter((m) => m.key === key).map((m) => m.id);
      const c1 = perKey((await f.storage.claim({ limit: 100, leaseMs: 10_000 })).messages);
      // ceil(100 / ceil(10 / 2)) = 20 rows of each key read, until 100 rows: 5 keys, each a prefix.
      expect(c1.size).toBe(5);
      for (const [key, got] of c1) expect(got).toEqual(queue(key!).slice(0, 20));
      // Those 5 keys are leased; the next claims (another connection) serve the others at once, without a settle:
      // again about half of the due keys each time (ceil(100 / ceil(5 / 2)) = 34 rows per key: three whole queues and
      // the first 10 of a fourth), then the rest.
      const other = await f.another();
      const c2 = perKey((await other.claim({ limit: 100, leaseMs: 10_000 })).messages);
      expect(c2.size).toBe(4);
      const lengths = [...c2].map(([key, got]) => {
        expect(c1.has(key)).toBe(false);
        expect(got).toEqual(queue(key!).slice(0, got.length));
        return got.length;
      });
      expect(lengths.sort((a, b) => a - b)).toEqual([10, 30, 30, 30]);
      const c3 = perKey((await other.claim({ limit: 100, leaseMs: 10_000 })).messages);
      expect(c3.size).toBe(1);
      const [k3, got3] = [...c3][0]!;
      expect(c1.has(k3) || c2.has(k3)).toBe(false);
      expect(got3).toEqual(queue(k3!));
      expect((await f.storage.claim({ limit: 100, leaseMs: 10_000 })).messages).toHaveLength(0);

      // Shallow keys (one row each) and keyless rows: one claim takes all 100, as before.
      const g = await postgresFixture();
      try {
        const shallow = Array.from({ length: 100 }, (_, i) => message(i, { key: i % 4 === 0 ? null : `s${i}` }));
        await g.sql.begin((tx) => g.storage.enqueue(tx, shallow));
        const c = await g.storage.claim({ limit: 100, leaseMs: 10_000 });
        expect(c.messages.map((m) => m.id).sort()).toEqual(shallow.map((m) => m.id).sort());
      } finally {
        await g.close();
      }
    } finally {
      await f.close();
    }
  });

  it("stats().oldestDueAgeMs counts from when a row became due; delayed and leased rows do not count", async () => {
    const f = await postgresFixture();
    try {
      expect((await f.storage.stats()).oldestDueAgeMs).toBeNull();
      await f.sql.begin((tx) => f.storage.enqueue(tx, [message(1, { delayMs: 60_000 })]));
      const delayed = await f.storage.stats();
      expect(delayed.oldestPendingAgeMs).not.toBeNull();
      expect(delayed.oldestDueAgeMs).toBeNull();
      await f.sql.begin((tx) => f.storage.enqueue(tx, [message(2)]));
      await sleep(300);
      const due = await f.storage.stats();
      expect(due.oldestDueAgeMs).toBeGreaterThanOrEqual(250);
      expect(due.oldestDueAgeMs).toBeLessThan(5_000);
      await f.storage.claim({ limit: 10, leaseMs: 10_000 });
      expect((await f.storage.stats()).oldestDueAgeMs).toBeNull();
    } finally {
      await f.close();
    }
  });

  it("every call on a table that does not exist is CONFIG saying to migrate or install postgresSchema()", async () => {
    const f = await postgresFixture();
    try {
      const missing = postgresStorage(f.sql, { schema: f.schema, table: "never_made" });
      const calls: [string, () => Promise<unknown>][] = [
        ["enqueue", () => f.sql.begin((tx) => missing.enqueue(tx, [message(1)]))],
        ["claim", () => missing.claim({ limit: 1, leaseMs: 1_000 })],
        ["settle", () => missing.settle(crypto.randomUUID(), [{ id: uuidv7(), outcome: "delivered" }])],
        ["hasDue", () => missing.hasDue()],
        ["stats", () => missing.stats()],
        ["listDead", () => missing.listDead({ limit: 1 })],
        ["replayDead", () => missing.replayDead(uuidv7())],
        ["purge", () => missing.purge({ status: "dead", olderThan: Date.now(), limit: 1 })],
      ];
      for (const [what, call] of calls) {
        const e = expectCode(await caught(call), "CONFIG");
        expect(e.message, what).toBe(
          `[edge-outbox:postgres] table ${f.schema}.never_made does not exist: call storage.migrate() or install the DDL from postgresSchema()`,
        );
      }
    } finally {
      await f.close();
    }
  });

  it("an all-keyless enqueue uses the keyless statement (no key locks, no key rows) and still checks ids and wakes; a call with any key uses the keyed one; one keyless message uses the typed one-row statement", async () => {
    const f = await postgresFixture();
    const listener = f.connect({ max: 2 });
    const controller = new AbortController();
    try {
      const sql = postgresSql({ schema: f.schema, table: "outbox" });
      const sent: string[] = [];
      const recording = (tx: PostgresExecutor): PostgresExecutor => ({ unsafe: (q, p, o) => (sent.push(q), tx.unsafe(q, p as never, o)) });
      const wakes: number[] = [];
      await postgresStorage(listener, f.options).subscribe!(() => wakes.push(1), controller.signal);
      const keyless = [message(1), message(2, { key: undefined }), message(3, { delayMs: 60_000 })];
      await f.sql.begin((tx) => f.storage.enqueue(recording(tx), keyless));
      expect(sent).toEqual([sql.enqueueKeyless]);
      await until(() => wakes.length > 0, 2_000, "the keyless enqueue's wake-up");
      // No key row, no advisory lock: a keyless call takes none.
      expect((await f.sql.unsafe(`SELECT count(*)::int AS n FROM "${f.schema}".outbox_keys`))[0]!["n"]).toBe(0);
      // A taken id is still CONFLICT, with nothing of the call kept.
      const again = message(4);
      expectCode(await caught(f.sql.begin((tx) => f.storage.enqueue(recording(tx), [again, keyless[0]!]))), "CONFLICT");
      expect(sent.slice(1, 3)).toEqual([sql.enqueueKeyless, sql.enqueueUndo]);
      sent.length = 0;
      await f.sql.begin((tx) => f.storage.enqueue(recording(tx), [message(5), message(6, { key: "k" })]));
      expect(sent).toEqual([sql.enqueue]);
      // One keyless message (the usual call) goes as typed parameters: the same row, wake-up and id check.
      sent.length = 0;
      const single = message(7, { delayMs: 0, headers: '{"x-h":"1"}' });
      const before = wakes.length;
      await f.sql.begin((tx) => f.storage.enqueue(recording(tx), [single]));
      expect(sent).toEqual([sql.enqueueOne]);
      await until(() => wakes.length > before, 2_000, "the single enqueue's wake-up");
      const e = expectCode(await caught(f.sql.begin((tx) => f.storage.enqueue(recording(tx), [{ ...message(8), id: single.id }]))), "CONFLICT");
      expect(e.message).toContain(`message id ${single.id} already exists`);
      await f.sql.begin(async (tx) => { // the transaction stays usable after a refused single enqueue
        expectCode(await caught(f.storage.enqueue(tx, [{ ...message(9), id: single.id }])), "CONFLICT");
        await f.storage.enqueue(tx, [message(10)]);
      });
      const claim = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
      expect(claim.messages.map((m) => (m.payload as { n: number }).n)).toEqual([1, 2, 5, 6, 7, 10]); // 3 is delayed; 4, 8, 9 refused
      expect(claim.messages.map((m) => m.key)).toEqual([null, null, null, "k", null, null]);
      expect(claim.messages[4]!.headers).toEqual({ "x-h": "1" });
      expect(claim.messages[4]!.body).toBe(single.payload);
    } finally {
      controller.abort();
      await f.close();
    }
  });

  it("notify: false: enqueues (one message, keyless, keyed) and replays call no pg_notify, and change nothing else; a notifying storage's enqueue after them is the only other notification", async () => {
    const f = await postgresFixture();
    const listener = f.connect({ max: 2 });
    const controller = new AbortController();
    try {
      const quiet = postgresStorage(f.sql, { ...f.options, notify: false });
      expect(quiet.notify).toBe(false);
      expect(f.storage.notify).toBe(true);
      const quietSql = postgresSql({ schema: f.schema, table: "outbox", notify: false });
      const loud = postgresSql({ schema: f.schema, table: "outbox" });
      for (const name of ["enqueue", "enqueueKeyless", "enqueueOne", "replayDead"] as const) {
        expect(loud[name]).toContain("pg_notify(");
        expect(quietSql[name]).not.toContain("pg_notify(");
      }
      // Every notification on the outbox's channel, with its payload (the storages notify with ''), in commit order.
      const heard: string[] = [];
      const sub = await listener.listen(f.storage.channel, (payload) => heard.push(payload));
      controller.signal.addEventListener("abort", () => void Promise.resolve(sub.unlisten()).catch(() => {}));
      // A dead letter to replay (a notifying enqueue: heard before the quiet calls start).
      const dead = message(0, { key: "k" });
      await f.sql.begin((tx) => f.storage.enqueue(tx, [dead]));
      await until(() => heard.length === 1, 2_000, "the notifying enqueue's notification");
      const c = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
      expect((await f.storage.settle(c.token, [{ id: dead.id, outcome: "dead", error: "x" }])).applied).toBe(1);
      await f.sql.begin((tx) => quiet.enqueue(tx, [message(1)]));
      await f.sql.begin((tx) => quiet.enqueue(tx, [message(2), message(3)]));
      await f.sql.begin((tx) => quiet.enqueue(tx, [message(4, { key: "k" }), message(5, { key: "j" })]));
      expect(await quiet.replayDead(dead.id)).toBe(true);
      await f.sql.begin((tx) => f.storage.enqueue(tx, [message(6)]));
      // Notifications reach a listener in commit order: once this marker is heard, any of the quiet calls' would be too.
      await f.sql.unsafe(`SELECT pg_notify($1, 'end')`, [f.storage.channel]);
      await until(() => heard.includes("end"), 2_000, "the marker notification");
      expect(heard).toEqual(["", "", "end"]);
      // The quiet calls wrote what the notifying ones write: every row claimable, keys in order, the replay at its key's tail.
      const got = await f.storage.claim({ limit: 20, leaseMs: 10_000 });
      expect(got.messages.map((m) => (m.payload as { n: number }).n)).toEqual([1, 2, 3, 4, 5, 0, 6]);
      expect(got.messages.filter((m) => m.key === "k").map((m) => m.id)).toEqual([got.messages[3]!.id, dead.id]);
      expect(got.messages.find((m) => m.id === dead.id)!.attempts).toBe(1);
    } finally {
      controller.abort();
      await f.close();
    }
  });

  it("subscribe: a wake arrives within milliseconds of the commit (LISTEN/NOTIFY), never before it", async () => {
    const f = await postgresFixture();
    const listener = f.connect({ max: 2 });
    const controller = new AbortController();
    try {
      const storage = postgresStorage(listener, f.options);
      expect(storage.channel).toBe(`edge_outbox:${f.schema}.outbox`);
      const wakes: number[] = [];
      await storage.subscribe!(() => wakes.push(performance.now()), controller.signal);
      const h = await reservedTransaction(f.sql);
      await f.storage.enqueue(h.tx, [message(1, { key: "k" })]);
      await sleep(200);
      expect(wakes).toHaveLength(0); // not before the commit
      const committed = performance.now();
      await h.commit();
      await until(() => wakes.length > 0, 2_000, "the wake-up");
      const lag = wakes[0]! - committed;
      console.log(`[subscribe] commit -> wake: ${lag.toFixed(1)} ms`);
      expect(lag).toBeLessThan(100); // milliseconds, not a poll interval (generous: the machine is loaded)
      // A rollback wakes nobody; a replay wakes; after abort nothing more arrives.
      const before = wakes.length;
      await caught(f.sql.begin(async (tx) => {
        await f.storage.enqueue(tx, [message(2)]);
        throw new Error("roll back");
      }));
      await sleep(200);
      expect(wakes.length).toBe(before);
      const c = await f.storage.claim({ limit: 1, leaseMs: 10_000 });
      await f.storage.settle(c.token, [{ id: c.messages[0]!.id, outcome: "dead", error: "x" }]);
      await f.storage.replayDead(c.messages[0]!.id);
      await until(() => wakes.length > before, 2_000, "the replay's wake-up");
      controller.abort();
      await sleep(100);
      const settled = wakes.length;
      await f.sql.begin((tx) => f.storage.enqueue(tx, [message(3)]));
      await sleep(300);
      expect(wakes.length).toBe(settled);
      // Two storages on different tables do not wake each other.
      expect(postgresStorage(listener, { schema: f.schema, table: "other" }).channel).not.toBe(storage.channel);
    } finally {
      controller.abort();
      await f.close();
    }
  });
});

/** The ErrorResponse PostgreSQL sends a session that `pg_terminate_backend` ends (FATAL 57P01), before it closes it. */
function terminationMessage(): Buffer {
  const fields = [["S", "FATAL"], ["V", "FATAL"], ["C", "57P01"], ["M", "terminating connection due to administrator command"]];
  const body = Buffer.from(fields.map(([k, v]) => `${k}${v}\0`).join("") + "\0");
  const head = Buffer.alloc(5);
  head.write("E", 0);
  head.writeInt32BE(4 + body.length, 1);
  return Buffer.concat([head, body]);
}

/**
 * A TCP proxy in front of the test server that ends its first connection the way `pg_terminate_backend` would at the
 * client's first statement after startup (a Parse or Query message): it answers FATAL 57P01 and closes, instead of
 * passing the statement on. Later connections pass through. Deterministic: the window between a connection's startup
 * and its first statement, where a real termination only lands now and then (e.g. under load), is hit every time.
 */
async function terminatingFirstStatement(): Promise<{ port: number; close(): Promise<void> }> {
  const url = new URL(PG_URL);
  const sockets = new Set<Socket>();
  let first = true;
  const server = createServer((side) => {
    const upstream = netConnect(Number(url.port || 5432), url.hostname);
    for (const s of [side, upstream]) {
      sockets.add(s);
      s.on("error", () => {});
    }
    upstream.pipe(side);
    let intercept = first;
    first = false;
    let pending = Buffer.alloc(0);
    let startupDone = false;
    side.on("data", (chunk: Buffer) => {
      if (!intercept) return void upstream.write(chunk);
      pending = Buffer.concat([pending, chunk]);
      // The startup message has no type byte (length, then the protocol); every later one is type + length.
      for (;;) {
        const typed = startupDone ? 1 : 0;
        if (pending.length < typed + 4) return;
        const size = typed + pending.readInt32BE(typed);
        if (pending.length < size) return;
        const type = startupDone ? String.fromCharCode(pending[0]!) : "";
        if (type === "P" || type === "Q") {
          intercept = false;
          upstream.unpipe(side);
          upstream.destroy();
          side.end(terminationMessage());
          return;
        }
        upstream.write(pending.subarray(0, size));
        pending = pending.subarray(size);
        startupDone = true;
      }
    });
    side.on("end", () => upstream.end());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  return {
    port: (server.address() as { port: number }).port,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe("postgresStorage: errors and dropped connections", () => {
  it("a new connection terminated at its first statement: with fetch_types: false, one retryable STORAGE error and nothing unhandled", async () => {
    // postgres.js 3.4 sends its array-type query (fetch_types, on by default) as a connection's first statement and
    // drops that query's promise (porsager/postgres#1192): terminated there, it becomes an unhandled rejection that
    // no caller can catch, and Node exits. The adapter binds no arrays (lists travel as JSON text), so it runs with
    // fetch_types: false, as the README advises; this is the case where that matters.
    const f = await postgresFixture();
    const proxy = await terminatingFirstStatement();
    const url = new URL(PG_URL);
    const sql = postgres({
      host: "127.0.0.1",
      port: proxy.port,
      database: url.pathname.slice(1),
      username: decodeURIComponent(url.username),
      max: 1,
      fetch_types: false,
      onnotice: () => {},
    });
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown): void => void unhandled.push(e);
    process.on("unhandledRejection", onUnhandled);
    try {
      const storage = postgresStorage(sql, f.options);
      const e = expectCode(await caught(storage.stats()), "STORAGE");
      expect(e.retryable).toBe(true);
      expect(isConnectionError(e.cause)).toBe(true);
      // The next connection passes through. (postgres.js 3.4 may hand the ended session's error to the first statement
      // after the reconnect once more, porsager/postgres#1223: a retryable STORAGE error too.)
      let stats: Awaited<ReturnType<typeof storage.stats>> | undefined;
      for (let attempt = 0; stats === undefined; attempt++) {
        try {
          stats = await storage.stats();
        } catch (again) {
          expect(attempt).toBeLessThan(2);
          expect(expectCode(again, "STORAGE").retryable).toBe(true);
        }
      }
      expect(stats.pending).toBe(0);
      await sleep(50);
      expect(unhandled.map(String)).toEqual([]);
    } finally {
      process.off("unhandledRejection", onUnhandled);
      await sql.end({ timeout: 1 });
      await proxy.close();
      await f.close();
    }
  });

  it("connection refused: a retryable STORAGE error with the driver cause, at once, after a single attempt", async () => {
    let attempts = 0;
    const sql = postgres({
      host: "127.0.0.1",
      port: 1,
      max: 2,
      connect_timeout: 2,
      onnotice: () => {},
      // Count the driver's connection attempts (a retry storm would show here).
      socket: () => {
        attempts++;
        return netConnect(1, "127.0.0.1");
      },
    } as postgres.Options<Record<string, postgres.PostgresType>>);
    try {
      const storage = postgresStorage(sql);
      const start = Date.now();
      const e = expectCode(await caught(storage.claim({ limit: 1, leaseMs: 1_000 })), "STORAGE");
      expect(Date.now() - start).toBeLessThan(2_000);
      expect(attempts).toBe(1);
      expect(e.retryable).toBe(true);
      expect(e.message).toMatch(/^\[edge-outbox:postgres\] claim failed: /);
      expect((e.cause as { code?: string }).code).toBe("ECONNREFUSED");
      expect(isConnectionError(e.cause)).toBe(true);
      expectCode(await caught(storage.migrate()), "STORAGE");
    } finally {
      await sql.end({ timeout: 1 });
    }
  });

  it("classifies driver errors: connection and conflict errors are retryable, SQL errors are not", () => {
    for (const code of ["40001", "40P01", "55P03", "57P01", "08006", "ECONNRESET", "CONNECTION_CLOSED", "CONNECT_TIMEOUT"]) {
      expect(isRetryableError({ code }), code).toBe(true);
    }
    for (const code of ["23505", "42P01", "42601", "CONNECTION_ENDED", undefined]) expect(isRetryableError({ code }), code).toBe(false);
    expect(isConnectionError({ code: "57P01" })).toBe(true);
    expect(isConnectionError({ code: "23505" })).toBe(false);
  });

  it("backends terminated mid-drain: the drain rejects with a retryable STORAGE error; the next drain delivers the rest", async () => {
    const f = await postgresFixture();
    const relayApp = `${f.appName}-relay`;
    // lock_timeout: a drain that settles its unsent rows (released) after the kill must not wait on the blocker forever.
    // fetch_types: false: a relay connection still starting when the kill lands (seen under load) would otherwise make
    // postgres.js leak an unhandled rejection from its array-type query (see "terminated at its first statement").
    const relaySql = f.connect({
      max: 2,
      fetch_types: false,
      connection: { application_name: relayApp, lock_timeout: 2_000 },
    });
    const admin = f.connect({ max: 2, connection: { application_name: `${f.appName}-admin` } });
    try {
      const all = Array.from({ length: 40 }, (_, i) => message(i));
      await f.sql.begin((tx) => f.storage.enqueue(tx, all));
      const storage = postgresStorage(relaySql, f.options);
      const transport = recordingTransport({ delayMs: 10 });
      const relay = createRelay({ outbox: createOutbox({ storage }), transport, batchSize: 10, concurrency: 2, leaseMs: 1_000, sendTimeoutMs: 400 });
      // A blocker that row-locks every row as soon as the first batch is being sent: the relay's settle then waits
      // on a row lock, so its query is in flight when its backends are terminated.
      const blocker = await reservedTransaction(admin);
      const drain = relay.drain({ budgetMs: 20_000 });
      drain.catch(() => {});
      await until(() => transport.attempts.length > 0, 5_000, "the first send");
      await blocker.tx.unsafe(`SELECT seq FROM "${f.schema}".outbox FOR UPDATE`);
      await until(() => waitingOnLock(admin, relayApp), 5_000, "the relay's settle to wait on the row locks");
      const killed = await admin`select pg_terminate_backend(pid) as ok from pg_stat_activity where application_name = ${relayApp}`;
      expect(killed.length).toBeGreaterThan(0);
      const e = expectCode(await caught(drain), "STORAGE");
      expect(e.retryable).toBe(true);
      await blocker.rollback();
      await sleep(1_100); // the dead drain's lease expires
      // The same client reconnects by itself (a pooled connection killed while idle fails its next query once).
      const pending = async (): Promise<number> => {
        for (let attempt = 0; ; attempt++) {
          try {
            return (await storage.stats()).pending;
          } catch (e) {
            if (attempt >= 3 || !(e as OutboxError).retryable) throw e;
          }
        }
      };
      // postgres.js 3.4 hands a terminated session's error to the first statement after the reconnect
      // (porsager/postgres#1223), so a drain here may fail after its claim: those rows stay leased for leaseMs (1 s),
      // and back-to-back drains would all find nothing due meanwhile. Drain until empty, pausing when nothing was due.
      const deadline = Date.now() + 15_000;
      while ((await pending()) > 0 && Date.now() < deadline) {
        const report = await relay.drain({ budgetMs: 5_000 }).catch(() => null);
        if (report === null || report.claimed === 0) await sleep(100);
      }
      const delivered = new Set(transport.delivered.map((m) => m.id));
      for (const m of all) expect(delivered.has(m.id), m.id).toBe(true);
      expect(await pending()).toBe(0);
    } finally {
      await f.close();
    }
  });

  it("fails (never skips) with a message saying how to start the server when it is unreachable", async () => {
    const { unreachable } = await import("./postgres-fixtures.ts");
    const e = unreachable(new Error("connect ECONNREFUSED"));
    expect(e.message).toContain(START_HINT);
    expect(e.message).toContain(PG_URL);
  });
});

describe("advisoryLockKey", () => {
  it("matches the documented SQL (first 8 bytes of SHA-256, signed big-endian)", async () => {
    const sql = connect(`eo-test-key-${randomSuffix()}`, { max: 1 });
    try {
      for (const key of ["edge-outbox:relay", "", "ключ 🚀", "a".repeat(500)]) {
        const [row] = await sql.unsafe(`SELECT (${ADVISORY_KEY_SQL})::text AS k`, [key]);
        expect(row!["k"], key).toBe((await advisoryLockKey(key)).toString());
      }
    } finally {
      await sql.end({ timeout: 5 });
    }
  });
});
