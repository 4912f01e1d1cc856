/**
 * `edge-outbox/upstash`: a `Lock` on Upstash Redis through `@upstash/redis` (REST), so two drains of one outbox
 * (two cron calls, a QStash nudge racing a schedule) do not overlap.
 *
 * **Correctness never rests on this lock.** Every settlement is fenced by the claim's lease token in the database
 * (a relay paused past its lease cannot overwrite a newer claim), so a lost, expired or stolen lock costs duplicate
 * work at worst. Upstash describes its own lock the same way: a tool for efficiency, not for mutual exclusion that
 * correctness depends on.
 *
 * The client is typed structurally ({@link UpstashRedis}): importing this module pulls in no driver. Construct it
 * with bounded retries (`retry: { retries: 0 }`), since `@upstash/redis` otherwise retries network errors for about
 * 12 s; the lock bounds every call with `timeoutMs` (1 s) and fails fast with `OutboxError` LOCK (retryable).
 *
 * @example
 * ```ts
 * import { Redis } from "@upstash/redis";
 * import { createRelay } from "edge-outbox";
 * import { upstashLock } from "edge-outbox/upstash";
 *
 * const redis = new Redis({ url: env.UPSTASH_REDIS_REST_URL, token: env.UPSTASH_REDIS_REST_TOKEN, retry: { retries: 0 } });
 * const lock = upstashLock(redis, { prefix: "shop:", leaseMs: 10_000 });
 * const relay = createRelay({ outbox, transport, lock });
 * const report = await relay.drain({ budgetMs: 8_000 }); // { skipped: "lock-busy" } when another drain holds it
 * ```
 *
 * @module
 */
export { type UpstashLock, upstashLock, type UpstashLockOptions, type UpstashRedis } from "./lock.ts";
export { EXTEND_SCRIPT, EXTEND_SCRIPT_SHA1, RELEASE_SCRIPT, RELEASE_SCRIPT_SHA1 } from "./scripts.ts";
