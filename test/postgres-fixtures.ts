// Fixtures for the Postgres storage tests against the machine's PostgreSQL server (OUTBOX_PG_URL). No test-runner
// imports here. Every fixture works in its own fresh schema (random suffix, dropped on close) and tags its
// connections with its own application_name, so test files running in parallel never see each other's rows or
// backends.
import postgres from "postgres";
import type { PostgresExecutor } from "../adapters/postgres/mod.ts";
import { type PostgresStorage, postgresStorage, type PostgresStorageOptions } from "../adapters/postgres/mod.ts";
import type { ConformanceFixture } from "../src/testing/mod.ts";

/** The server the tests use. */
export const PG_URL: string = process.env["OUTBOX_PG_URL"] ?? "postgres://postgres@127.0.0.1:5432/test";

/** How to start the local server when it is down. */
export const START_HINT = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";

export type Sql = postgres.Sql;

/** A random lowercase suffix for schema and application names. */
export function randomSuffix(): string {
  return crypto.randomUUID().replaceAll("-", "").slice(0, 10);
}

/** A postgres.js client on the test server, tagged with `appName`, quiet (no notices), few connections. */
export function connect(appName: string, options: postgres.Options<Record<string, postgres.PostgresType>> = {}): Sql {
  return postgres(PG_URL, {
    max: 4,
    onnotice: () => {},
    idle_timeout: 30,
    connect_timeout: 5,
    ...options,
    connection: { application_name: appName, ...(options.connection ?? {}) },
  }) as unknown as Sql;
}

/** Rethrows a failed first contact with a message saying how to start the server (tests fail, never skip). */
export function unreachable(e: unknown): Error {
  const detail = e instanceof Error ? e.message : String(e);
  return new Error(
    `PostgreSQL is not reachable at ${PG_URL} (${detail}). Start it with: ${START_HINT}` +
      ` (or point OUTBOX_PG_URL at a server)`,
    { cause: e },
  );
}

export type PgFixture = ConformanceFixture<PostgresExecutor, never> & {
  storage: PostgresStorage;
  /** The storage's client. */
  sql: Sql;
  /** The fixture's schema (dropped on close). */
  schema: string;
  /** The application_name of every connection the fixture opens. */
  appName: string;
  /** The storage options (schema included). */
  options: PostgresStorageOptions & { schema: string };
  /** Opens another client on the same server, closed with the fixture. */
  connect(options?: postgres.Options<Record<string, postgres.PostgresType>>): Sql;
  /** Another storage on the same schema through a new client. */
  anotherWith(options?: postgres.Options<Record<string, postgres.PostgresType>>): Promise<PostgresStorage>;
};

import { reservedTransaction } from "./fixtures/fixture-transactions.ts";

/** Opens a transaction on a reserved connection (see fixtures/fixture-transactions.ts). */
export { reservedTransaction };

/** A fresh, migrated, empty storage in its own schema. */
export async function postgresFixture(
  storageOptions: Omit<PostgresStorageOptions, "schema"> = {},
  clientOptions: postgres.Options<Record<string, postgres.PostgresType>> = {},
): Promise<PgFixture> {
  const suffix = randomSuffix();
  const schema = `eo_test_${suffix}`;
  const appName = `eo-test-${suffix}`;
  const clients: Sql[] = [];
  const open = (options: postgres.Options<Record<string, postgres.PostgresType>> = {}): Sql => {
    const c = connect(appName, { ...clientOptions, ...options });
    clients.push(c);
    return c;
  };
  const closeAll = async (): Promise<void> => {
    // A client whose backends were terminated mid-query can wait for its full end timeout (postgres.js 3.4): keep it short.
    await Promise.all(clients.map((c) => c.end({ timeout: 1 }).catch(() => {})));
  };
  const sql = open();
  const options = { ...storageOptions, schema };
  const storage = postgresStorage(sql, options);
  try {
    await sql.unsafe("SELECT 1");
  } catch (e) {
    await closeAll();
    throw unreachable(e);
  }
  await storage.migrate();
  return {
    storage,
    sql,
    schema,
    appName,
    options,
    connect: open,
    begin: () => reservedTransaction(sql),
    another: () => Promise.resolve(postgresStorage(open({ max: 2 }), options)),
    anotherWith: (o = {}) => Promise.resolve(postgresStorage(open({ max: 2, ...o }), options)),
    close: async () => {
      try {
        await sql.unsafe(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      } finally {
        await closeAll();
      }
    },
  };
}
