/**
 * `pgAdvisoryLock`: the {@link Lock} contract on a PostgreSQL session advisory lock, held on a connection reserved
 * from your postgres.js pool. It holds no transaction open. PostgreSQL drops the lock when that session ends, so a
 * crashed relay never keeps the lock.
 *
 * @module
 */
import { isOutboxError, OutboxError, toOutboxError } from "../../src/errors.ts";
import type { Lease, Lock } from "../../src/lock.ts";
import {
  hasMethod,
  isConnectionError,
  isRetryableError,
  num,
  type PostgresLockClient,
  type PostgresQueryOptions,
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

/**
 * Marks the session with a random token (a session-level custom setting, made by the server) and reads the
 * idle-session setting. It has no parameters, so postgres.js runs it with the simple protocol and calls the
 * connection probe of {@link probeOptions}.
 */
const MARK_SQL = `SELECT set_config('edge_outbox.lock_session', random()::text || '/' || clock_timestamp()::text, false) AS mark,
  current_setting('idle_session_timeout', true) AS idle, pg_backend_pid() AS pid,
  (SELECT (extract(epoch FROM backend_start) * 1000000)::bigint FROM pg_stat_activity WHERE pid = pg_backend_pid())::text AS started`;
/**
 * Takes the lock only when this statement runs in the session {@link MARK_SQL} marked (`$2` the token): "moved" when
 * it does not (a transaction-mode pooler gave the statement another server connection), "busy" when another session
 * holds the lock, "held" otherwise. With `$3` not null (PostgreSQL 14+), a held lock also sets the session's
 * `idle_session_timeout` to `$3` ms: if this process never unlocks, the server ends the idle session by itself.
 */
const TRY_LOCK_SQL = `SELECT CASE
    WHEN current_setting('edge_outbox.lock_session', true) IS DISTINCT FROM $2::text THEN 'moved'
    WHEN NOT pg_try_advisory_lock($1::bigint) THEN 'busy'
    WHEN $3::text IS NULL THEN 'held'
    ELSE 'held' || left(set_config('idle_session_timeout', $3::text, false), 0)
  END AS state, pg_backend_pid() AS pid`;
/**
 * Asked through the pool (another client connection: the reserved one is taken) once the lock is held: whether that
 * statement runs in the session the reserved connection marked (`$1` the token). On a direct or session-mode
 * connection two client connections never share a server session, so this is false. Behind a transaction-mode pooler
 * that hands the most recently used server connection to the next transaction (PgBouncer's default,
 * `server_round_robin = 0`), the reserved connection's statements on a lightly loaded pool all land on one session, so
 * {@link TRY_LOCK_SQL} cannot tell; the pool's statement then lands there too, and this is true.
 */
const SHARED_SQL = `SELECT current_setting('edge_outbox.lock_session', true) IS NOT DISTINCT FROM $1::text AS shared`;
/** Moves the idle-session deadline (`$2` ms) of the marked session (`$1` token); null when the session moved. */
const EXTEND_SQL = `SELECT CASE WHEN current_setting('edge_outbox.lock_session', true) = $1::text
  THEN set_config('idle_session_timeout', $2::text, false) END AS idle`;
/**
 * Unlocks in the marked session (`$2` token) and restores its `idle_session_timeout` (`$3`, null when the server has
 * none); `ok` is null when the statement ran in another session.
 */
const UNLOCK_SQL = `SELECT CASE WHEN current_setting('edge_outbox.lock_session', true) = $2::text THEN pg_advisory_unlock($1::bigint)
  END AS ok, CASE WHEN $3::text IS NOT NULL AND current_setting('edge_outbox.lock_session', true) = $2::text
  THEN set_config('idle_session_timeout', $3::text, false) END AS idle`;
/**
 * Whether backend `$1` (started at `$3`, so a reused pid is not taken for it) is alive, and whether it holds the
 * session advisory lock `$2`. Asked through the pool, never the reserved connection.
 */
const STATUS_SQL = `SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1::int
    AND (extract(epoch FROM backend_start) * 1000000)::bigint::text = $3::text) AS alive,
  EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = $1::int AND objsubid = 1
    AND granted AND ((classid::bigint << 32) | objid::bigint) = $2::bigint) AS held`;

/**
 * Ends backend `$1` (started at `$2`) through the pool: the session this process lost the connection of (it can no
 * longer unlock there), so that the server frees its lock now rather than at the idle-session deadline.
 */
const END_SESSION_SQL = `SELECT pg_terminate_backend(pid) AS ended FROM pg_stat_activity WHERE pid = $1::int
  AND (extract(epoch FROM backend_start) * 1000000)::bigint::text = $2::text`;

/**
 * Whether the reserved connection's socket is still the one the lock was taken on, as far as the driver lets us see.
 *
 * postgres.js (3.4.9 and earlier) says nothing when the socket of an idle reserved connection closes (the server ended
 * the session, the network dropped it), and a query written to it afterwards throws a TypeError from a `setImmediate`
 * ("Cannot read properties of null (reading 'write')", porsager/postgres#1208): no caller can catch it, the process
 * gets an uncaught exception. Asking the pool whether the backend is alive does not close that gap: the backend may
 * end (or only this process's socket close) between that answer's snapshot and the write. So the lock looks at the
 * connection itself: postgres.js hands its pool connection to a query's `onexecute` option (undocumented; its own
 * `begin` uses it), and that connection's `reserved` member is this reservation's function while it lasts, null once
 * the socket closed (another reservation's when the pool reused it). postgres.js clears it in the same socket 'close'
 * handler that drops the socket, so a check made synchronously right before a write cannot be outrun: a statement
 * handed over then reaches the socket before any later 'close' runs, and a write to a socket that is closing fails as
 * an ordinary rejected query. With any other client the probe is never called and the state is unknown (`null`).
 */
interface ConnectionProbe {
  /** The driver's connection object, once seen. */
  connection: { reserved?: unknown } | null;
  /** Its `reserved` member when the lock's first statement ran on it. */
  reservation: unknown;
}

/** Query options that record the driver connection a statement runs on into `probe` (see {@link ConnectionProbe}). */
function probeOptions(probe: ConnectionProbe): PostgresQueryOptions {
  const options: PostgresQueryOptions & { onexecute(connection: unknown): boolean } = {
    onexecute(connection: unknown): boolean {
      const reserved = (connection as { reserved?: unknown } | null)?.reserved;
      if (probe.connection === null && typeof reserved === "function") {
        probe.connection = connection as { reserved?: unknown };
        probe.reservation = reserved;
      }
      return true; // what postgres.js computes when no onexecute is given: the connection may take more statements
    },
  };
  return options;
}

/** True when the probe saw the reserved connection and it is no longer this reservation's (its socket closed). */
function connectionLost(probe: ConnectionProbe): boolean {
  return probe.connection !== null && probe.connection.reserved !== probe.reservation;
}

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
  checkIntervalMs?: number | undefined;
  /**
   * How long `release()` waits for the unlock before it resolves anyway (the unlock goes on in the background, and the
   * server ends the session by itself if it never arrives: see {@link pgAdvisoryLock}). @default 2000
   */
  releaseWaitMs?: number | undefined;
}

