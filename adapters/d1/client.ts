/**
 * The structural types of a Cloudflare D1 binding the adapter uses (`env.DB`: a real `D1Database` from
 * `@cloudflare/workers-types` is assignable to {@link D1Binding}; `test/d1.test.ts` proves it), and the classification
 * of D1's errors. Nothing here imports Cloudflare code; D1 speaks SQLite, so the SQLite error tests come from the
 * libSQL adapter.
 *
 * @module
 */
import { isNetworkError } from "../../src/sql/errors.ts";
import { isIdConflictError, isMissingTableError } from "../libsql/client.ts";

export { isIdConflictError, isMissingTableError };

/** One result row, by column name. */
export interface D1Row {
  /** Column values. */
  readonly [column: string]: unknown;
}

/** What `all()` and `batch()` resolve to (the part of D1's `D1Result` the adapter reads). */
export interface D1Result {
  /** The rows (absent on some writes). */
  readonly results?: readonly D1Row[] | undefined;
}

/** The part of D1's `D1PreparedStatement` the adapter uses. */
export interface D1Statement {
  /** Binds positional values (`?1`, `?2`, …) and returns the bound statement. */
  bind(...values: unknown[]): D1Statement;
  /** Runs the statement and resolves with its rows. */
  all(): Promise<D1Result>;
}

/** The part of D1's `D1Database` binding the adapter uses (`env.DB`). */
export interface D1Binding {
  /** Prepares a statement (synchronous; sends nothing). */
  prepare(query: string): D1Statement;
  /** Runs statements atomically, in order, in one round trip (D1's only transaction). */
  batch(statements: D1Statement[]): Promise<D1Result[]>;
}

/**
 * D1's transient failures, as its docs name them ("Retry queries": "Network connection lost", "storage caused object
 * to be reset", "reset because its code was updated"), plus an overloaded database and a transient remote node.
 */
const D1_TRANSIENT = /Network connection lost|storage caused object to be reset|reset because its code was updated|is overloaded|transient issue/i;

/**
 * Tells whether a D1 error may go away when the same call is made again: the transient errors of D1's documentation,
 * or a network failure.
 *
 * @param e a caught error
 * @returns true when retrying may succeed
 * @example
 * ```ts
 * isRetryableError(new Error("D1_ERROR: Network connection lost.")); // true
 * ```
 */
export function isRetryableError(e: unknown): boolean {
  if (isNetworkError(e)) return true;
  for (let x: unknown = e, depth = 0; typeof x === "object" && x !== null && depth < 4; depth++) {
    const message = (x as { message?: unknown }).message;
    if (typeof message === "string" && D1_TRANSIENT.test(message)) return true;
    x = (x as { cause?: unknown }).cause;
  }
  return false;
}
