// pgAdvisoryLock on the machine's PostgreSQL server: exclusive across clients, busy is null, release, a killed
// connection fires the lease's signal and frees the lock, expiry, and the relay's lock-busy skip.
import { connect as netConnect } from "node:net";
import postgres from "postgres";
import { afterAll, describe, expect, it } from "vitest";
import { recordingTransport } from "../adapters/memory/mod.ts";
import { advisoryLockKey, pgAdvisoryLock } from "../adapters/postgres/mod.ts";
import { isOutboxError } from "../src/errors.ts";
import { createOutbox, createRelay } from "../mod.ts";
import { uuidv7 } from "../src/message.ts";
import { connect, postgresFixture, randomSuffix, type Sql } from "./postgres-fixtures.ts";

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const app = `eo-test-lock-${randomSuffix()}`;
const clients: Sql[] = [];
const client = (name = app, max = 2): Sql => {
  const c = connect(name, { max });
  clients.push(c);
  return c;
};
afterAll(async () => {
  await Promise.all(clients.map((c) => c.end({ timeout: 1 }).catch(() => {})));
});

/** Backend pids holding the session advisory lock of `key` (asked from another connection). */
async function holders(admin: Sql, key: string): Promise<number[]> {
  const k = (await advisoryLockKey(key)).toString();
  const rows = await admin.unsafe(
    `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted
       AND ((classid::bigint << 32) | objid::bigint) = $1::bigint`,
    [k],
  );
  return rows.map((r) => r["pid"] as number);
}

/**
 * The client `base` with failures injected into the lease's status query (the one asking `pg_locks` through the pool):
 * the next `failures.count` such queries reject like a dropped connection.
 */
function flakyChecks(base: Sql): { client: Sql; failures: { count: number; seen: number } } {
  const failures = { count: 0, seen: 0 };
  const client = new Proxy(base, {
    get(target, prop, receiver) {
      if (prop !== "unsafe") return Reflect.get(target, prop, receiver);
      return (query: string, params?: never[], options?: never) => {
        if (query.includes("pg_locks")) {
          failures.seen++;
          if (failures.count > 0) {
            failures.count--;
            return Promise.reject(Object.assign(new Error("injected: connection reset"), { code: "ECONNRESET" }));
          }
        }
        return target.unsafe(query, params, options);
      };
    },
  });
  return { client, failures };
}

/** Connections of `appName` the server sees. */
async function sessions(admin: Sql, appName: string): Promise<number> {
  const [row] = await admin`select count(*)::int as n from pg_stat_activity where application_name = ${appName}`;
  return row!["n"] as number;
}

