/**
 * The D1 storage behind {@link d1Storage} (re-exported by `mod.ts`): the shared SQLite storage of the libSQL adapter
 * over a D1 binding, plus batch-only writes.
 *
 * @module
 */
import * as v from "valibot";
import { OutboxError } from "../../src/errors.ts";
import type { NewMessage } from "../../src/message.ts";
import { parseOptions } from "../../src/options.ts";
import { hasMethod, num } from "../../src/sql/coerce.ts";
import type { OutboxStorage } from "../../src/storage.ts";
import { isBusyError, type LibsqlRow, type LibsqlStatement } from "../libsql/client.ts";
import { sqliteStorage } from "../libsql/sqlite.ts";
import { type D1Binding, type D1Result, type D1Statement, isRetryableError } from "./client.ts";
import { MIGRATIONS_TABLE_DDL, renderSql, SCHEMA_VERSIONS } from "./schema.ts";
import { CLAIM_VERSION_SQL } from "./sql.ts";

/** Options of {@link d1Storage}. */
export interface D1StorageOptions {
  /** Outbox table name (also the prefix of `<table>_counters` and `<table>_migrations`). @default "outbox" */
  table?: string | undefined;
  /**
   * Keep delivered rows this long (ms) as status "delivered" instead of deleting them; remove them with
   * `purge({ status: "delivered", … })`. 0 deletes at once. @default 0
   */
  retainDeliveredMs?: number | undefined;
  /**
   * How long relay-side calls (`claim`, `settle`, `purge`, …) retry D1's transient errors ("Network connection lost",
   * a reset or overloaded database) with an asynchronous backoff before throwing. 0 disables. @default 2000
   */
  busyRetryMs?: number | undefined;
  /**
   * How often `subscribe()` reads the table's sequence head to notice commits made elsewhere (other Workers, other
   * requests), ms; 0: in-process wake-ups only. Each read is a D1 query (one row read). @default 0
   */
  watchIntervalMs?: number | undefined;
}

/**
 * The enqueue handle of D1: a list of statements that you run as one atomic `batch`. D1 has no interactive
 * transactions, so `outbox.enqueue(list, …)` only appends the outbox statement to `list`; nothing is sent until you
 * run the list with `storage.batch(list)` (or `env.DB.batch(list)`).
 */
export type D1StatementList = D1Statement[];

/** The D1 storage: the {@link OutboxStorage} contract with batch-only writes. */
export interface D1Storage extends OutboxStorage<D1StatementList, D1Statement> {
  /** `"d1:<table>"`: storages on the same table share it (the relay's default lock key derives from it). */
  readonly scope: string;
  /** The validated table name. */
  readonly table: string;
  /** The delivered-row retention, ms (0: delivered rows are deleted). */
  readonly retainDeliveredMs: number;
  /**
   * Returns one prepared statement inserting `messages`, for your `env.DB.batch([...])` (D1 runs a batch atomically).
   * Synchronous; sends nothing. An empty list gives a statement that inserts nothing.
   */
  statement(messages: readonly NewMessage[]): D1Statement;
  /**
   * Appends the statement inserting `messages` to `list` (your batch), or refuses anything that is not a list: D1 has
   * no interactive transactions, so there is no `tx` to enqueue into.
   * @throws {OutboxError} CONFIG when `list` is not an array (e.g. the D1 binding itself)
   */
  enqueue(list: D1StatementList, messages: readonly NewMessage[]): Promise<void>;
  /**
   * Runs `statements` as one atomic D1 batch (your business statements and outbox statements together), like
   * `env.DB.batch(statements)`, with the outbox's error mapping, and wakes subscribed relays in this isolate when it
   * held an outbox statement.
   * @throws {OutboxError} CONFLICT when an outbox id is already used (nothing of the batch was written); CONFIG when
   *   the outbox table does not exist; STORAGE for any other failure (`retryable` for D1's transient errors)
   */
  batch(statements: D1Statement[]): Promise<D1Result[]>;
  /**
   * Wakes `onWake` soon after messages commit, until `signal` aborts: at once for a {@link D1Storage.batch} holding an
   * outbox statement or a replayed dead letter in this isolate; with `watchIntervalMs` > 0, within that interval for
   * commits made elsewhere. Resolves once listening.
   * @throws {OutboxError} VALIDATION when `onWake` is not a function
   */
  subscribe(onWake: () => void, signal: AbortSignal): Promise<void>;
}

const optionsSchema = v.strictObject({
  table: v.optional(v.string(), "outbox"),
  retainDeliveredMs: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(31_536_000_000)), 0),
  busyRetryMs: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(600_000)), 2_000),
  watchIntervalMs: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(3_600_000)), 0),
});

/** Statements made by `statement()`, with their message ids: a batch holding one wakes subscribed relays. */
const OUTBOX_STATEMENTS = new WeakMap<object, readonly string[]>();

const isVersionTaken = (e: unknown): boolean =>
  /UNIQUE constraint failed: [A-Za-z0-9_]+_migrations\.version\b/.test(String((e as { message?: unknown } | null)?.message ?? e));

