/**
 * `edge-outbox/libsql`: the outbox storage on libSQL / SQLite through `@libsql/client` (`file:`, `:memory:`, and
 * `libsql://` / `http(s)://` servers such as Turso).
 *
 * The client is typed structurally ({@link LibsqlClient}), so importing this module pulls in no driver: pass the
 * client you created. Messages join your write transaction (`outbox.enqueue(tx, …)`) or your atomic batch
 * (`client.batch([insertOrder, outbox.statement(…)], "write")`, one round trip: the right choice at the edge).
 *
 * Busy databases: SQLite allows one writer at a time and a second connection's write fails at once with
 * `SQLITE_BUSY`. Relay-side calls (`claim`, `settle`, `migrate`, …) retry with an asynchronous backoff for up to
 * `busyRetryMs`; nothing sets `busy_timeout`, which would block the event loop. On local files the adapter takes
 * SQLite's write lock through `executeMultiple` before preparing any statement: in `libsql` 0.5 a prepared statement
 * that fails with `SQLITE_BUSY` is never reset, and poisons its pooled connection until garbage collection
 * (tursodatabase/libsql-client-ts#352). Open your own write transactions with {@link LibsqlStorage.begin} for the
 * same protection.
 *
 * @example
 * ```ts
 * import { createClient } from "@libsql/client";
 * import { createOutbox, defineTopic } from "edge-outbox";
 * import { libsqlStorage } from "edge-outbox/libsql";
 * import * as v from "valibot";
 *
 * const client = createClient({ url: "file:app.db" });
 * const storage = libsqlStorage(client, { table: "outbox" });
 * await storage.migrate();
 * const orderCreated = defineTopic("order.created", v.object({ id: v.string() }));
 * const outbox = createOutbox({ storage, topics: [orderCreated] });
 * await client.batch([
 *   { sql: "INSERT INTO orders (id) VALUES (?)", args: ["o1"] },
 *   outbox.statement(orderCreated, { id: "o1" }),
 * ], "write");
 * ```
 *
 * @module
 */
export {
  isBusyError,
  type LibsqlArg,
  type LibsqlClient,
  type LibsqlExecutor,
  type LibsqlResultSet,
  type LibsqlRow,
  type LibsqlStatement,
  type LibsqlTransaction,
  type LibsqlTransactionMode,
} from "./client.ts";
export { libsqlSchema } from "./schema.ts";
export { type LibsqlStorage, libsqlStorage, type LibsqlStorageOptions } from "./storage.ts";
export { type LibsqlInbox, libsqlInbox, type LibsqlInboxOptions, libsqlInboxSchema } from "./inbox.ts";
