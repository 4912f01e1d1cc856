import * as v from "valibot";
import { OutboxError, toOutboxError } from "../../src/errors.ts";
import type { Lease, Lock } from "../../src/lock.ts";
import { parseOptions } from "../../src/options.ts";
import { EXTEND_SCRIPT, EXTEND_SCRIPT_SHA1, RELEASE_SCRIPT, RELEASE_SCRIPT_SHA1 } from "./scripts.ts";

const PREFIX = "[edge-outbox:upstash]";

/**
 * The part of `@upstash/redis`'s `Redis` client the lock uses, typed structurally so that importing this module
 * pulls in no driver (a real `Redis`, from `@upstash/redis`, `@upstash/redis/cloudflare` or `/fastly`, is
 * assignable to it).
 *
 * Construct the client with bounded retries: by default `@upstash/redis` retries a network error five times over
 * about 12 s, longer than a drain should wait for its lock. The lock bounds every call with
 * {@link UpstashLockOptions.timeoutMs} anyway, but a retrying client keeps working in the background.
 *
 * @example
 * ```ts
 * import { Redis } from "@upstash/redis";
 * import type { UpstashRedis } from "edge-outbox/upstash";
 * const redis: UpstashRedis = new Redis({ url: env.UPSTASH_REDIS_REST_URL, token: env.UPSTASH_REDIS_REST_TOKEN, retry: { retries: 1 } });
 * ```
 */
export interface UpstashRedis {
  /** `SET key value NX PX ms`: resolves `"OK"` when set, `null` when the key exists. */
  set(key: string, value: string, options: { nx: true; px: number }): Promise<unknown>;
  /** `EVAL script 1 key …args`. */
  eval(script: string, keys: string[], args: string[]): Promise<unknown>;
  /** `EVALSHA sha1 1 key …args`; rejects with a `NOSCRIPT` error when the server has not cached the script. */
  evalsha(sha1: string, keys: string[], args: string[]): Promise<unknown>;
}

/**
 * Options of {@link upstashLock}.
 *
 * @example
 * ```ts
 * import { upstashLock, type UpstashLockOptions } from "edge-outbox/upstash";
 * const options: UpstashLockOptions = { prefix: "shop:", leaseMs: 10_000, renewEveryMs: 3_000, timeoutMs: 1_000 };
 * const lock = upstashLock(redis, options);
 * ```
 */
export interface UpstashLockOptions {
  /** Prepended to every key given to `acquire` to form the Redis key. @default "" */
  prefix?: string | undefined;
  /**
   * Time to live of the Redis key while a lease is held, ms. With `autoRenew`, the key is kept alive by renewals
   * up to the `leaseMs` asked of `acquire` (or `extend`), so a holder that crashes frees the lock at most this
   * long after its last renewal. Capped by the `leaseMs` asked of `acquire`.
   * @default 10000
   */
  leaseMs?: number | undefined;
  /** Renewal period while a lease is held, ms; must be below `leaseMs`. @default leaseMs / 3 */
  renewEveryMs?: number | undefined;
  /**
   * Renew the key automatically while the lease is held. When false, the key's time to live is exactly the
   * `leaseMs` given to `acquire` or `extend` and `leaseMs` / `renewEveryMs` above are unused.
   * @default true
   */
  autoRenew?: boolean | undefined;
  /** Longest one Redis operation may take before it counts as failed (LOCK, retryable), ms. @default 1000 */
  timeoutMs?: number | undefined;
}

/**
 * A {@link Lock} on Upstash Redis (see {@link upstashLock}).
 *
 * @example
 * ```ts
 * import { upstashLock, type UpstashLock } from "edge-outbox/upstash";
 * const lock: UpstashLock = upstashLock(redis);
 * const lease = await lock.acquire("nightly-report", 60_000);
 * if (lease) {
 *   try { await work(lease.signal) } finally { await lease.release() }
 * }
 * ```
 */
export interface UpstashLock extends Lock {
  /** Always "upstash". */
  readonly name: "upstash";
  /** The Redis key prefix. */
  readonly prefix: string;
}

const int = (min: number, max: number) => v.pipe(v.number(), v.integer(), v.minValue(min), v.maxValue(max));

const optionsSchema = v.pipe(
  v.strictObject({
    prefix: v.optional(v.pipe(v.string(), v.maxLength(200)), ""),
    leaseMs: v.optional(int(100, 3_600_000), 10_000),
    renewEveryMs: v.optional(int(10, 3_600_000)),
    autoRenew: v.optional(v.boolean(), true),
    timeoutMs: v.optional(int(1, 600_000), 1_000),
  }),
  v.forward(
    v.check((o) => o.renewEveryMs === undefined || o.renewEveryMs < o.leaseMs, "renewEveryMs must be below leaseMs"),
    ["renewEveryMs"],
  ),
);

const now = (): number => performance.now();

