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
 * The CONFLICT error for an enqueue whose given id a row of the table already has (DECISIONS.md 2). Nothing was
 * written, and the caller's transaction is still usable.
 *
 * @param adapter adapter name, e.g. "libsql"
 * @param table the table as the user knows it
 * @param ids the colliding ids, when known (at most a few are named)
 * @param cause the driver error, if any
 * @returns `OutboxError("CONFLICT", "[edge-outbox:libsql] enqueue: id … is already used by a row of table outbox …")`
 * @example
 * ```ts
 * throw conflictError("libsql", "outbox", ["0190…"], undefined);
 * ```
 */
export function conflictError(adapter: string, table: string, ids: readonly string[], cause: unknown): OutboxError {
  const named = ids.length === 0
    ? "a given id is"
    : `${ids.length === 1 ? "id" : "ids"} ${ids.slice(0, 5).join(", ")}${ids.length > 5 ? ", …" : ""} ${ids.length === 1 ? "is" : "are"}`;
  return new OutboxError(
    "CONFLICT",
    `[edge-outbox:${adapter}] enqueue: ${named} already used by a row of table ${table} (pending, dead or kept ` +
      `delivered); nothing was written`,
    cause === undefined ? {} : { cause },
  );
}

const NETWORK_CODES = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENETDOWN",
  "EAI_AGAIN",
  "UND_ERR_SOCKET",
  "UND_ERR_CONNECT_TIMEOUT",
  "UND_ERR_HEADERS_TIMEOUT",
  "UND_ERR_BODY_TIMEOUT",
  "UND_ERR_CLOSED",
]);
/** fetch's network failures across runtimes: Node/undici, workerd, Chromium, Firefox, Safari. */
const NETWORK_MESSAGES = /(?:^|: )(fetch failed|network connection lost\.?|failed to fetch|networkerror when attempting to fetch resource\.?|load failed|connection reset by peer|socket hang up)$/i;

/**
 * Tells whether an error (or one of its causes) is a network failure of the runtime's `fetch` or socket layer: a
 * dropped, reset or refused connection, a timeout, a DNS hiccup. Such a call may succeed when retried.
 *
 * @param e a caught error
 * @returns true for a network failure
 * @example
 * ```ts
 * isNetworkError(new TypeError("fetch failed", { cause: { code: "ECONNRESET" } })); // true
 * isNetworkError(new Error("Network connection lost.")); // true (workerd)
 * ```
 */
export function isNetworkError(e: unknown): boolean {
  for (let x: unknown = e, depth = 0; typeof x === "object" && x !== null && depth < 5; depth++) {
    const { code, message } = x as { code?: unknown; message?: unknown };
    if (typeof code === "string" && NETWORK_CODES.has(code)) return true;
    if (typeof message === "string" && NETWORK_MESSAGES.test(message.trim())) return true;
    x = (x as { cause?: unknown }).cause;
  }
  return false;
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
