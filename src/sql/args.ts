/**
 * Argument checks shared by the SQL storages (internal, not exported): the relay-side calls validate their
 * arguments with VALIDATION errors before anything is sent to the database.
 *
 * @module
 */
import type { OutboxError } from "../errors.ts";
import type { ClaimOptions } from "../storage.ts";
import { isNonNegativeInt, isPositiveInt } from "./coerce.ts";

type Invalid = (message: string) => OutboxError;

/**
 * Checks `claim`'s options.
 *
 * @param options `{ limit, leaseMs, continue?, maxKeys? }`
 * @param invalid the adapter's VALIDATION error maker
 * @returns the checked limit and lease, `maxKeys` when it is below `limit`, and the keys to continue when any are named
 * @throws {OutboxError} VALIDATION when `limit` or `leaseMs` is not a positive integer, `maxKeys` is given and not a
 *   non-negative integer, or `continue` is not arrays of
 *   positive integers (`after`) and non-empty strings (`tokens`)
 * @example
 * ```ts
 * import { OutboxError } from "edge-outbox";
 * const invalid = (m: string): OutboxError => new OutboxError("VALIDATION", m);
 * const { limit, leaseMs } = claimArgs({ limit: 10, leaseMs: 30_000 }, invalid);
 * ```
 */
export function claimArgs(
  options: ClaimOptions,
  invalid: Invalid,
): { limit: number; leaseMs: number; maxKeys?: number; continue?: { after: readonly number[]; tokens: readonly string[] } } {
  const { limit, leaseMs, continue: cont, maxKeys } = options ?? ({} as ClaimOptions);
  if (!isPositiveInt(limit)) throw invalid(`claim limit must be a positive integer, got ${limit}`);
  if (!isPositiveInt(leaseMs)) throw invalid(`claim leaseMs must be a positive integer, got ${leaseMs}`);
  if (maxKeys !== undefined && !isNonNegativeInt(maxKeys)) throw invalid(`claim maxKeys must be a non-negative integer, got ${maxKeys}`);
  // A limit of at least `limit` keys limits nothing (a claim takes at most `limit` rows): left out.
  const keys = maxKeys !== undefined && maxKeys < limit ? { maxKeys } : {};
  if (cont === undefined) return { limit, leaseMs, ...keys };
  const after: unknown = (cont as { after?: unknown } | null)?.after;
  const tokens: unknown = (cont as { tokens?: unknown } | null)?.tokens;
  if (!Array.isArray(after) || !after.every(isPositiveInt)) throw invalid("claim continue.after must be an array of row seqs (positive integers)");
  if (!Array.isArray(tokens) || !tokens.every((t) => typeof t === "string" && t !== "")) {
    throw invalid("claim continue.tokens must be an array of lease tokens (non-empty strings)");
  }
  if (after.length === 0 || tokens.length === 0) return { limit, leaseMs, ...keys };
  return { limit, leaseMs, ...keys, continue: { after: after as number[], tokens: tokens as string[] } };
}

/**
 * Checks `settle`'s token.
 *
 * @param token the claim's token
 * @param invalid the adapter's VALIDATION error maker
 * @throws {OutboxError} VALIDATION when it is not a non-empty string
 * @example
 * ```ts
 * import { OutboxError } from "edge-outbox";
 * const invalid = (m: string): OutboxError => new OutboxError("VALIDATION", m);
 * settleToken(token, invalid);
 * ```
 */
export function settleToken(token: unknown, invalid: Invalid): asserts token is string {
  if (typeof token !== "string" || token === "") throw invalid("settle needs the claim's token");
}

/**
 * Checks `stats`'s window.
 *
 * @param options `{ windowMs }`
 * @param invalid the adapter's VALIDATION error maker
 * @returns the window, ms @default 300000
 * @throws {OutboxError} VALIDATION when it is not a non-negative integer
 * @example
 * ```ts
 * import { OutboxError } from "edge-outbox";
 * const invalid = (m: string): OutboxError => new OutboxError("VALIDATION", m);
 * const windowMs = statsWindow(undefined, invalid); // 300000
 * ```
 */
