// Conformance fixtures for the libSQL storage (:memory: and a temporary file); shared by the vitest, Bun and Deno
// entry files, so no test-runner imports here.
import { type Client, createClient } from "@libsql/client";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  type LibsqlExecutor,
  type LibsqlStatement,
  type LibsqlStorage,
  libsqlStorage,
  type LibsqlStorageOptions,
} from "../adapters/libsql/mod.ts";
import type { ConformanceFixture, FixtureTransaction } from "../src/testing/mod.ts";

export type LibsqlFixture = ConformanceFixture<LibsqlExecutor, LibsqlStatement> & {
  storage: LibsqlStorage;
  client: Client;
  /** Opens another client on the same database (a second connection; the same client for :memory:). */
  connect(): Client;
};

async function begin(storage: LibsqlStorage): Promise<FixtureTransaction<LibsqlExecutor>> {
  const tx = await storage.begin();
  return { tx, commit: () => tx.commit(), rollback: () => tx.rollback() };
}

/** A fresh, migrated storage on a `:memory:` database; `another()` is a second storage on the same client. */
export async function libsqlMemoryFixture(options: LibsqlStorageOptions = {}): Promise<LibsqlFixture> {
  const client = createClient({ url: ":memory:" });
  const storage = libsqlStorage(client, options);
  await storage.migrate();
  return {
    storage,
    client,
    connect: () => client,
    begin: () => begin(storage),
    another: () => Promise.resolve(libsqlStorage(client, options)),
    runBatch: async (statements) => {
      await client.batch(statements, "write");
    },
    close: () => Promise.resolve(client.close()),
  };
}

/** A fresh, migrated storage on a temporary database file; `another()` opens a second client on the same file. */
export async function libsqlFileFixture(options: LibsqlStorageOptions = {}): Promise<LibsqlFixture> {
  const dir = mkdtempSync(join(tmpdir(), "edge-outbox-libsql-"));
  const url = `file:${join(dir, "outbox.db")}`;
  const clients: Client[] = [];
  const connect = (): Client => {
    const c = createClient({ url });
    clients.push(c);
    return c;
  };
  const client = connect();
  const storage = libsqlStorage(client, options);
  await storage.migrate();
  return {
    storage,
    client,
    connect,
    begin: () => begin(storage),
    another: () => Promise.resolve(libsqlStorage(connect(), options)),
    runBatch: async (statements) => {
      await client.batch(statements, "write");
    },
    close: () => {
      for (const c of clients) c.close();
      rmSync(dir, { recursive: true, force: true });
      return Promise.resolve();
    },
  };
}
