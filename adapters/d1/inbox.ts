/**
 * The inbox storage on Cloudflare D1 ({@link d1Inbox}): the SQLite inbox SQL of the libSQL adapter, batch-only.
 *
 * D1 has no interactive transactions: only `batch()` is atomic. The inbox therefore works in its statement form:
 * `inbox.handleBatch(messageId, [effect statements…])` runs the inbox insert first and the effects after it in one
 * batch, and a duplicate fails the insert, so the batch applies nothing. `inbox.handle(tx, …)` and ordering checks
 * (key positions need a read inside the transaction) are not available.
 *
 * @module
 */
import { OutboxError } from "../../src/errors.ts";
import type { InboxCapabilities, InboxStorage } from "../../src/inbox.ts";
import { sqliteInboxError, sqliteInboxSql } from "../libsql/inbox.ts";

/** The part of D1's prepared statement the inbox uses (`env.DB.prepare(sql)` returns one). */
export interface D1InboxStatement {
  /** Binds positional parameters, returning the bound statement. */
  bind(...values: unknown[]): D1InboxStatement;
  /** Runs the statement and returns its rows. */
  all(): Promise<{ results?: readonly unknown[] | undefined }>;
}

/** The part of D1's `D1Database` the inbox uses (a real binding is assignable to it). */
export interface D1InboxDatabase {
  /** Prepares a statement. */
  prepare(sql: string): D1InboxStatement;
  /** Runs statements atomically, in order. */
  batch(statements: D1InboxStatement[]): Promise<ReadonlyArray<{ results?: readonly unknown[] | undefined }>>;
}

/** Options of {@link d1Inbox}. */
export interface D1InboxOptions {
  /** Inbox table name (also the prefix of `<table>_keys` and `<table>_migrations`). @default "inbox" */
  table?: string | undefined;
}

/** The D1 inbox storage: batch-only. */
export interface D1Inbox extends InboxStorage<never, D1InboxStatement> {
  /** The validated table name. */
  readonly table: string;
  /** The inbox insert for your own `env.DB.batch([...])`: put it first; a duplicate fails the batch. */
  statement(consumer: string, messageId: string): D1InboxStatement;
  /** Runs statements as one atomic `batch()`. */
  runBatch(statements: readonly D1InboxStatement[]): Promise<void>;
}

/**
 * Creates the inbox storage on a D1 binding. Call `migrate()` once (idempotent), or install `libsqlInboxSchema()`
 * (the same DDL) with `wrangler d1 migrations`.
 *
 * @param db the D1 binding (`env.DB`), typed structurally
 * @param options table (default "inbox")
 * @returns the inbox storage; `capabilities` is `{ transaction: false, batchStatement: true, keyOrder: false }`
 * @throws {OutboxError} CONFIG for a bad table name or a value that is not a D1 binding; nothing is sent
 * @example
 * ```ts
 * import { createInbox } from "edge-outbox";
 * import { type D1Binding, d1Inbox } from "edge-outbox/d1";
 *
 * export default {
 *   async fetch(request: Request, env: { DB: D1Binding }): Promise<Response> {
 *     const inbox = createInbox({ storage: d1Inbox(env.DB), consumer: "billing" });
 *     const { id, amount } = await request.json() as { id: string; amount: number };
 *     const result = await inbox.handleBatch(id, [env.DB.prepare("UPDATE accounts SET balance = balance - ? WHERE id = 1").bind(amount)]);
 *     return Response.json({ result });
 *   },
 * };
 * ```
 */
export function d1Inbox(db: D1InboxDatabase, options: D1InboxOptions = {}): D1Inbox {
  if (typeof options !== "object" || options === null) throw new OutboxError("CONFIG", "d1Inbox options must be an object");
  for (const k of Object.keys(options)) {
    if (k !== "table") throw new OutboxError("CONFIG", `d1Inbox options: unknown option ${JSON.stringify(k)}`);
  }
  const table = options.table ?? "inbox";
  const sql = sqliteInboxSql(table);
  const d = db as unknown as Record<string, unknown>;
  if (typeof d?.["prepare"] !== "function" || typeof d["batch"] !== "function") {
    throw new OutboxError("CONFIG", "[edge-outbox:d1] d1Inbox needs a D1 binding (prepare, batch)");
  }
  const capabilities: InboxCapabilities = { transaction: false, batchStatement: true, keyOrder: false };
  const fail = (what: string, e: unknown): OutboxError => sqliteInboxError("d1", table, what, e);
  const run = async <T>(what: string, op: () => Promise<T>): Promise<T> => {
    try {
      return await op();
    } catch (e) {
      throw fail(what, e);
    }
  };

  return {
    name: "d1",
    scope: `d1:${table}`,
    table,
    capabilities,
    migrate: () => run("migrate", async () => void (await db.batch(sql.ddl.map((s) => db.prepare(s))))),
    record: () =>
      Promise.reject(new OutboxError("CONFIG", "[edge-outbox:d1] D1 has no interactive transactions: use inbox.handleBatch(id, statements)")),
    statement: (consumer, messageId) => db.prepare(sql.statement).bind(consumer, messageId),
    runBatch: (statements) => run("batch", async () => void (await db.batch([...statements]))),
    isRecorded: (consumer, messageId) =>
      run("isRecorded", async () => ((await db.prepare(sql.isRecorded).bind(consumer, messageId).all()).results?.length ?? 0) > 0),
    purge: ({ consumer, olderThanMs, limit }) =>
      run("purge", async () => {
        const [rows] = await db.batch([
          db.prepare(sql.purge).bind(consumer, olderThanMs, limit),
          db.prepare(sql.purgeKeys).bind(consumer, olderThanMs, limit),
        ]);
        return rows?.results?.length ?? 0;
      }),
  };
}
