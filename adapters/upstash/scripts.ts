/**
 * The Lua scripts of the Upstash lock, as constants with their SHA1 digests (pinned by a test), so they can run
 * through `EVALSHA` and fall back to `EVAL` only when the server has not cached them yet (`NOSCRIPT`).
 *
 * Both compare the stored token with the caller's before touching the key (compare-and-set), so only the holder
 * can release or extend a lease, and both answer the integer 1 (done) or 0 (not the holder).
 *
 * @module
 */

/**
 * Releases the lock: deletes `KEYS[1]` only when it still holds the token `ARGV[1]`. Answers 1 or 0.
 *
 * @example
 * ```ts
 * import { RELEASE_SCRIPT } from "edge-outbox/upstash";
 * await redis.eval(RELEASE_SCRIPT, ["edge-outbox:relay"], [token]); // 1 when it was ours
 * ```
 */
export const RELEASE_SCRIPT: string = `if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
else
  return 0
end`;

/**
 * SHA1 of {@link RELEASE_SCRIPT}, the digest `EVALSHA` takes (a test recomputes it).
 *
 * @example
 * ```ts
 * import { RELEASE_SCRIPT_SHA1 } from "edge-outbox/upstash";
 * await redis.evalsha(RELEASE_SCRIPT_SHA1, ["edge-outbox:relay"], [token]);
 * ```
 */
export const RELEASE_SCRIPT_SHA1: string = "c7634f8c5c1d9ef2d68e601354a9a81a4d03bb5d";

/**
 * Extends the lock: sets `KEYS[1]`'s time to live to `ARGV[2]` milliseconds (`PEXPIRE`) only when it still holds
 * the token `ARGV[1]`. Answers 1 or 0.
 *
 * @example
 * ```ts
 * import { EXTEND_SCRIPT } from "edge-outbox/upstash";
 * await redis.eval(EXTEND_SCRIPT, ["edge-outbox:relay"], [token, "30000"]); // 1 when it was ours
 * ```
 */
export const EXTEND_SCRIPT: string = `if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("PEXPIRE", KEYS[1], ARGV[2])
else
  return 0
end`;

/**
 * SHA1 of {@link EXTEND_SCRIPT}, the digest `EVALSHA` takes (a test recomputes it).
 *
 * @example
 * ```ts
 * import { EXTEND_SCRIPT_SHA1 } from "edge-outbox/upstash";
 * await redis.evalsha(EXTEND_SCRIPT_SHA1, ["edge-outbox:relay"], [token, "30000"]);
 * ```
 */
export const EXTEND_SCRIPT_SHA1: string = "bb9285f4450c4eac98f055e430363f7a132cb42d";
