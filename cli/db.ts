// Opens the storage a `--db` URL names. The CLI is never bundled, so it loads the driver a URL needs on demand
// (the library itself never does: adapters take the user's client).
import { type OutboxStorage } from "../mod.ts";
import { libsqlStorage } from "../adapters/libsql/mod.ts";
import { postgresStorage } from "../adapters/postgres/mod.ts";
import { CliError, EXIT, unreachable } from "./errors.ts";

/** What every command gets from `--db`, `--auth-token`, `--table`, `--schema`. */
export interface DbOptions {
  db?: string | undefined;
  authToken?: string | undefined;
  table?: string | undefined;
  schema?: string | undefined;
  /** How long the first contact (`select 1`) may take before the database counts as unreachable, ms. */
  connectTimeout?: number | undefined;
}

/** Default of `--connect-timeout`, ms. */
export const CONNECT_TIMEOUT_MS = 10_000;

/** An opened database: the storage, a liveness probe and a way to close the client. */
export interface OpenedDb {
  kind: "libsql" | "postgres";
  storage: OutboxStorage<unknown, unknown>;
  /** Where it points, with any password removed (for messages). */
  display: string;
  ping(): Promise<void>;
  /**
   * Closes the client; requests still waiting for an answer (a server that never answers) are aborted. `force`:
   * do not wait for queries to finish (after a failed first contact).
   */
  close(options?: { force?: boolean }): Promise<void>;
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
    // postgres.js's own connect timeout (whole seconds) follows --connect-timeout, so a connection attempt to a silent
    // server ends with the command instead of holding the process
    const connectTimeoutS = Math.max(1, Math.ceil((options.connectTimeout ?? CONNECT_TIMEOUT_MS) / 1_000));
    const sql = postgres(url, { max: 4, onnotice: () => {}, connect_timeout: connectTimeoutS, idle_timeout: 5 }) as Parameters<
      typeof postgresStorage
    >[0] & { end(o?: { timeout?: number }): Promise<void>; unsafe(q: string): Promise<unknown> };
    const storage = postgresStorage(sql, { table: options.table, schema: options.schema });
    return {
      kind: "postgres",
      storage,
      display,
      ping: async () => void (await sql.unsafe("select 1")),
      close: (o) => sql.end({ timeout: o?.force ? 0 : 5 }),
    };
  }
  if (["file:", "libsql:", "http:", "https:", "ws:", "wss:"].includes(scheme) || url === ":memory:") {
    if (options.schema !== undefined) throw new CliError(EXIT.USAGE, "--schema applies to postgres:// databases only");
    const { createClient } = await load<{ createClient: (o: object) => Parameters<typeof libsqlStorage>[0] & { close(): void } }>(
      "@libsql/client",
    );
    const authToken = options.authToken ?? process.env["LIBSQL_AUTH_TOKEN"] ?? process.env["TURSO_AUTH_TOKEN"];
    // Over HTTP, every request also listens to `closed`, so close() ends one a silent server never answers (the
    // client's own close() leaves it pending, and the process would wait for it).
    const closed = new AbortController();
    const fetchUntilClosed = (request: Request): Promise<Response> =>
      // AbortSignal.any: Node ≥ 20.3, Bun, Deno; without it a silent server holds the process until undici gives up
      typeof AbortSignal.any === "function" ? fetch(request, { signal: AbortSignal.any([request.signal, closed.signal]) }) : fetch(request);
    let client: Awaited<ReturnType<typeof createClient>>;
    try {
      // A local file that cannot be opened (missing directory, no permission) fails here, synchronously.
      client = createClient({ url, fetch: fetchUntilClosed, ...(authToken ? { authToken } : {}) });
    } catch (e) {
      throw unreachable(e, display);
    }
    const storage = libsqlStorage(client, { table: options.table });
    return {
      kind: "libsql",
      storage,
      display,
      ping: async () => void (await client.execute({ sql: "select 1", args: [] })),
      close: async () => {
        closed.abort(new Error("the edge-outbox command is closing its database client"));
        client.close();
      },
    };
  }
  throw new CliError(EXIT.USAGE, `unsupported --db ${display}: use file:…, libsql://…, http(s)://… or postgres://…`);
}

/**
 * The first contact: `select 1`, within `timeoutMs`. Any failure, or no answer in time, is the database being
 * unreachable (exit 3).
 */
export async function contact(db: OpenedDb, timeoutMs: number = CONNECT_TIMEOUT_MS): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms (--connect-timeout)`)), timeoutMs);
  });
  const ping = db.ping();
  ping.catch(() => {}); // a late failure after the timeout must not become unhandled
  try {
    await Promise.race([ping, timeout]);
  } catch (e) {
    throw unreachable(e, db.display);
  } finally {
    clearTimeout(timer);
  }
}
