// Inbox conformance fixtures (memory, Postgres, libSQL :memory: and file), shared by the inbox tests. Each fixture
// has a business table `effects(message_id)` WITHOUT a unique key: counting its rows per id proves exactly-once.
import { type Client, createClient } from "@libsql/client";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { LibsqlExecutor, LibsqlStatement } from "../adapters/libsql/mod.ts";
import { type LibsqlInbox, libsqlInbox } from "../adapters/libsql/mod.ts";
import { type MemoryInbox, memoryInbox, type MemoryInboxTransaction } from "../adapters/memory/mod.ts";
import type { PostgresExecutor } from "../adapters/postgres/mod.ts";
import { type PostgresInbox, postgresInbox } from "../adapters/postgres/mod.ts";
import type { InboxConformanceFixture } from "../src/testing/mod.ts";
import { connect, randomSuffix, reservedTransaction, type Sql, unreachable } from "./postgres-fixtures.ts";

export function memoryInboxFixture(): InboxConformanceFixture<MemoryInboxTransaction, never> & { storage: MemoryInbox } {
  let offset = 0;
  const storage = memoryInbox({ now: () => Date.now() + offset });
  const effects = new Map<string, number>();
  return {
    storage,
    begin: () => Promise.resolve(storage.begin()),
    effect: (tx, id) => Promise.resolve(tx.onCommit(() => effects.set(id, (effects.get(id) ?? 0) + 1))),
    effects: (id) => Promise.resolve(effects.get(id) ?? 0),
    age: (ms) => Promise.resolve(void (offset += ms)),
    another: () => Promise.resolve(memoryInbox({ shareWith: storage, now: () => Date.now() + offset })),
    close: () => Promise.resolve(),
  };
}

export type PgInboxFixture = InboxConformanceFixture<PostgresExecutor, never> & {
  storage: PostgresInbox;
  sql: Sql;
  schema: string;
  connect(max?: number): Sql;
  /** All effect rows (message ids, with repeats if any). */
  allEffects(): Promise<string[]>;
};

