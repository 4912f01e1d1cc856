/**
 * Error mapping shared by the SQL storages (internal, not exported): VALIDATION errors with the adapter's prefix,
 * driver errors wrapped as STORAGE (retryable when the adapter says so), and a missing table turned into a CONFIG
 * error that says what to do (DECISIONS.md 4). The adapter supplies the dialect's tests (`isRetryable`,
 * `isMissingTable`); nothing here knows a driver or a dialect.
 *
 * @module
 */
import { isOutboxError, OutboxError, toOutboxError } from "../errors.ts";

/** What an adapter tells {@link sqlErrors} about its driver. */
export interface SqlErrorOptions {
  /** Adapter name: the `[edge-outbox:<adapter>]` prefix and the `<adapter>Schema()` DDL helper it names. */
  readonly adapter: string;
  /** The table as the user knows it (e.g. `outbox`, `public.outbox`), named by the missing-table error. */
  readonly table: string;
  /** Whether retrying the same call may succeed (busy database, dropped connection). */
  isRetryable(e: unknown): boolean;
  /** Whether the driver error says a table does not exist (SQLite `no such table`, Postgres 42P01). */
  isMissingTable(e: unknown): boolean;
}

/** The error makers of one storage. */
export interface SqlErrors {
  /** `[edge-outbox:<adapter>]`. */
  readonly prefix: string;
  /** A VALIDATION error with the prefix. */
  invalid(message: string): OutboxError;
  /**
   * Wraps a caught value: OutboxErrors as they are; a missing table as {@link missingTableError}; anything else as
   * `STORAGE "[edge-outbox:<adapter>] <what> failed: <driver message>"`, retryable when the adapter says so.
   */
  storage(what: string, e: unknown): OutboxError;
}

/**
 * The CONFIG error for a call on a table that does not exist (the user forgot `storage.migrate()`).
 *
 * @param adapter adapter name, e.g. "libsql"
 * @param table the table as the user knows it
 * @param cause the driver error
 * @returns `OutboxError("CONFIG", "[edge-outbox:libsql] table outbox does not exist: call storage.migrate() or install the DDL from libsqlSchema()")`
 * @example
 * ```ts
 * throw missingTableError("libsql", "outbox", new Error("no such table: outbox"));
 * ```
 */
export function missingTableError(adapter: string, table: string, cause: unknown): OutboxError {
  return new OutboxError(
    "CONFIG",
    `[edge-outbox:${adapter}] table ${table} does not exist: call storage.migrate() or install the DDL from ${adapter}Schema()`,
    { cause },
  );
}

/**
 * Makes the error makers of one storage.
 *
 * @param options adapter name, table, and the driver's error tests
 * @returns `{ prefix, invalid, storage }`
 * @example
 * ```ts
 * const errors = sqlErrors({ adapter: "libsql", table: "outbox", isRetryable: () => false, isMissingTable: () => false });
 * errors.invalid("claim limit must be a positive integer"); // VALIDATION "[edge-outbox:libsql] claim limit …"
 * ```
 */
export function sqlErrors(options: SqlErrorOptions): SqlErrors {
  const { adapter, table, isRetryable, isMissingTable } = options;
  const prefix = `[edge-outbox:${adapter}]`;
  return {
    prefix,
    invalid: (message) => new OutboxError("VALIDATION", `${prefix} ${message}`),
    storage(what, e) {
      if (isOutboxError(e)) return e;
      if (isMissingTable(e)) return missingTableError(adapter, table, e);
      return toOutboxError("STORAGE", `${prefix} ${what} failed`, e, isRetryable(e));
    },
  };
}
