/**
 * The single error type of edge-outbox, with a `code` to branch on.
 *
 * @module
 */

/** Every reason an edge-outbox call can fail. */
export type OutboxErrorCode =
  /** Bad input: a payload, topic, key, header or id that cannot be accepted. Nothing was written. */
  | "VALIDATION"
  /** Bad configuration: an option out of range, a hostile table name, an unsupported feature. */
  | "CONFIG"
  /** The database failed (unreachable, busy, constraint). `retryable` tells whether trying again can help. */
  | "STORAGE"
  /** A transport failed in a way that is not a per-message outcome. */
  | "TRANSPORT"
  /** The lock store failed (not "busy": a busy lock is a normal return value). */
  | "LOCK"
  /** A lease was lost: a newer claim owns the rows. */
  | "LEASE_LOST"
  /** The caller's signal aborted the operation. */
  | "ABORTED"
  /**
   * A uniqueness conflict: e.g. an `id` given at enqueue that a row in the outbox already has (pending, dead, or kept
   * delivered). Nothing was written and the caller's transaction is still usable.
   */
  | "CONFLICT";

/** Options accepted by the {@link OutboxError} constructor. */
export interface OutboxErrorOptions {
  /** The underlying error (driver error, schema issues…). */
  cause?: unknown;
  /** Whether retrying the same call can succeed. @default false */
  retryable?: boolean | undefined;
}

/**
 * The one error class thrown by edge-outbox. Branch on {@link OutboxError.code} with
 * {@link isOutboxError}, not `instanceof`: two copies of the library (JSR and npm) can be loaded at once.
 *
 * @example
 * ```ts
 * import { OutboxError } from "edge-outbox";
 * throw new OutboxError("CONFIG", "batchSize must be positive");
 * ```
 */
export class OutboxError extends Error {
  /** What kind of failure this is. */
  readonly code: OutboxErrorCode;
  /** Whether trying the same call again can succeed (a busy database, a dropped connection). */
  readonly retryable: boolean;

  /**
   * Creates an error of `code`.
   *
   * @param code the failure kind
   * @param message a human-readable explanation that names the offending field or value
   * @param options `cause` and `retryable` (default false)
   */
  constructor(code: OutboxErrorCode, message: string, options: OutboxErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "OutboxError";
    this.code = code;
    this.retryable = options.retryable ?? false;
  }
}

/**
 * Tells whether `e` is an {@link OutboxError} (from any copy of the library), optionally of one code.
 *
 * @param e anything caught
 * @param code when given, also require this code
 * @returns true when `e` is an OutboxError (with that code)
 * @example
 * ```ts
 * import { isOutboxError } from "edge-outbox";
 * try { await relay.drain() } catch (e) {
 *   if (isOutboxError(e, "STORAGE") && e.retryable) console.warn("database busy, next call will retry");
 *   else throw e;
 * }
 * ```
 */
export function isOutboxError(e: unknown, code?: OutboxErrorCode): e is OutboxError {
  if (typeof e !== "object" || e === null) return false;
  const branded = (e as { name?: unknown }).name === "OutboxError" &&
    typeof (e as { code?: unknown }).code === "string" && typeof (e as { retryable?: unknown }).retryable === "boolean";
  return branded && (code === undefined || (e as OutboxError).code === code);
}

/**
 * Wraps any thrown value as an OutboxError of `code`, keeping OutboxErrors as they are.
 *
 * @param code the code to give a foreign error
 * @param prefix prepended to the message, e.g. `[edge-outbox:libsql] claim failed`
 * @param e the caught value (kept as `cause`)
 * @param retryable whether retrying can help
 * @returns an OutboxError
 * @example
 * ```ts
 * import { toOutboxError } from "edge-outbox";
 * try { await client.execute("select 1") } catch (e) { throw toOutboxError("STORAGE", "[my-adapter] ping", e, true) }
 * ```
 */
export function toOutboxError(code: OutboxErrorCode, prefix: string, e: unknown, retryable = false): OutboxError {
  if (isOutboxError(e)) return e;
  const detail = e instanceof Error ? e.message : String(e);
  return new OutboxError(code, `${prefix}: ${detail}`, { cause: e, retryable });
}
