/**
 * `pgAdvisoryLock`: the {@link Lock} contract on a PostgreSQL session advisory lock, held on a connection reserved
 * from your postgres.js pool. It holds no transaction open. PostgreSQL drops the lock when that session ends, so a
 * crashed relay never keeps the lock.
 *
 * @module
 */
import { OutboxError, toOutboxError } from "../../src/errors.ts";
import type { Lease, Lock } from "../../src/lock.ts";
import {
  hasMethod,
  isConnectionError,
  isRetryableError,
  num,
  type PostgresLockClient,
  type PostgresReservedConnection,
  PREFIX,
} from "./client.ts";

/**
 * How a lock key string becomes the `bigint` key of `pg_try_advisory_lock(bigint)`: the first 8 bytes of the SHA-256
 * digest of the key's UTF-8 bytes, read as a signed big-endian 64-bit integer. The same value in SQL (PostgreSQL 11+),
 * `$1` being the key: this constant. Use it to find a holder: `SELECT pid FROM pg_locks WHERE locktype = 'advisory'
 * AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = <key>`.
 */
export const ADVISORY_KEY_SQL: string =
  `('x' || left(encode(sha256(convert_to($1::text, 'UTF8')), 'hex'), 16))::bit(64)::bigint`;

const TRY_LOCK_SQL = `SELECT pg_try_advisory_lock($1::bigint) AS ok, pg_backend_pid() AS pid`;
const UNLOCK_SQL = `SELECT pg_advisory_unlock($1::bigint) AS ok`;
/** Whether backend `$1` holds the session advisory lock `$2`: asked through the pool, never the reserved connection. */
const HELD_SQL = `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = $1::int AND objsubid = 1
  AND granted AND ((classid::bigint << 32) | objid::bigint) = $2::bigint) AS held`;

/**
 * Hashes a lock key to the signed 64-bit advisory-lock key (see {@link ADVISORY_KEY_SQL}). Deterministic across
 * processes, runtimes and library versions.
 *
 * @param key the lock key, e.g. "edge-outbox:relay"
 * @returns the bigint key
 * @example
 * ```ts
 * import { advisoryLockKey } from "edge-outbox/postgres";
 * const k = await advisoryLockKey("edge-outbox:relay");
 * // await sql`select pid from pg_locks where locktype = 'advisory' and ((classid::bigint << 32) | objid::bigint) = ${k.toString()}`
 * ```
 */
export async function advisoryLockKey(key: string): Promise<bigint> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(key)));
  let x = 0n;
  for (let i = 0; i < 8; i++) x = (x << 8n) | BigInt(digest[i]!);
  return BigInt.asIntN(64, x);
}

/** Options of {@link pgAdvisoryLock}. */
export interface PgAdvisoryLockOptions {
  /**
   * How often a held lease checks, through another pooled connection, that its session still holds the lock; the
   * lease's signal fires within about this long after the connection is lost. @default 1000
   */
  checkIntervalMs?: number;
}

function lockError(what: string, e: unknown): OutboxError {
  return toOutboxError("LOCK", `${PREFIX} advisory lock: ${what} failed`, e, isRetryableError(e) || isConnectionError(e));
}

function unref(timer: unknown): void {
  (timer as { unref?: () => void } | undefined)?.unref?.();
}

/**
 * Creates a {@link Lock} on PostgreSQL session advisory locks (`pg_try_advisory_lock`), for `createRelay({ lock })`.
 *
 * - `acquire(key, leaseMs)` reserves one connection (`sql.reserve()`) and tries the lock once: `null` when another
 *   session holds it (the connection goes back to the pool). Keys are hashed with {@link advisoryLockKey}.
 * - While held, the connection stays reserved, idle, with no transaction open. Every `checkIntervalMs` the lease asks
 *   `pg_locks`, through another pooled connection, whether that backend still holds the lock; when the connection
 *   died (server restart, `pg_terminate_backend`, network), PostgreSQL has released the lock and `lease.signal`
 *   fires. (It never sends anything on a reserved connection that may be dead: postgres.js 3.4 throws an uncaught
 *   TypeError when a query is written to a reserved connection whose socket already closed.)
 * - The lease also ends after `leaseMs` unless extended: the lock is released and the signal fires.
 * - `release()` unlocks and returns the connection to the pool.
 *
 * The client needs `max` of at least 2 (one connection reserved while held, one for the checks and the relay).
 *
 * @param sql your postgres.js client (`postgres(url)`), typed structurally
 * @param options `checkIntervalMs` (default 1000)
 * @returns the lock
 * @throws {OutboxError} CONFIG for a bad option or a client with `max` below 2; `acquire` rejects with LOCK when the
 *   database fails (busy is a `null` result, not an error)
 * @example
 * ```ts
 * import postgres from "postgres";
 * import { createRelay } from "edge-outbox";
 * import { pgAdvisoryLock, postgresStorage } from "edge-outbox/postgres";
 *
 * const sql = postgres(process.env.DATABASE_URL!, { max: 4 });
 * const relay = createRelay({ outbox, transport, lock: pgAdvisoryLock(sql) });
 * const report = await relay.drain({ budgetMs: 10_000 });
 * if (report.skipped === "lock-busy") console.log("another drain holds the lock");
 * ```
 */