function lockError(what: string, e: unknown): OutboxError {
  return toOutboxError("LOCK", `${PREFIX} advisory lock: ${what} failed`, e, isRetryableError(e) || isConnectionError(e));
}

function unref(timer: unknown): void {
  (timer as { unref?: () => void } | undefined)?.unref?.();
}

const TIMED_OUT: unique symbol = Symbol("timed out");

/** `p`, or {@link TIMED_OUT} after `ms` (the timer does not keep the process alive). */
function within<T>(p: PromiseLike<T>, ms: number): Promise<T | typeof TIMED_OUT> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<typeof TIMED_OUT>((resolve) => {
    timer = setTimeout(() => resolve(TIMED_OUT), ms);
    unref(timer);
  });
  return Promise.race([Promise.resolve(p), timeout]).finally(() => clearTimeout(timer));
}

function pause(ms: number): Promise<void> {
  return new Promise((resolve) => unref(setTimeout(resolve, ms)));
}

/** How much longer than the lease the server lets the held session sit idle before ending it. */
const IDLE_GRACE_MS = 2_000;
/** The longest a single status or unlock query may take before cleanup counts it as "no answer". */
const QUERY_WAIT_MS = 2_000;

/** The message of the CONFIG error raised when the lock's statements do not share one server session. */
export const POOLER_HINT: string =
  "session advisory locks need one server session, and the lock's statements ran on different ones: is the client " +
  "behind a transaction-mode pooler (PgBouncer pool_mode=transaction, Supavisor or Neon's pooled port)? Give " +
  "pgAdvisoryLock a client on a direct or session-mode connection, or use another Lock (e.g. upstashLock)";

