// pgAdvisoryLock on the machine's PostgreSQL server: exclusive across clients, busy is null, release, a killed
// connection fires the lease's signal and frees the lock, expiry, and the relay's lock-busy skip.
import { connect as netConnect, createServer, type Socket } from "node:net";
import postgres from "postgres";
import { afterAll, describe, expect, it } from "vitest";
import { recordingTransport } from "../adapters/memory/mod.ts";
import { advisoryLockKey, pgAdvisoryLock } from "../adapters/postgres/mod.ts";
import { isOutboxError } from "../src/errors.ts";
import type { Lease, Lock } from "../src/lock.ts";
import { createOutbox, createRelay } from "../mod.ts";
import { uuidv7 } from "../src/message.ts";
import { connect, PG_URL, postgresFixture, randomSuffix, type Sql } from "./postgres-fixtures.ts";

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

/**
 * A TCP proxy in front of the test server whose `cut(pid)` closes the connection of backend `pid` on the client's side
 * only, and resolves once postgres.js has seen it close: the client lost its socket while the server keeps the session
 * (and its locks), as when the network drops a connection the server has not noticed yet. `sql` is a client (`max` 2)
 * through it.
 */
async function cuttable(appName: string): Promise<{ sql: Sql; cut(pid: number): Promise<void>; close(): Promise<void> }> {
  let closes = 0;
  const url = new URL(PG_URL);
  const pairs: { side: Socket; upstream: Socket }[] = [];
  const server = createServer((side) => {
    const upstream = netConnect(Number(url.port || 5432), url.hostname);
    pairs.push({ side, upstream });
    for (const s of [side, upstream]) s.on("error", () => {});
    side.pipe(upstream, { end: false }); // a cut client side leaves the server's side open
    upstream.pipe(side);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const port = (server.address() as { port: number }).port;
  const sql = postgres({
    host: "127.0.0.1",
    port,
    database: url.pathname.slice(1),
    username: decodeURIComponent(url.username),
    max: 2,
    onnotice: () => {},
    onclose: () => void closes++,
    connection: { application_name: appName },
  }) as unknown as Sql;
  const admin = client();
  return {
    sql,
    async cut(pid) {
      // The backend's client_port is the local port of the proxy's upstream socket.
      const [row] = await admin`select client_port from pg_stat_activity where pid = ${pid}`;
      const pair = pairs.find((p) => p.upstream.localPort === row?.["client_port"]);
      if (!pair) throw new Error(`no proxied connection for backend ${pid}`);
      const before = closes;
      pair.side.destroy();
      // Resolves once postgres.js has seen its socket close (its onclose option), while the server keeps the session.
      const start = Date.now();
      while (closes === before) {
        if (Date.now() - start > 5_000) throw new Error("postgres.js never saw the cut connection close");
        await sleep(5);
      }
    },
    close: async () => {
      await sql.end({ timeout: 1 }).catch(() => {});
      for (const p of pairs) p.upstream.destroy(), p.side.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Runs `fn`, collecting the uncaught exceptions and unhandled rejections the process sees meanwhile. */
async function uncaughtDuring(fn: () => Promise<void>): Promise<unknown[]> {
  const seen: unknown[] = [];
  const onError = (e: unknown): void => void seen.push(e);
  process.on("uncaughtException", onError);
  process.on("unhandledRejection", onError);
  try {
    await fn();
    await sleep(100); // a write postgres.js deferred with setImmediate, and a rejection nobody awaited, show by now
  } finally {
    process.off("uncaughtException", onError);
    process.off("unhandledRejection", onError);
  }
  return seen;
}

/**
 * Resolves with the signal's reason once it has fired (at once when it already has: the lock may notice a closed
 * connection before the awaited statement that closed it answers); rejects after `ms`.
 */
function aborted(signal: AbortSignal, ms: number): Promise<unknown> {
  if (signal.aborted) return Promise.resolve(signal.reason);
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("lease.signal did not fire")), ms);
    signal.addEventListener("abort", () => (clearTimeout(t), resolve(signal.reason)), { once: true });
  });
}

/** Tries `lock.acquire(key)` every `everyMs` until it gets the lock or `withinMs` have passed: the lease, or null. */
async function acquireWithin(lock: Lock, key: string, withinMs: number, everyMs: number): Promise<Lease | null> {
  const start = Date.now();
  let lease = await lock.acquire(key, 1_000);
  while (lease === null && Date.now() - start < withinMs) {
    await sleep(everyMs);
    lease = await lock.acquire(key, 1_000);
  }
  return lease;
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
    const reason = await aborted(lease!.signal, 3_000);
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
    const next = await acquireWithin(other, key, 8_000, 100);
    expect(next, "the lock was never freed").not.toBeNull();
    expect(Date.now() - start).toBeLessThan(6_000);
    await next!.release();
    // postgres.js took the ended session back: the holder's pool still works, nothing leaked on the server.
    expect(await base`select 2 as two`).toEqual([{ two: 2 }]);
    expect(await sessions(admin, holderApp)).toBeLessThanOrEqual(2);
  });

  it("a reserved connection closed on the client's side (the server keeps the session): release never writes to it, ends the session and frees the lock", async () => {
    const key = `test:${randomSuffix()}`;
    const holderApp = `${app}-cut-${randomSuffix()}`;
    const proxy = await cuttable(holderApp);
    try {
      const lock = pgAdvisoryLock(proxy.sql, { checkIntervalMs: 60_000 });
      const other = pgAdvisoryLock(client());
      const admin = client();
      const lease = await lock.acquire(key, 30_000);
      expect(lease).not.toBeNull();
      const [pid] = await holders(admin, key);
      const uncaught = await uncaughtDuring(async () => {
        await proxy.cut(pid!);
        expect(await holders(admin, key)).toEqual([pid]); // the server still has the session and the lock
        // Before the fix, release asked the pool (alive, held) and wrote the unlock on the closed connection:
        // postgres.js threw "Cannot read properties of null (reading 'write')" from a setImmediate.
        const t0 = Date.now();
        await lease!.release();
        expect(Date.now() - t0).toBeLessThan(2_500);
      });
      expect(uncaught.map(String)).toEqual([]);
      // The session was ended through the pool: the lock is free now, not only at the idle-session deadline (32 s).
      const next = await acquireWithin(other, key, 2_000, 50);
      expect(next, "the lost session still holds the lock").not.toBeNull();
      await next!.release();
      expect(await proxy.sql`select 3 as three`).toEqual([{ three: 3 }]); // the pool replaced the closed connection
    } finally {
      await proxy.close();
    }
  });

  it("a reserved connection closed on the client's side: the lease is lost at the next check, and extend never writes to it", async () => {
    const key = `test:${randomSuffix()}`;
    const proxy = await cuttable(`${app}-cut-${randomSuffix()}`);
    try {
      const lock = pgAdvisoryLock(proxy.sql, { checkIntervalMs: 60_000 });
      const admin = client();
      const lease = await lock.acquire(key, 30_000);
      expect(lease).not.toBeNull();
      const uncaught = await uncaughtDuring(async () => {
        await proxy.cut((await holders(admin, key))[0]!);
        // Before the fix: status alive and held, then the write threw (uncaught) and extend never settled.
        const extended = await Promise.race([lease!.extend(10_000), sleep(3_000).then(() => "no answer")]);
        expect(extended).toBe(false);
        expect(lease!.signal.aborted).toBe(true);
        expect(String((lease!.signal.reason as Error).message)).toMatch(/lost with its connection/);
        await lease!.release();
      });
      expect(uncaught.map(String)).toEqual([]);
      // With a short check interval the loss shows without any call: no query is needed to notice it.
      const fast = pgAdvisoryLock(proxy.sql, { checkIntervalMs: 20 });
      const l2 = await fast.acquire(`${key}:2`, 30_000);
      expect(l2).not.toBeNull();
      const uncaught2 = await uncaughtDuring(async () => {
        await proxy.cut((await holders(admin, `${key}:2`))[0]!);
        await aborted(l2!.signal, 3_000);
        await l2!.release();
      });
      expect(uncaught2.map(String)).toEqual([]);
    } finally {
      await proxy.close();
    }
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

  it("behind a pooler that reuses the most recent server session for every client (PgBouncer's default), acquire refuses with CONFIG", async () => {
    // PgBouncer hands the most recently used server connection to the next transaction (server_round_robin = 0): on a
    // lightly loaded pool, the reserved connection's statements AND the pool's land on one server session. Before this
    // check, acquire took the lock there (by hand against PgBouncer 1.18 in transaction mode: two clients both "held"
    // one key, and after both released the lock stayed held on the server session). Model it: one real session
    // serves the "pool" and the "reserved connection" alike.
    const key = `test:${randomSuffix()}`;
    const base = client(`${app}-lifo`, 2);
    const admin = client();
    const session = await base.reserve();
    const released: number[] = [];
    const pooled = Object.assign(Object.create(null) as object, {
      unsafe: (q: string, p?: never[], o?: never) => session.unsafe(q, p, o),
      options: { max: 2 },
      reserve: async () => ({
        unsafe: (q: string, p?: never[], o?: never) => session.unsafe(q, p, o),
        release: () => released.push(1),
      }),
    });
    try {
      const lock = pgAdvisoryLock(pooled as never);
      const e = await lock.acquire(key, 5_000).then((l) => l, (x: unknown) => x);
      const took = e !== null && !isOutboxError(e);
      if (took) await (e as Lease).release();
      expect(isOutboxError(e, "CONFIG"), took ? "acquire took the lock on the shared session" : String(e)).toBe(true);
      expect(String((e as Error).message)).toMatch(/transaction-mode pooler/);
      expect(await holders(admin, key)).toHaveLength(0); // given up again, not left on the shared session
      expect(released).toHaveLength(1);
    } finally {
      session.release();
    }
  });
});