export async function postgresInboxFixture(options: { max?: number; connection?: Record<string, string> } = {}): Promise<PgInboxFixture> {
  const suffix = randomSuffix();
  const schema = `eo_inbox_${suffix}`;
  const appName = `eo-inbox-${suffix}`;
  const clients: Sql[] = [];
  const open = (max = options.max ?? 4): Sql => {
    const c = connect(appName, { max, ...(options.connection ? { connection: options.connection } : {}) });
    clients.push(c);
    return c;
  };
  const sql = open();
  try {
    await sql.unsafe("SELECT 1");
  } catch (e) {
    await Promise.all(clients.map((c) => c.end({ timeout: 1 })));
    throw unreachable(e);
  }
  const storage = postgresInbox(sql, { schema });
  await storage.migrate();
  await sql.unsafe(`CREATE TABLE "${schema}".effects (message_id text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())`);
  return {
    storage,
    sql,
    schema,
    connect: open,
    begin: () => reservedTransaction(sql),
    effect: async (tx, id) => {
      await tx.unsafe(`INSERT INTO "${schema}".effects (message_id) VALUES ($1)`, [id]);
    },
    effects: async (id) => {
      const [r] = await sql.unsafe(`SELECT count(*)::int AS n FROM "${schema}".effects WHERE message_id = $1`, [id]);
      return Number(r!["n"]);
    },
    allEffects: async () => (await sql.unsafe(`SELECT message_id FROM "${schema}".effects`)).map((r) => String(r["message_id"])),
    age: async (ms) => {
      await sql.unsafe(`UPDATE "${schema}".inbox SET processed_at = processed_at - $1::float8 * interval '1 millisecond'`, [ms]);
      await sql.unsafe(`UPDATE "${schema}".inbox_keys SET updated_at = updated_at - $1::float8 * interval '1 millisecond'`, [ms]);
    },
    another: () => Promise.resolve(postgresInbox(open(2), { schema })),
    close: async () => {
      try {
        await sql.unsafe(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      } finally {
        await Promise.all(clients.map((c) => c.end({ timeout: 1 }).catch(() => {})));
      }
    },
  };
}

export type LibsqlInboxFixture = InboxConformanceFixture<LibsqlExecutor, LibsqlStatement> & {
  storage: LibsqlInbox;
  client: Client;
  url: string;
  allEffects(): Promise<string[]>;
};

export async function libsqlInboxFixture(kind: "memory" | "file"): Promise<LibsqlInboxFixture> {
  const dir = kind === "file" ? mkdtempSync(join(tmpdir(), "edge-outbox-inbox-")) : null;
  const url = dir ? `file:${join(dir, "inbox.db")}` : ":memory:";
  const clients: Client[] = [];
  const open = (): Client => {
    const c = createClient({ url });
    clients.push(c);
    return c;
  };
  const client = open();
  const storage = libsqlInbox(client);
  await storage.migrate();
  await client.execute("CREATE TABLE effects (message_id TEXT NOT NULL)");
  const effectStatement = (id: string): LibsqlStatement => ({ sql: "INSERT INTO effects (message_id) VALUES (?)", args: [id] });
  return {
    storage,
    client,
    url,
    begin: async () => {
      const tx = await client.transaction("write");
      return { tx, commit: () => tx.commit(), rollback: () => tx.rollback() };
    },
    effect: async (tx, id) => {
      await tx.execute(effectStatement(id));
    },
    effectStatement,
    failingStatement: () => ({ sql: "INSERT INTO no_such_table (x) VALUES (1)", args: [] }),
    effects: async (id) => Number((await client.execute({ sql: "SELECT count(*) AS n FROM effects WHERE message_id = ?", args: [id] })).rows[0]!["n"]),
    allEffects: async () => (await client.execute("SELECT message_id FROM effects")).rows.map((r) => String(r["message_id"])),
    age: async (ms) => {
      await client.batch([
        { sql: "UPDATE inbox SET processed_at = processed_at - ?", args: [ms] },
        { sql: "UPDATE inbox_keys SET updated_at = updated_at - ?", args: [ms] },
      ], "write");
    },
    another: () => Promise.resolve(libsqlInbox(kind === "file" ? open() : client)),
    close: () => {
      for (const c of clients) c.close();
      if (dir) rmSync(dir, { recursive: true, force: true });
      return Promise.resolve();
    },
  };
}

/** Bundles a child-process entry (dependencies included) into `dir`, so each spawn starts without compiling. */
export async function bundleChild(entry: string, dir: string): Promise<string> {
  const { build } = await import("esbuild");
  const outfile = join(dir, `${entry.replace(/\W+/g, "_")}.mjs`);
  await build({
    entryPoints: [join(import.meta.dirname, entry)],
    bundle: true,
    platform: "node",
    format: "esm",
    outfile,
    logLevel: "error",
    banner: { js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" },
  });
  return outfile;
}

/** A spawned child whose stdout lines can be awaited. */
export interface SpawnedChild {
  readonly proc: ChildProcess;
  readonly lines: string[];
  /** Resolves with the first line starting with `prefix` (already printed or to come). */
  waitFor(prefix: string, timeoutMs?: number): Promise<string>;
  /** Resolves when the process has exited. */
  readonly exited: Promise<void>;
  /** SIGKILL, then wait for the exit. */
  kill(): Promise<void>;
}

/** Spawns `node <bundle>` with extra environment. */
export function spawnChild(bundle: string, env: Record<string, string>): SpawnedChild {
  const proc = spawn(process.execPath, [bundle], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "inherit"] });
  const lines: string[] = [];
  const waiters: { prefix: string; resolve: (line: string) => void }[] = [];
  let buffer = "";
  proc.stdout!.on("data", (chunk: Buffer) => {
    buffer += chunk.toString();
    let nl: number;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      lines.push(line);
      for (const w of waiters.filter((w) => line.startsWith(w.prefix))) w.resolve(line);
    }
  });
  const exited = new Promise<void>((r) => {
    if (proc.exitCode !== null || proc.signalCode !== null) r();
    else proc.once("exit", () => r());
  });
  return {
    proc,
    lines,
    exited,
    waitFor: (prefix, timeoutMs = 30_000) => {
      const seen = lines.find((l) => l.startsWith(prefix));
      if (seen !== undefined) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`child did not print ${prefix} (got ${lines.slice(-5).join(" | ")})`)), timeoutMs);
        waiters.push({ prefix, resolve: (line) => (clearTimeout(timer), resolve(line)) });
      });
    },
    kill: async () => {
      proc.kill("SIGKILL");
      await exited;
    },
  };
}