/**
 * Creates a {@link Lock} on Upstash Redis (`@upstash/redis`, REST), so two drains of one outbox do not overlap.
 *
 * **The lock is for efficiency, not correctness.** Upstash says the same of its own lock: a lease can be lost
 * (clock jumps, a paused process, a failover) while its holder still runs. edge-outbox never relies on it: every
 * settlement is fenced by the claim's lease token in the database, so a lost lock costs duplicate work at worst,
 * never a lost or doubled settlement.
 *
 * - `acquire` runs `SET key <random token> NX PX ttl` and succeeds only on an exact `"OK"` answer (an aborted
 *   `@upstash/redis` command can resolve to a string such as `"Aborted"` instead of throwing).
 * - While held, the key is renewed every `renewEveryMs` with a compare-and-set Lua script (`PEXPIRE` in ms); when a
 *   renewal is refused (the key was deleted or taken over) or fails, the lease's `signal` fires at once and the relay
 *   stops claiming. The signal also fires when the lease's `leaseMs` runs out.
 * - `release` and `extend` are compare-and-set Lua scripts too ({@link RELEASE_SCRIPT}, {@link EXTEND_SCRIPT}), sent
 *   with `EVALSHA` and re-sent with `EVAL` when the server answers `NOSCRIPT`. They must answer the number 1 or 0.
 * - Every operation is bounded by `timeoutMs`: an unreachable Redis fails fast with `OutboxError` LOCK (retryable).
 *
 * Construct the client with `retry: { retries: 0 }` (or a small bound): `@upstash/redis` otherwise retries network
 * errors for about 12 s in the background.
 *
 * @param redis an `@upstash/redis` client (typed structurally: {@link UpstashRedis})
 * @param options prefix (""), leaseMs (10000), renewEveryMs (leaseMs / 3), autoRenew (true), timeoutMs (1000)
 * @returns the lock
 * @throws {OutboxError} CONFIG naming the bad option, or when `redis` is not a client
 * @example
 * ```ts
 * import { Redis } from "@upstash/redis";
 * import { createRelay } from "edge-outbox";
 * import { upstashLock } from "edge-outbox/upstash";
 *
 * const redis = new Redis({ url: env.UPSTASH_REDIS_REST_URL, token: env.UPSTASH_REDIS_REST_TOKEN, retry: { retries: 0 } });
 * const relay = createRelay({ outbox, transport, lock: upstashLock(redis, { prefix: "app:" }) });
 * const report = await relay.drain({ budgetMs: 8_000 });
 * if (report.skipped === "lock-busy") console.log("another drain is running");
 * ```
 */
