/**
 * The D1 schema of the outbox: the same versioned DDL as the libSQL adapter (D1 is SQLite), and {@link d1Schema} for
 * users who apply migrations with `wrangler d1 migrations` or their own tool.
 *
 * @module
 */
import { libsqlSchema } from "../libsql/schema.ts";

export { MIGRATIONS_TABLE_DDL, renderSql, SCHEMA_VERSIONS } from "../libsql/schema.ts";

/**
 * Returns the complete DDL for one table, for users who run their own migration tool (e.g. a file under
 * `migrations/` for `wrangler d1 migrations apply`): the migrations table, every schema version, and the rows
 * recording those versions as applied (so a later `storage.migrate()` does nothing). Every statement is idempotent.
 *
 * @param options.table the outbox table name @default "outbox"
 * @returns SQL statements to run in order (e.g. joined with `;\n` into a migration file, or in one `db.batch`)
 * @throws {OutboxError} CONFIG when `table` is not a plain identifier
 * @example
 * ```ts
 * import { d1Schema } from "edge-outbox/d1";
 * const migrationFile = d1Schema({ table: "outbox" }).join(";\n") + ";\n";
 * ```
 */
export function d1Schema(options: { table?: string | undefined } = {}): string[] {
  return libsqlSchema({ table: options.table ?? "outbox" });
}