describe("pgAdvisoryLock", () => {
  it("is exclusive across two clients: busy is null; release frees it; no connection is leaked", async () => {
    const key = `test:${randomSuffix()}`;
    const a = pgAdvisoryLock(client()), b = pgAdvisoryLock(client());
    const admin = client();
    const lease = await a.acquire(key, 10_000);
    expect(lease).not.toBeNull();
    expect(lease!.key).toBe(key);
    expect(await holders(admin, key)).toHaveLength(1);
    expect(await b.acquire(key, 10_000)).toBeNull();
    expect(await a.acquire(key, 10_000)).toBeNull(); // a session lock is re-entrant per session, not per client: busy
    expect(await b.acquire(`${key}:other`, 10_000)).not.toBeNull(); // another key is independent
    await lease!.release();
    await lease!.release(); // a no-op
    expect(await holders(admin, key)).toHaveLength(0);
    // Many cycles on a client of 2 connections: every busy attempt and every release gives its connection back.
    const c = pgAdvisoryLock(client(app, 2));
    for (let i = 0; i < 20; i++) {
      const l = await c.acquire(key, 10_000);
      expect(l).not.toBeNull();
      expect(await c.acquire(key, 10_000)).toBeNull();
      await l!.release();
    }
    const busy = await admin`select count(*)::int as n from pg_stat_activity where application_name = ${app} and state = 'idle in transaction'`;
    expect(busy[0]!["n"]).toBe(0); // it never holds a transaction open
  });

  it("a killed connection fires lease.signal and frees the lock for others", async () => {
    const key = `test:${randomSuffix()}`;
    const holderApp = `${app}-holder`;
    const lock = pgAdvisoryLock(client(holderApp), { checkIntervalMs: 50 });
    const other = pgAdvisoryLock(client());
    const admin = client();
    const lease = await lock.acquire(key, 60_000);
    expect(lease).not.toBeNull();
    const [pid] = await holders(admin, key);
    expect(await other.acquire(key, 1_000)).toBeNull();
    await admin`select pg_terminate_backend(${pid!})`;
    const reason = await new Promise<unknown>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error("lease.signal did not fire")), 3_000);
      lease!.signal.addEventListener("abort", () => {
        clearTimeout(t);
        resolve(lease!.signal.reason);
      }, { once: true });
    });
    expect(isOutboxError(reason, "LEASE_LOST")).toBe(true);
    expect(await lease!.extend(1_000)).toBe(false);
    await lease!.release(); // never throws, never touches the dead connection
    const next = await other.acquire(key, 1_000);
    expect(next).not.toBeNull();
    await next!.release();
    // The holder's client still works (postgres.js reconnects) and can take the lock again.
    const again = await lock.acquire(key, 1_000);
    expect(again).not.toBeNull();
    await again!.release();
  });

  it("expires after leaseMs unless extended; extend keeps it", async () => {
    const key = `test:${randomSuffix()}`;
    const lock = pgAdvisoryLock(client(), { checkIntervalMs: 1_000 });
    const admin = client();
    const lease = await lock.acquire(key, 150);
    expect(await lease!.extend(400)).toBe(true);
    await sleep(250);
    expect(lease!.signal.aborted).toBe(false);
    await sleep(300);
    expect(lease!.signal.aborted).toBe(true);
    expect(isOutboxError(lease!.signal.reason, "LEASE_LOST")).toBe(true);
    await lease!.release();
    expect(await holders(admin, key)).toHaveLength(0);
  });

  it("a relay with the lock skips with lock-busy while another holds it, then drains", async () => {
    const f = await postgresFixture();
    try {
      await f.sql.begin((tx) => f.storage.enqueue(tx, [1, 2, 3].map((n) => ({
        id: uuidv7(), topic: "test.event", key: null, payload: JSON.stringify({ n }), headers: "{}", delayMs: 0,
      }))));
      const elsewhere = await pgAdvisoryLock(f.connect({ max: 2 })).acquire(`edge-outbox:relay:${f.storage.scope}`, 10_000);
      const transport = recordingTransport();
      const relay = createRelay({ outbox: createOutbox({ storage: f.storage }), transport, lock: pgAdvisoryLock(f.sql) });
      expect(await relay.drain()).toMatchObject({ skipped: "lock-busy", claimed: 0 });
      await elsewhere!.release();
      const ok = await relay.drain();
      expect(ok.delivered).toBe(3);
      expect(ok.skipped).toBe(undefined);
      expect(await holders(f.sql, `edge-outbox:relay:${f.storage.scope}`)).toHaveLength(0); // released after the drain
    } finally {
      await f.close();
    }
  });

  it("a store failure is a LOCK error; a client with max < 2 and bad options are CONFIG", async () => {
    const refused = postgres({
      host: "127.0.0.1",
      port: 1,
      max: 2,
      connect_timeout: 2,
      socket: () => netConnect(1, "127.0.0.1"),
    } as postgres.Options<Record<string, postgres.PostgresType>>);
    try {
      let caught: unknown;
      try {
        await pgAdvisoryLock(refused).acquire("k", 1_000);
      } catch (e) {
        caught = e;
      }
      expect(isOutboxError(caught, "LOCK")).toBe(true);
      expect((caught as { retryable: boolean }).retryable).toBe(true);
    } finally {
      await refused.end({ timeout: 1 });
    }
    const one = client(app, 1);
    expect(() => pgAdvisoryLock(one)).toThrow(/max >= 2/);
    expect(() => pgAdvisoryLock(client(), { checkIntervalMs: 0 })).toThrow(/checkIntervalMs/);
    expect(() => pgAdvisoryLock({} as never)).toThrow(/postgres.js client/);
  });

  it("a failed pg_locks check at release still unlocks and gives the connection back (retried, not memoised)", async () => {
    const key = `test:${randomSuffix()}`;
    const base = client(`${app}-flaky`, 2);
    const { client: flaky, failures } = flakyChecks(base);
    const lock = pgAdvisoryLock(flaky, { checkIntervalMs: 60_000 });
    const other = pgAdvisoryLock(client());
    const admin = client();
    const lease = await lock.acquire(key, 30_000);
    expect(lease).not.toBeNull();
    failures.count = 1; // the release's first check fails
    const t0 = Date.now();
    await lease!.release();
    expect(Date.now() - t0).toBeLessThan(2_500); // bounded
    const next = await other.acquire(key, 1_000);
    expect(next, "the lock stayed held after a failed check").not.toBeNull();
    await next!.release();
    expect(failures.seen).toBeGreaterThanOrEqual(2); // asked again after the failure
    // The reserved connection went back to the pool: on a pool of 2, acquire/release cycles and queries still run.
    for (let i = 0; i < 5; i++) {
      const l = await lock.acquire(key, 5_000);
      expect(l).not.toBeNull();
      await l!.release();
    }
    expect(await base`select 1 as one`).toEqual([{ one: 1 }]);
  });

  it("when the pool never answers, the server ends the held session after the lease + 2 s and frees the lock", async () => {
    const key = `test:${randomSuffix()}`;
    const holderApp = `${app}-mute-${randomSuffix()}`;
    const base = client(holderApp, 2);
    const { client: mute, failures } = flakyChecks(base);
    const lock = pgAdvisoryLock(mute, { checkIntervalMs: 50, releaseWaitMs: 200 });
    const other = pgAdvisoryLock(client());
    const admin = client();
    const lease = await lock.acquire(key, 300);
    expect(lease).not.toBeNull();
    failures.count = 1_000_000; // every check fails from now on
    await new Promise<void>((resolve) => lease!.signal.addEventListener("abort", () => resolve(), { once: true }));
    expect(String((lease!.signal.reason as Error).message)).toMatch(/could not be verified/);
    const t0 = Date.now();
    await lease!.release();
    expect(Date.now() - t0).toBeLessThan(1_000); // release resolves within releaseWaitMs (+ slack)
    const start = Date.now();
    let next = await other.acquire(key, 1_000);
    while (next === null && Date.now() - start < 8_000) {
      await sleep(100);
      next = await other.acquire(key, 1_000);
    }
    expect(next, "the lock was never freed").not.toBeNull();
    expect(Date.now() - start).toBeLessThan(6_000);
    await next!.release();
    // postgres.js took the ended session back: the holder's pool still works, nothing leaked on the server.
    expect(await base`select 2 as two`).toEqual([{ two: 2 }]);
    expect(await sessions(admin, holderApp)).toBeLessThanOrEqual(2);
  });

  it("behind a transaction-mode pooler (statements on different sessions) acquire refuses with CONFIG and holds nothing", async () => {
    const key = `test:${randomSuffix()}`;
    const base = client(`${app}-pooler`, 3);
    const admin = client();
    const released: number[] = [];
    // A transaction-mode pooler hands every autocommit statement of one client connection to whichever server
    // session is free (PgBouncer docs, pool_mode = transaction: "a server connection is assigned to a client only
    // during a transaction"). Model it: a "reserved" connection whose statements alternate between two real sessions.
    const pooled = Object.assign(Object.create(null) as object, {
      unsafe: base.unsafe.bind(base),
      options: { max: 3 },
      reserve: async () => {
        const a = await base.reserve(), b = await base.reserve();
        let n = 0;
        return {
          unsafe: (q: string, p?: never[], o?: never) => (n++ % 2 === 0 ? a : b).unsafe(q, p, o),
          release: () => {
            a.release();
            b.release();
            released.push(1);
          },
        };
      },
    });
    const lock = pgAdvisoryLock(pooled as never);
    const e = await lock.acquire(key, 5_000).then(() => null, (x: unknown) => x);
    expect(isOutboxError(e, "CONFIG"), String(e)).toBe(true);
    expect(String((e as Error).message)).toMatch(/transaction-mode pooler/);
    expect(await holders(admin, key)).toHaveLength(0);
    expect(released).toHaveLength(1);
  });
});