export function statsWindow(options: { windowMs?: number } | undefined, invalid: Invalid): number {
  const windowMs = options?.windowMs ?? 300_000;
  if (!isNonNegativeInt(windowMs)) throw invalid(`stats windowMs must be a non-negative integer, got ${windowMs}`);
  return windowMs;
}

/**
 * Checks `listDead`'s options. A cursor is the decimal `seq` of the previous page's last row.
 *
 * @param options `{ limit, cursor }`
 * @param invalid the adapter's VALIDATION error maker
 * @param bounds `maxLimit` (no bound when absent) and `cursorDigits` (the most digits a cursor may have)
 * @returns the limit and the seq to page after ("0" for the first page)
 * @throws {OutboxError} VALIDATION for a bad limit or cursor
 * @example
 * ```ts
 * import { OutboxError } from "edge-outbox";
 * const invalid = (m: string): OutboxError => new OutboxError("VALIDATION", m);
 * const { limit, after } = listDeadArgs({ limit: 50, cursor: null }, invalid, { cursorDigits: 15 });
 * ```
 */
export function listDeadArgs(
  options: { limit: number; cursor?: string | null },
  invalid: Invalid,
  bounds: { maxLimit?: number | undefined; cursorDigits: number },
): { limit: number; after: string } {
  const limit = options?.limit;
  const cursor = options?.cursor ?? null;
  if (bounds.maxLimit === undefined) {
    if (!isPositiveInt(limit)) throw invalid(`listDead limit must be a positive integer, got ${limit}`);
  } else if (!isPositiveInt(limit) || limit > bounds.maxLimit) {
    throw invalid(`listDead limit must be an integer between 1 and ${bounds.maxLimit}, got ${limit}`);
  }
  if (cursor === null) return { limit, after: "0" };
  if (typeof cursor !== "string" || !new RegExp(`^\\d{1,${bounds.cursorDigits}}$`).test(cursor)) {
    throw invalid(`invalid dead-letter cursor ${JSON.stringify(cursor)}`);
  }
  return { limit, after: cursor };
}

/** The options of `purge`. */
export interface PurgeArgs {
  /** Which rows. */
  readonly status: "dead" | "delivered";
  /** Epoch ms; rows done before it go. */
  readonly olderThan: number;
  /** At most this many rows. */
  readonly limit: number;
}

/**
 * Checks `purge`'s options.
 *
 * @param options `{ status, olderThan, limit }`
 * @param invalid the adapter's VALIDATION error maker
 * @returns the checked options
 * @throws {OutboxError} VALIDATION for a status other than "dead"/"delivered", a non-finite `olderThan`, or a limit
 *   that is not a positive integer
 * @example
 * ```ts
 * import { OutboxError } from "edge-outbox";
 * const invalid = (m: string): OutboxError => new OutboxError("VALIDATION", m);
 * const { status, olderThan, limit } = purgeArgs({ status: "dead", olderThan: Date.now(), limit: 500 }, invalid);
 * ```
 */
export function purgeArgs(options: PurgeArgs, invalid: Invalid): PurgeArgs {
  const { status, olderThan, limit } = options ?? ({} as PurgeArgs);
  if (status !== "dead" && status !== "delivered") {
    throw invalid(`purge status must be "dead" or "delivered", got ${JSON.stringify(status)}`);
  }
  if (typeof olderThan !== "number" || !Number.isFinite(olderThan)) {
    throw invalid(`purge olderThan must be an epoch-ms number, got ${olderThan}`);
  }
  if (!isPositiveInt(limit)) throw invalid(`purge limit must be a positive integer, got ${limit}`);
  return { status, olderThan, limit };
}
