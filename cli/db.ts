// Opens the storage a `--db` URL names. The CLI is never bundled, so it loads the driver a URL needs on demand
// (the library itself never does: adapters take the user's client).
import { type OutboxStorage } from "../mod.ts";
import { libsqlStorage } from "../adapters/libsql/mod.ts";
import { postgresStorage } from "../adapters/postgres/mod.ts";
import { CliError, EXIT } from "./errors.ts";

/** What every command gets from `--db`, `--auth-token`, `--table`, `--schema`. */
export interface DbOptions {
  db?: string | undefined;
  authToken?: string | undefined;
  table?: string | undefined;
  schema?: string | undefined;
}

/** An opened database: the storage, a liveness probe and a way to close the client. */
export interface OpenedDb {
  kind: "libsql" | "postgres";
  storage: OutboxStorage<unknown, unknown>;
  /** Where it points, with any password removed (for messages). */
  display: string;
  ping(): Promise<void>;
  close(): Promise<void>;
}

/** Strips user info from a URL for display. */
export function redact(url: string): string {
  try {
    const u = new URL(url);
    if (!u.password) return url;
    u.password = "***";
    return u.toString();
  } catch {
    return url;
  }
}

async function load<T>(name: string): Promise<T> {
  try {
    return (await import(name)) as T;
  } catch (e) {
    throw new CliError(
      EXIT.USAGE,
      `this database needs the ${name} package: install it next to edge-outbox (npm install ${name})`,
      { cause: e },
    );
  }
}

/** Opens `--db` (default `$EDGE_OUTBOX_DB`, then `$DATABASE_URL`). */
export async function openDb(options: DbOptions): Promise<OpenedDb> {
  const url = options.db ?? process.env["EDGE_OUTBOX_DB"] ?? process.env["DATABASE_URL"];
  if (!url) {
    throw new CliError(EXIT.USAGE, "no database: pass --db file:app.db | libsql://… | http://… | postgres://… (or set EDGE_OUTBOX_DB)");
  }
  const scheme = url.slice(0, url.indexOf(":") + 1).toLowerCase();
  const display = redact(url);
  if (scheme === "postgres:" || scheme === "postgresql:") {
    const { default: postgres } = await load<{ default: (url: string, o: object) => unknown }>("postgres");
    const sql = postgres(url, { max: 4, onnotice: () => {}, connect_timeout: 5, idle_timeout: 5 }) as Parameters<
      typeof postgresStorage
    >[0] & { end(o?: { timeout?: number }): Promise<void>; unsafe(q: string): Promise<unknown> };
    const storage = postgresStorage(sql, { table: options.table, schema: options.schema });
    return {
      kind: "postgres",
      storage,
      display,
      ping: async () => void (await sql.unsafe("select 1")),
      close: () => sql.end({ timeout: 5 }),
    };
  }
  if (["file:", "libsql:", "http:", "https:", "ws:", "wss:"].includes(scheme) || url === ":memory:") {
    if (options.schema !== undefined) throw new CliError(EXIT.USAGE, "--schema applies to postgres:// databases only");
    const { createClient } = await load<{ createClient: (o: object) => Parameters<typeof libsqlStorage>[0] & { close(): void } }>(
      "@libsql/client",
    );
    const authToken = options.authToken ?? process.env["LIBSQL_AUTH_TOKEN"] ?? process.env["TURSO_AUTH_TOKEN"];
    const client = createClient(authToken ? { url, authToken } : { url });
    const storage = libsqlStorage(client, { table: options.table });
    return {
      kind: "libsql",
      storage,
      display,
      ping: async () => void (await client.execute({ sql: "select 1", args: [] })),
      close: async () => client.close(),
    };
  }
  throw new CliError(EXIT.USAGE, `unsupported --db ${display}: use file:…, libsql://…, http(s)://… or postgres://…`);
}
