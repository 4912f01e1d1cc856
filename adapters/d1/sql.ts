/**
 * The SQL of the D1 adapter: D1 is SQLite, so it runs the statements of the libSQL adapter unchanged (one dialect, two
 * drivers; see `adapters/libsql/sql.ts`). Only the way they reach the database differs: D1 prepared statements and
 * `batch()` instead of `@libsql/client` calls.
 *
 * @module
 */
export { type LibsqlSql as SqliteSql, libsqlSql as sqliteSql, NOW_MS } from "../libsql/sql.ts";

/**
 * Records a schema version as applied; fails (UNIQUE) when another migration recorded it first. It opens each
 * migration batch, so two concurrent `migrate()` calls never both apply a version (D1 has no lock to take instead).
 * `?1` the version. Placeholder `{{table}}`.
 */
export const CLAIM_VERSION_SQL: string =
  `INSERT INTO "{{table}}_migrations" (version, applied_at) VALUES (CAST(?1 AS INTEGER), CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER))`;