/**
 * Creates the D1 storage over your D1 binding (`env.DB`). Writes are batch-only: put `outbox.statement(...)` in your
 * `env.DB.batch([...])`, or collect statements in an array with `outbox.enqueue(list, …)` and run it with
 * `storage.batch(list)`. Call `migrate()` once (idempotent), or apply {@link d1Schema} with `wrangler d1 migrations`.
 *
 * @param db the D1 binding, typed structurally (no `@cloudflare/workers-types` needed at run time)
 * @param options table name, delivered-row retention, transient-error retry budget, watch interval
 * @returns the storage
 * @throws {OutboxError} CONFIG for a bad option (e.g. a table name that is not a plain identifier) or a value that
 *   is not a D1 binding; nothing is sent to the database
 * @example
 * ```ts
 * import { createOutbox, defineTopic } from "edge-outbox";
 * import { d1Storage, type D1Binding } from "edge-outbox/d1";
 * import * as v from "valibot";
 *
 * const orderCreated = defineTopic("order.created", v.object({ id: v.string() }));
 * export default {
 *   async fetch(_req: Request, env: { DB: D1Binding }): Promise<Response> {
 *     const storage = d1Storage(env.DB);
 *     await storage.migrate();
 *     const outbox = createOutbox({ storage, topics: [orderCreated] });
 *     await env.DB.batch([
 *       env.DB.prepare("INSERT INTO orders (id) VALUES (?1)").bind("o1"),
 *       outbox.statement(orderCreated, { id: "o1" }),
 *     ]);
 *     return new Response("ok");
 *   },
 * };
 * ```
 */
export function d1Storage(db: D1Binding, options: D1StorageOptions = {}): D1Storage {
  const opts = parseOptions("d1Storage options", optionsSchema, options ?? {});
  const table = opts.table;
  if (!hasMethod(db, "prepare") || !hasMethod(db, "batch")) {
    throw new OutboxError("CONFIG", "[edge-outbox:d1] d1Storage needs a D1 binding (env.DB: prepare, batch)");
  }
  const prepare = (s: LibsqlStatement): D1Statement => (s.args.length ? db.prepare(s.sql).bind(...s.args) : db.prepare(s.sql));
  const read = async (s: LibsqlStatement): Promise<readonly LibsqlRow[]> => (await prepare(s).all()).results ?? [];
  const core = sqliteStorage({
    write: async (stmts) => (await db.batch(stmts.map(prepare))).map((r) => r.results ?? []),
    read,
  }, {
    adapter: "d1",
    table, // validated by the statements (CONFIG) before anything is sent
    retainDeliveredMs: opts.retainDeliveredMs,
    busyRetryMs: opts.busyRetryMs,
    isBusy: (e) => isBusyError(e) || isRetryableError(e),
    isRetryable: (e) => isBusyError(e) || isRetryableError(e),
    wakeOwner: db,
    watchIntervalMs: opts.watchIntervalMs,
  });
  const { sql, errors, relaySide, wake } = core;

  function statement(messages: readonly NewMessage[]): D1Statement {
    const stmt = prepare(core.enqueueStatement(messages));
    OUTBOX_STATEMENTS.set(stmt, messages.map((m) => m.id));
    return stmt;
  }

  const storage: D1Storage = {
    ...core.common,

    migrate(): Promise<void> {
      return relaySide("migrate", async () => {
        await db.batch([db.prepare(renderSql(MIGRATIONS_TABLE_DDL, table))]);
        const applied = new Set((await read({ sql: sql.appliedVersions, args: [] })).map((r) => num(r["version"])));
        for (const version of SCHEMA_VERSIONS) {
          if (applied.has(version.version)) continue;
          // The version row first: a concurrent migrate() that recorded it already makes this batch fail as a whole.
          const claim = db.prepare(renderSql(CLAIM_VERSION_SQL, table)).bind(version.version);
          try {
            await db.batch([claim, ...version.statements.map((s) => db.prepare(renderSql(s, table)))]);
          } catch (e) {
            if (!isVersionTaken(e)) throw e;
          }
        }
      });
    },

    enqueue(list: D1StatementList, messages: readonly NewMessage[]): Promise<void> {
      try {
        if (!Array.isArray(list)) {
          throw new OutboxError(
            "CONFIG",
            "[edge-outbox:d1] D1 has no interactive transactions, so there is no tx to enqueue into: put " +
              "outbox.statement(topic, payload) in your env.DB.batch([...]), or pass an array of statements to " +
              "enqueue into and run it with storage.batch(list)",
          );
        }
        if (!Array.isArray(messages)) throw errors.invalid("messages must be an array");
        if (messages.length > 0) list.push(statement(messages));
        return Promise.resolve();
      } catch (e) {
        return Promise.reject(e);
      }
    },

    statement,

    async batch(statements: D1Statement[]): Promise<D1Result[]> {
      if (!Array.isArray(statements)) throw errors.invalid("batch needs an array of D1 statements");
      if (statements.length === 0) return [];
      const messages = statements.some((s) => OUTBOX_STATEMENTS.has(s));
      let results: D1Result[];
      try {
        results = await db.batch(statements);
      } catch (e) {
        // A colliding id: CONFLICT naming those of the batch's outbox ids that exist (D1 rolled the whole batch back).
        throw await core.enqueueError(statements.flatMap((s) => OUTBOX_STATEMENTS.get(s) ?? []), e, read);
      }
      if (messages) wake.notify();
      return results;
    },
  };
  return storage;
}
