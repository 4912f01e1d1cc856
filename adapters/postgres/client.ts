/**
 * The structural types of the postgres.js client the adapter uses (a real `Sql`, `TransactionSql` and `ReservedSql`
 * are assignable to them; `test/postgres.test.ts` proves it), and the classification of driver errors.
 * Nothing here imports `postgres`.
 *
 * @module
 */
import { isOutboxError, OutboxError, toOutboxError } from "../../src/errors.ts";

/** A value the adapter binds as a query parameter (lists travel as JSON text). */
export type PostgresParameter = string | number | boolean | null;

/** One result row, by column name. */
export interface PostgresRow {
  /** Column values. */
  readonly [column: string]: unknown;
}

/** Per-query options (postgres.js `unsafe`'s third argument). */
export interface PostgresQueryOptions {
  /** Use a named prepared statement (ignored when the client was created with `prepare: false`). */
  prepare?: boolean;
}

/**
 * Anything that runs SQL text with parameters: postgres.js `Sql` (the pool, autocommit), the `TransactionSql` of
 * `sql.begin(tx => …)`, or a `ReservedSql` from `sql.reserve()`. This is the enqueue handle.
 */
export interface PostgresExecutor {
  /** Runs one statement with positional parameters (`$1`, `$2`, …). */
  unsafe(query: string, parameters?: PostgresParameter[], options?: PostgresQueryOptions): PromiseLike<readonly PostgresRow[]>;
}

/** The part of postgres.js `Sql` (the pool) the storage uses. */
export interface PostgresClient extends PostgresExecutor {
  /** Runs `fn` in a transaction on one connection: commits when it resolves, rolls back when it rejects. */
  begin(fn: (tx: PostgresExecutor) => Promise<unknown>): Promise<unknown>;
}

/** A connection reserved from the pool (postgres.js `ReservedSql`). */
export interface PostgresReservedConnection extends PostgresExecutor {
  /** Gives the connection back to the pool. */
  release(): void;
}

/** The part of postgres.js `Sql` the advisory lock uses. */
export interface PostgresLockClient extends PostgresExecutor {
  /** Takes one connection out of the pool until `release()`. */
  reserve(): Promise<PostgresReservedConnection>;
  /** The client's parsed options; `max` is checked (the lock needs a second pooled connection). */
  readonly options?: { readonly max?: number };
}

const BUSY_SQLSTATES = new Set(["40001", "40P01", "55P03"]);
const RETRYABLE_SQLSTATES = new Set(["40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300", "57014"]);
const CONNECTION_SQLSTATES = new Set(["57P01", "57P02", "57P03"]);
const RETRYABLE_DRIVER_CODES = new Set([
  "CONNECTION_CLOSED",
  "CONNECTION_DESTROYED",
  "CONNECT_TIMEOUT",
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EAI_AGAIN",
]);

function codeOf(e: unknown): string {
  if (typeof e !== "object" || e === null) return "";
  const code = (e as { code?: unknown }).code;
  return typeof code === "string" ? code : "";
}

/**
 * Tells whether a driver error is a transient conflict worth retrying at once: serialization failure (40001),
 * deadlock (40P01) or lock not available (55P03).
 *
 * @param e a caught error
 * @returns true for those SQLSTATEs
 * @example
 * ```ts
 * try { await sql`update orders set total = 0` } catch (e) { if (isBusyError(e)) console.warn("retry the transaction") }
 * ```
 */
export function isBusyError(e: unknown): boolean {
  return BUSY_SQLSTATES.has(codeOf(e));
}

/**
 * Tells whether a driver error may go away by retrying the same call: a dropped or refused connection, a server
 * shutting down or restarting (57P01–57P03), too many connections (53300), a statement timeout (57014), or a
 * transient conflict ({@link isBusyError}). SQL errors (syntax, constraint, permission) are not retryable.
 *
 * @param e a caught error
 * @returns true when retrying may succeed
 * @example
 * ```ts
 * try { await sql`select 1` } catch (e) { console.log(isRetryableError(e)) }
 * ```
 */
export function isRetryableError(e: unknown): boolean {
  const code = codeOf(e);
  return RETRYABLE_SQLSTATES.has(code) || RETRYABLE_DRIVER_CODES.has(code) || /^08[0-9A-Z]{3}$/.test(code);
}

/**
 * Tells whether an error means the connection it ran on is gone (dropped, terminated, never opened).
 *
 * @param e a caught error
 * @returns true when the connection cannot be used again
 * @example
 * ```ts
 * isConnectionError({ code: "57P01" }); // true: terminated by an administrator
 * ```
 */
export function isConnectionError(e: unknown): boolean {
  const code = codeOf(e);
  if (code.startsWith("CONNECTION_") || code === "CONNECT_TIMEOUT" || CONNECTION_SQLSTATES.has(code)) return true;
  if (/^08[0-9A-Z]{3}$/.test(code) || /^E[A-Z]+$/.test(code)) return true;
  return (e as { severity?: unknown } | null)?.severity === "FATAL";
}

/**
 * Tells whether a driver error says a table (or another relation) does not exist: SQLSTATE 42P01, e.g. the outbox
 * table before `migrate()`.
 *
 * @param e a caught error
 * @returns true for 42P01
 * @example
 * ```ts
 * isMissingTableError({ code: "42P01" }); // true
 * ```
 */
export function isMissingTableError(e: unknown): boolean {
  return codeOf(e) === "42P01";
}

/** The message prefix of every error of the adapter. */
export const PREFIX = "[edge-outbox:postgres]";

/**
 * Wraps a driver error as STORAGE (retryable when {@link isRetryableError}); keeps OutboxErrors as they are.
 *
 * @param what the operation, e.g. "claim"
 * @param e the caught value (kept as `cause`)
 * @returns `OutboxError("STORAGE", "[edge-outbox:postgres] claim failed: …")`
 * @example
 * ```ts
 * try { await sql`select 1` } catch (e) { throw storageError("ping", e) }
 * ```
 */
export function storageError(what: string, e: unknown): OutboxError {
  if (isOutboxError(e)) return e;
  return toOutboxError("STORAGE", `${PREFIX} ${what} failed`, e, isRetryableError(e));
}

/**
 * Makes a VALIDATION error with the adapter prefix.
 *
 * @param message what is wrong
 * @returns the error
 * @example
 * ```ts
 * throw invalid("claim limit must be a positive integer");
 * ```
 */
export function invalid(message: string): OutboxError {
  return new OutboxError("VALIDATION", `${PREFIX} ${message}`);
}

export { hasMethod, num, numOrNull } from "../../src/sql/coerce.ts";