/**
 * Creates a {@link Lock} on PostgreSQL session advisory locks (`pg_try_advisory_lock`), for `createRelay({ lock })`.
 *
 * - `acquire(key, leaseMs)` reserves one connection (`sql.reserve()`) and tries the lock once: `null` when another
 *   session holds it (the connection goes back to the pool). Keys are hashed with {@link advisoryLockKey}.
 * - While held, the connection stays reserved, idle, with no transaction open. Every `checkIntervalMs` the lease asks
 *   `pg_locks`, through another pooled connection, whether that backend still holds the lock; when the connection
 *   died (server restart, `pg_terminate_backend`, network), PostgreSQL has released the lock and `lease.signal`
 *   fires; when the check gets no answer, the lease is given up as well (signal fires, cleanup starts). A reserved
 *   connection whose socket closed is noticed at once, without a query. (It never sends anything on a reserved
 *   connection whose socket closed: postgres.js 3.4 throws an uncaught TypeError when a query is written to one,
 *   porsager/postgres#1208, and releasing such a connection stalls the pool.)
 * - The lease also ends after `leaseMs` unless extended: the lock is released and the signal fires.
 * - `release()` (and a lost or expired lease) cleans up: it asks the pool whether the session is alive; alive, it
 *   unlocks and gives the connection back; dead, postgres.js has taken the connection back and the lock is gone;
 *   alive while this process lost its connection (a dropped socket the server has not noticed), it ends that session
 *   through the pool (`pg_terminate_backend`), which frees the lock.
 *   When the pool does not answer, it asks again with a backoff. `release()` resolves within `releaseWaitMs`
 *   whatever happens. Safety net (PostgreSQL 14+): the held session's `idle_session_timeout` is set to the lease
 *   plus 2 s (restored on unlock), so a session this process can no longer reach or unlock is ended by the server
 *   itself, which frees the lock; no failure leaves the lock held for longer than that.
 *
 * **Transaction-mode poolers** (PgBouncer `pool_mode = transaction`, Supavisor's transaction port 6543, Neon's
 * `-pooler` host): session advisory locks do not work there, since consecutive statements of one client may run on
 * different server sessions. `acquire` marks its session and takes the lock only in a statement that still runs in
 * that session, and gives the lock up again when a statement of the pool (another client connection) runs in that
 * session too; either way it rejects with CONFIG ({@link POOLER_HINT}) and holds nothing. (The first check catches a
 * pooler that spreads one client's statements over sessions, the second one that hands the most recently used server
 * connection to the next transaction, PgBouncer's default. Statements can still land just so by chance, so this
 * detects the pooler most of the time, not always.) Give the lock a
 * client on a direct or session-mode connection (postgres.js with `max: 2` is enough), or use another Lock. The
 * storage itself works behind such a pooler with postgres.js's `prepare: false`.
 *
 * The client needs `max` of at least 2 (one connection reserved while held, one for the checks and the relay).
 *
 * @param sql your postgres.js client (`postgres(url)`), typed structurally
 * @param options `checkIntervalMs` (default 1000), `releaseWaitMs` (default 2000)
 * @returns the lock
 * @throws {OutboxError} CONFIG for a bad option or a client with `max` below 2; `acquire` rejects with LOCK when the
 *   database fails (busy is a `null` result, not an error) and with CONFIG behind a transaction-mode pooler
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
  const releaseWaitMs = options?.releaseWaitMs ?? 2_000;
  if (!Number.isInteger(checkIntervalMs) || checkIntervalMs < 10 || checkIntervalMs > 3_600_000) {
    throw new OutboxError("CONFIG", `${PREFIX} pgAdvisoryLock options: checkIntervalMs must be an integer between 10 and 3600000`);
  }
  if (!Number.isInteger(releaseWaitMs) || releaseWaitMs < 0 || releaseWaitMs > 600_000) {
    throw new OutboxError("CONFIG", `${PREFIX} pgAdvisoryLock options: releaseWaitMs must be an integer between 0 and 600000`);
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
    const probe: ConnectionProbe = { connection: null, reservation: undefined };
    let session: Session;
    try {
      const [mark] = await conn.unsafe(MARK_SQL, [], probeOptions(probe));
      const idle = mark?.["idle"];
      session = {
        pid: num(mark?.["pid"]),
        started: String(mark?.["started"]),
        token: String(mark?.["mark"]),
        idle: typeof idle === "string" ? idle : null,
      };
      const [row] = await conn.unsafe(TRY_LOCK_SQL, [k, session.token, session.idle === null ? null : String(leaseMs + IDLE_GRACE_MS)]);
      const state = row?.["state"];
      if (state === "moved") {
        conn.release();
        throw new OutboxError("CONFIG", `${PREFIX} pgAdvisoryLock("${key}"): ${POOLER_HINT}`);
      }
      if (state !== "held") {
        conn.release();
        return null;
      }
      // Another client connection landing on this session is a pooler sharing it: unlock and refuse. No answer in
      // time (a client whose other connections are all busy) leaves the lock held, as before this check.
      const shared = await within(sql.unsafe(SHARED_SQL, [session.token]), QUERY_WAIT_MS).catch((): typeof TIMED_OUT => TIMED_OUT);
      if (shared !== TIMED_OUT && shared[0]?.["shared"] === true) {
        await within(conn.unsafe(UNLOCK_SQL, [k, session.token, session.idle]), QUERY_WAIT_MS).catch(() => {});
        conn.release();
        throw new OutboxError("CONFIG", `${PREFIX} pgAdvisoryLock("${key}"): ${POOLER_HINT}`);
      }
    } catch (e) {
      if (isOutboxError(e)) throw e;
      // postgres.js takes a dead connection back by itself; releasing it would hand the pool a connection without a socket
      if (!connectionLost(probe) && !isConnectionError(e)) conn.release();
      throw lockError(`pg_try_advisory_lock("${key}")`, e);
    }
    return holdLease(conn, probe, key, k, session, leaseMs);
  }

  function holdLease(
    conn: PostgresReservedConnection,
    probe: ConnectionProbe,
    key: string,
    k: string,
    session: Session,
    leaseMs: number,
  ): Lease {
    const controller = new AbortController();
    let state: "held" | "lost" | "released" = "held";
    let expiry: ReturnType<typeof setTimeout> | undefined;
    let checking = false;
    let cleaning: Promise<void> | null = null;
    /** When the server ends the session by itself if it stays idle (Date.now() clock); Infinity without the setting. */
    let idleDeadline = session.idle === null ? Infinity : Date.now() + leaseMs + IDLE_GRACE_MS;

    /** Asks the pool whether the session is alive and holds the lock; null: no answer in time. Never throws. */
    const status = async (): Promise<{ alive: boolean; held: boolean } | null> => {
      try {
        const rows = await within(sql.unsafe(STATUS_SQL, [session.pid, k, session.started]), QUERY_WAIT_MS);
        if (rows === TIMED_OUT) return null;
        return { alive: rows[0]?.["alive"] === true, held: rows[0]?.["held"] === true };
      } catch {
        return null;
      }
    };

    /**
     * Unlocks and gives the connection back once the pool confirmed the session is alive; when it is dead, postgres.js
     * has taken the connection back and the lock went with the session. Without an answer it asks again (backoff)
     * until the server's idle-session deadline has passed, by which time the server has ended the session (and its
     * lock) by itself. Runs once per lease; never throws.
     */
    const cleanup = (): Promise<void> => {
      cleaning ??= (async () => {
        let delay = 50;
        const giveUpAt = Number.isFinite(idleDeadline) ? idleDeadline + 1_000 : Date.now() + 60_000;
        for (;;) {
          const s = await status();
          if (s !== null) {
            if (!s.alive) return;
            if (connectionLost(probe)) {
              // The server still has the session but this process lost its connection (and must not write to it):
              // end the session through the pool, which frees the lock; without an answer, the idle deadline does.
              await within(sql.unsafe(END_SESSION_SQL, [session.pid, session.started]), QUERY_WAIT_MS).catch(() => {});
              return;
            }
            try {
              const done = await within(conn.unsafe(UNLOCK_SQL, [k, session.token, session.idle]), QUERY_WAIT_MS);
              if (done === TIMED_OUT) return; // a stuck connection: the idle-session deadline ends it
              conn.release();
            } catch (e) {
              if (!connectionLost(probe) && !isConnectionError(e)) conn.release();
            }
            return;
          }
          if (Date.now() + delay > giveUpAt) return;
          await pause(delay);
          delay = Math.min(delay * 2, 1_000);
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

    const verdict = (s: { alive: boolean; held: boolean } | null): string | null =>
      s === null
        ? "could not be verified (the database did not answer)"
        : !s.alive || !s.held
        ? "was lost with its connection"
        : null;

    const interval = setInterval(() => {
      if (checking || state !== "held") return;
      if (connectionLost(probe)) return lose("was lost with its connection");
      checking = true;
      void status().then((s) => {
        checking = false;
        const lost = verdict(s);
        if (lost !== null) lose(lost);
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
        const s = await status();
        if (state !== "held") return false;
        const lost = connectionLost(probe) ? "was lost with its connection" : verdict(s);
        if (lost !== null) {
          lose(lost);
          return false;
        }
        if (session.idle !== null) {
          // The session is alive (just checked) and its connection still open (checked right above, with no await
          // since): move the server's idle deadline along with the lease.
          try {
            const [row] = await conn.unsafe(EXTEND_SQL, [session.token, String(ms + IDLE_GRACE_MS)]);
            if (row?.["idle"] === null || row?.["idle"] === undefined) {
              lose(`ran in another session: ${POOLER_HINT}`);
              return false;
            }
          } catch {
            lose("could not be extended (the database did not answer)");
            return false;
          }
          if (state !== "held") return false;
          idleDeadline = Date.now() + ms + IDLE_GRACE_MS;
        }
        arm(ms);
        return true;
      },
      async release(): Promise<void> {
        if (state === "released") return;
        const wasHeld = state === "held";
        state = "released";
        stopTimers();
        const done = wasHeld ? cleanup() : (cleaning ?? Promise.resolve());
        await within(done, releaseWaitMs);
      },
    };
  }

  return { name: "postgres-advisory", acquire };
}

/** The server session a held lock lives in. */
interface Session {
  /** Backend pid. */
  readonly pid: number;
  /** Backend start time (text), which tells a reused pid apart. */
  readonly started: string;
  /** The session's marker token. */
  readonly token: string;
  /** The session's `idle_session_timeout` before the lock changed it; null when the server has none (before 14). */
  readonly idle: string | null;
}