export function upstashLock(redis: UpstashRedis, options: UpstashLockOptions = {}): UpstashLock {
  const o = parseOptions("upstashLock options", optionsSchema, options);
  const r = redis as Partial<Record<keyof UpstashRedis, unknown>> | null;
  if (typeof r !== "object" || r === null || typeof r.set !== "function" || typeof r.eval !== "function" || typeof r.evalsha !== "function") {
    throw new OutboxError("CONFIG", "upstashLock: redis must be an @upstash/redis client (with set, eval and evalsha)");
  }
  const { prefix, timeoutMs, autoRenew } = o;

  /** Runs one Redis operation, bounded by timeoutMs; failures become LOCK (retryable). */
  async function bounded<T>(what: string, key: string, op: Promise<T>): Promise<T> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new OutboxError("LOCK", `${PREFIX} ${what} "${key}" timed out after ${timeoutMs} ms`, { retryable: true })),
        timeoutMs,
      );
    });
    try {
      return await Promise.race([op, timeout]);
    } catch (e) {
      throw toOutboxError("LOCK", `${PREFIX} ${what} "${key}" failed`, e, true);
    } finally {
      clearTimeout(timer);
    }
  }

  /** EVALSHA, then EVAL when the server does not have the script cached. */
  async function script(source: string, sha1: string, redisKey: string, args: string[]): Promise<unknown> {
    try {
      return await redis.evalsha(sha1, [redisKey], args);
    } catch (e) {
      if (!/NOSCRIPT/i.test(e instanceof Error ? e.message : String(e))) throw e;
      return await redis.eval(source, [redisKey], args);
    }
  }

  /** A script's answer must be exactly the number 1 or 0. */
  function flag(what: string, key: string, reply: unknown): boolean {
    if (reply === 1) return true;
    if (reply === 0) return false;
    throw new OutboxError("LOCK", `${PREFIX} ${what} "${key}": unexpected reply ${describe(reply)} (expected 1 or 0)`, {
      retryable: true,
    });
  }

  const release = (redisKey: string, token: string): Promise<unknown> =>
    script(RELEASE_SCRIPT, RELEASE_SCRIPT_SHA1, redisKey, [token]);

  function lease(key: string, redisKey: string, token: string, ttl: number, holdMs: number, sentAt: number): Lease {
    const controller = new AbortController();
    let released = false;
    let deadline = sentAt + holdMs; // the lease ends here unless extended
    let validUntil = sentAt + ttl; // the Redis key may have expired from here on
    let renewTimer: ReturnType<typeof setTimeout> | undefined;
    let expiryTimer: ReturnType<typeof setTimeout> | undefined;
    const every = o.renewEveryMs !== undefined && o.renewEveryMs < ttl ? o.renewEveryMs : Math.max(1, Math.floor(ttl / 3));

    const stop = (): void => {
      clearTimeout(renewTimer);
      clearTimeout(expiryTimer);
    };
    const lose = (reason: string): void => {
      if (released || controller.signal.aborted) return;
      stop();
      controller.abort(new OutboxError("LEASE_LOST", `${PREFIX} lock "${key}" lost: ${reason}`));
    };
    const armExpiry = (): void => {
      clearTimeout(expiryTimer);
      expiryTimer = setTimeout(
        () => lose(validUntil >= deadline ? "its lease ran out" : "it was not renewed in time"),
        Math.max(0, validUntil - now()),
      );
    };
    const scheduleRenewal = (): void => {
      clearTimeout(renewTimer);
      if (autoRenew && !released && !controller.signal.aborted) renewTimer = setTimeout(renew, every);
    };
    /** PEXPIRE through the CAS script; on success the key is known valid for `ms` from when it was sent. */
    const pexpire = async (ms: number): Promise<boolean> => {
      const sent = now();
      const ok = flag("extend", key, await bounded("extend", key, script(EXTEND_SCRIPT, EXTEND_SCRIPT_SHA1, redisKey, [token, String(ms)])));
      if (ok && !released && !controller.signal.aborted) {
        validUntil = sent + ms;
        armExpiry();
      }
      return ok;
    };
    const renew = async (): Promise<void> => {
      if (released || controller.signal.aborted) return;
      const remaining = Math.ceil(deadline - now());
      if (remaining <= 0) return; // the expiry timer ends the lease
      try {
        if (!await pexpire(Math.min(ttl, remaining))) return lose("renewal refused: the key was deleted or belongs to another holder");
      } catch (e) {
        return lose(`renewal failed: ${e instanceof Error ? e.message : String(e)}`);
      }
      scheduleRenewal();
    };

    armExpiry();
    scheduleRenewal();
    return {
      key,
      signal: controller.signal,
      async extend(ms: number): Promise<boolean> {
        checkLeaseMs(ms);
        if (released || controller.signal.aborted) return false;
        deadline = now() + ms;
        let ok: boolean;
        try {
          ok = await pexpire(autoRenew ? Math.min(ttl, ms) : ms);
        } catch (e) {
          lose(`extend failed: ${e instanceof Error ? e.message : String(e)}`);
          throw e;
        }
        if (!ok) {
          lose("extend refused: the key was deleted or belongs to another holder");
          return false;
        }
        scheduleRenewal();
        return true;
      },
      async release(): Promise<void> {
        if (released) return;
        released = true;
        stop();
        // Even after a failed renewal the key may still be ours: the compare-and-set makes trying safe.
        flag("release", key, await bounded("release", key, release(redisKey, token)));
      },
    };
  }

  return {
    name: "upstash",
    prefix,
    async acquire(key: string, leaseMs: number): Promise<Lease | null> {
      if (typeof key !== "string" || key.length === 0) throw new OutboxError("CONFIG", "upstashLock: key must be a non-empty string");
      checkLeaseMs(leaseMs);
      const redisKey = prefix + key;
      const token = crypto.randomUUID();
      const ttl = autoRenew ? Math.min(o.leaseMs, leaseMs) : leaseMs;
      const sentAt = now();
      const setting = Promise.resolve().then(() => redis.set(redisKey, token, { nx: true, px: ttl }));
      // When we give up on a SET (timeout, odd answer), it may still land and leave the key held by nobody: free it
      // then. The compare-and-set release only ever deletes our own token, so trying is always safe.
      const cleanUp = (): void => {
        setting.then((reply) => reply === null ? undefined : release(redisKey, token), () => release(redisKey, token))
          .catch(() => {});
      };
      let reply: unknown;
      try {
        reply = await bounded("acquire", key, setting);
      } catch (e) {
        cleanUp();
        throw e;
      }
      if (reply === null) return null;
      if (reply !== "OK") {
        cleanUp();
        throw new OutboxError("LOCK", `${PREFIX} acquire "${key}": SET answered ${describe(reply)}, not "OK"`, { retryable: true });
      }
      return lease(key, redisKey, token, ttl, leaseMs, sentAt);
    },
  };
}

function checkLeaseMs(leaseMs: unknown): void {
  if (typeof leaseMs !== "number" || !Number.isInteger(leaseMs) || leaseMs < 1) {
    throw new OutboxError("CONFIG", "upstashLock: leaseMs must be a positive integer");
  }
}

function describe(x: unknown): string {
  try {
    const s = JSON.stringify(x) ?? String(x);
    return s.length > 100 ? `${s.slice(0, 100)}…` : s;
  } catch {
    return String(x);
  }
}