export function pgAdvisoryLock(sql: PostgresLockClient, options: PgAdvisoryLockOptions = {}): Lock {
  const checkIntervalMs = options?.checkIntervalMs ?? 1_000;
  if (!Number.isInteger(checkIntervalMs) || checkIntervalMs < 10 || checkIntervalMs > 3_600_000) {
    throw new OutboxError("CONFIG", `${PREFIX} pgAdvisoryLock options: checkIntervalMs must be an integer between 10 and 3600000`);
  }
  if (!hasMethod(sql, "unsafe") || !hasMethod(sql, "reserve")) {
    throw new OutboxError("CONFIG", `${PREFIX} pgAdvisoryLock needs a postgres.js client (unsafe, reserve)`);
  }
  const max = sql.options?.max;
  if (typeof max === "number" && max < 2) {
    throw new OutboxError(
      "CONFIG",
      `${PREFIX} pgAdvisoryLock needs a client with max >= 2 (got ${max}): a held lock keeps one connection reserved`,
    );
  }

  async function acquire(key: string, leaseMs: number): Promise<Lease | null> {
    if (typeof key !== "string" || key.length === 0) throw new OutboxError("CONFIG", `${PREFIX} lock key must be a non-empty string`);
    if (!Number.isInteger(leaseMs) || leaseMs < 1) throw new OutboxError("CONFIG", `${PREFIX} leaseMs must be a positive integer`);
    const k = (await advisoryLockKey(key)).toString();
    let conn: PostgresReservedConnection;
    try {
      conn = await sql.reserve();
    } catch (e) {
      throw lockError("reserving a connection", e);
    }
    let pid: number;
    try {
      const [row] = await conn.unsafe(TRY_LOCK_SQL, [k]);
      if (row?.["ok"] !== true) {
        conn.release();
        return null;
      }
      pid = num(row["pid"]);
    } catch (e) {
      if (!isConnectionError(e)) conn.release(); // postgres.js takes a dead connection back by itself
      throw lockError(`pg_try_advisory_lock("${key}")`, e);
    }
    return holdLease(conn, key, k, pid, leaseMs);
  }

  function holdLease(conn: PostgresReservedConnection, key: string, k: string, pid: number, leaseMs: number): Lease {
    const controller = new AbortController();
    let state: "held" | "lost" | "released" = "held";
    let expiry: ReturnType<typeof setTimeout> | undefined;
    let checking = false;
    let cleaning: Promise<void> | null = null;

    /** true: held; false: the session lost it; null: could not ask. Always through the pool. */
    const isHeld = async (): Promise<boolean | null> => {
      try {
        const [row] = await sql.unsafe(HELD_SQL, [pid, k]);
        return row?.["held"] === true;
      } catch {
        return null;
      }
    };

    /** Unlocks and returns the connection, only once the pool confirmed the session is alive and holds the lock. */
    const cleanup = (): Promise<void> => {
      cleaning ??= (async () => {
        const held = await isHeld();
        if (held !== true) return; // false: the session is gone, and its lock with it; null: unknown, leave it alone
        try {
          await conn.unsafe(UNLOCK_SQL, [k]);
          conn.release();
        } catch (e) {
          if (!isConnectionError(e)) conn.release();
        }
      })();
      return cleaning;
    };

    const stopTimers = (): void => {
      clearTimeout(expiry);
      clearInterval(interval);
    };

    const lose = (reason: string): void => {
      if (state !== "held") return;
      state = "lost";
      stopTimers();
      controller.abort(new OutboxError("LEASE_LOST", `${PREFIX} advisory lock "${key}" ${reason}`));
      void cleanup();
    };

    const arm = (ms: number): void => {
      clearTimeout(expiry);
      expiry = setTimeout(() => lose(`expired after ${ms} ms`), ms);
      unref(expiry);
    };

    const interval = setInterval(() => {
      if (checking || state !== "held") return;
      checking = true;
      void isHeld().then((held) => {
        checking = false;
        if (held === false) lose("was lost with its connection");
        else if (held === null) lose("could not be verified (the database did not answer)");
      });
    }, checkIntervalMs);
    unref(interval);
    arm(leaseMs);

    return {
      key,
      signal: controller.signal,
      async extend(ms: number): Promise<boolean> {
        if (!Number.isInteger(ms) || ms < 1) throw new OutboxError("CONFIG", `${PREFIX} leaseMs must be a positive integer`);
        if (state !== "held") return false;
        const held = await isHeld();
        if (state !== "held") return false;
        if (held !== true) {
          lose(held === false ? "was lost with its connection" : "could not be verified (the database did not answer)");
          return false;
        }
        arm(ms);
        return true;
      },
      async release(): Promise<void> {
        if (state === "released") return;
        const wasHeld = state === "held";
        state = "released";
        stopTimers();
        if (wasHeld) await cleanup();
        else await cleaning;
      },
    };
  }

  return { name: "postgres-advisory", acquire };
}
