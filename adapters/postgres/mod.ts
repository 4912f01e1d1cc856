/**
 * `edge-outbox/postgres`: the outbox storage on PostgreSQL through postgres.js, and a session advisory lock.
 *
 * The client is typed structurally ({@link PostgresClient}), so importing this module pulls in no driver: pass the
 * `sql` you created with `postgres(url)`. Messages join your transaction: `sql.begin(tx => outbox.enqueue(tx, …))`,
 * or a reserved connection on which you ran `BEGIN`. There is no atomic-batch `statement()` on Postgres
 * (`outbox.statement()` throws CONFIG): use a transaction.
 *
 * Guarantees and how they are kept:
 * - **Per-key order = commit order**, even with concurrent writers: an enqueue takes a transaction-scoped advisory
 *   lock on each of its keys (sorted) before its rows draw their `seq`, so `seq` order per key is commit order.
 *   Enqueue all messages of one transaction in one call: two separate calls whose keys are taken in opposite orders
 *   by two transactions can deadlock, and PostgreSQL aborts one of them (40P01, a retryable STORAGE error).
 * - **Claims** are key-aware (schema v2): a claim first locks due keys in `<table>_keys` (`FOR UPDATE SKIP LOCKED`),
 *   then, with a snapshot taken after those locks, takes each key's due prefix (several messages of one key per
 *   claim, `capabilities.keyPrefixClaims: true`) and due keyless rows, all in one round trip. Rows queued behind a
 *   leased or backing-off head are never read, so a claim costs O(rows claimed), whatever the backlog.
 * - **Settles** are one statement (data-modifying CTEs) per call, fenced on the lease token, with the counters
 *   written by the same statement. All times come from the database clock.
 *
 * @example
 * ```ts
 * import postgres from "postgres";
 * import * as v from "valibot";
 * import { createOutbox, createRelay, defineTopic } from "edge-outbox";
 * import { postgresStorage } from "edge-outbox/postgres";
 *
 * const sql = postgres(process.env.DATABASE_URL!, { max: 4 });
 * const storage = postgresStorage(sql, { table: "outbox", schema: "public" });
 * await storage.migrate();
 * const orderCreated = defineTopic("order.created", v.object({ id: v.string() }));
 * const outbox = createOutbox({ storage, topics: [orderCreated] });
 * await sql.begin(async (tx) => {
 *   await tx`insert into orders (id) values ('o1')`;
 *   await outbox.enqueue(tx, orderCreated, { id: "o1" }, { key: "customer-7" });
 * });
 * ```
 *
 * @module
 */
import { OutboxError } from "../../src/errors.ts";
import { hasMethod, type PostgresClient, PREFIX } from "./client.ts";
import { postgresSql } from "./sql.ts";
import {
  createPostgresStorage,
  type PostgresStorage,
  type PostgresStorageOptions,
  resolvePostgresStorageOptions,
} from "./storage.ts";

export type { PostgresStorage, PostgresStorageOptions } from "./storage.ts";
export type { PostgresClient, PostgresExecutor, PostgresLockClient, PostgresParameter, PostgresQueryOptions, PostgresReservedConnection, PostgresRow } from "./client.ts";
export { advisoryLockKey, pgAdvisoryLock, type PgAdvisoryLockOptions } from "./lock.ts";
export { postgresSchema } from "./schema.ts";


/**
 * Creates the Postgres storage over your postgres.js client. It never opens connections itself. Call `migrate()`
 * once at start (idempotent, versioned, safe from several processes at once), or install {@link postgresSchema}
 * with your own migration tool.
 *
 * Enqueue with the transaction handle of `sql.begin(tx => …)` or a reserved connection (`sql.reserve()`) inside your
 * own `BEGIN`/`COMMIT`. The pool itself (`outbox.enqueue(sql, …)`) is refused with CONFIG before anything is sent
 * (the row would escape your transaction, and wait forever on a key lock your transaction holds), unless you opt in
 * with `standaloneEnqueue: true` (its own short transaction, 5 s `lock_timeout`). An id that a row in the table
 * already has is refused with CONFLICT, nothing of the call is kept, and your transaction stays usable. Claims,
 * settles and reads use `sql`'s pool. `subscribe` LISTENs on {@link PostgresStorage.channel} (a dedicated
 * connection of postgres.js); every enqueue and replay notifies it at commit, unless `notify: false` (for drains
 * that nothing wakes: cron, QStash; PostgreSQL serialises the commits of notifying transactions cluster-wide).
 *
 * Behind a transaction-mode pooler (PgBouncer, Supavisor) create the client with `prepare: false`; LISTEN needs a
 * direct or session-mode connection there.
 *
 * @param sql a postgres.js client (`postgres(url)`), typed structurally
 * @param options table (default "outbox"), schema (default "public"), retainDeliveredMs (default 0), busyRetryMs
 *   (default 2000), standaloneEnqueue (default false), notify (default true)
 * @returns the storage; `capabilities` is `{ batchStatement: false, skipLocked: true, serialWrites: false,
 *   keyPrefixClaims: true }`; `scope` is `"postgres:<schema>.<table>"`
 * @throws {OutboxError} CONFIG for a bad option (a table or schema that is not a plain identifier, a table name longer
 *   than 52 characters) or a value that is not a postgres.js client; nothing is sent to the database. Calls on a
 *   table that does not exist reject with CONFIG ("call storage.migrate() or install the DDL from postgresSchema()")
 * @example
 * ```ts
 * import postgres from "postgres";
 * import { createOutbox } from "edge-outbox";
 * import { postgresStorage } from "edge-outbox/postgres";
 *
 * const sql = postgres("postgres://app@localhost:5432/app", { max: 4 });
 * const storage = postgresStorage(sql, { table: "outbox", schema: "messaging" });
 * await storage.migrate();
 * const outbox = createOutbox({ storage });
 * await sql.begin(async (tx) => {
 *   await tx`update accounts set balance = balance - 5 where id = 1`;
 *   await outbox.enqueue(tx, "account.debited", { id: 1, amount: 5 }, { key: "account-1" });
 * });
 * ```
 */
export function postgresStorage(sql: PostgresClient, options: PostgresStorageOptions = {}): PostgresStorage {
  const opts = resolvePostgresStorageOptions(options); // CONFIG before anything is sent
  const statements = postgresSql(opts);
  if (!hasMethod(sql, "unsafe") || !hasMethod(sql, "begin")) {
    throw new OutboxError("CONFIG", `${PREFIX} postgresStorage needs a postgres.js client (unsafe, begin)`);
  }
  return createPostgresStorage(sql, opts, statements);
}
export { type PostgresInbox, postgresInbox, type PostgresInboxOptions, postgresInboxSchema } from "./inbox.ts";
