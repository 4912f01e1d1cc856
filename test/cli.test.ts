// The `edge-outbox` command, run as a real process (the built bin under Node; the TypeScript entry under Bun and
// Deno) against a real libSQL file and the machine's PostgreSQL.
import { execFile, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type AddressInfo, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { createClient } from "@libsql/client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createOutbox } from "../mod.ts";
import { libsqlStorage } from "../adapters/libsql/mod.ts";
import { postgresStorage } from "../adapters/postgres/mod.ts";
import { connect, PG_URL, randomSuffix, unreachable } from "./postgres-fixtures.ts";

const run = promisify(execFile);
const ROOT = resolve(import.meta.dirname, "..");
const BIN_DIR = resolve(ROOT, "node_modules/.bin");
const TRANSPORT = resolve(ROOT, "test/fixtures/cli-transport.mjs");
let dir = "";
let bin = "";
let built = "";

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

async function cli(args: string[], options: { env?: Record<string, string>; runtime?: "node" | "bun" | "deno" } = {}): Promise<Result> {
  const runtime = options.runtime ?? "node";
  const [cmd, pre] = runtime === "node"
    ? [process.execPath, [bin]]
    : runtime === "bun"
    ? [join(BIN_DIR, "bun"), [join(ROOT, "cli/main.ts")]]
    : [join(BIN_DIR, "deno"), ["run", "-A", "--quiet", join(ROOT, "cli/main.ts")]];
  try {
    const { stdout, stderr } = await run(cmd, [...pre, ...args], {
      cwd: dir,
      env: { ...process.env, DENO_NO_UPDATE_CHECK: "1", NO_COLOR: "1", ...options.env },
      maxBuffer: 64 * 1024 * 1024,
      timeout: 120_000,
    });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string };
    if (typeof err.code !== "number") throw e;
    return { code: err.code, stdout: err.stdout ?? "", stderr: err.stderr ?? "" };
  }
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "edge-outbox-cli-"));
  // The real bin, built with the package's own CLI build config (inside the repo, so it resolves node_modules).
  const out = join(ROOT, "test-results", `cli-dist-${process.pid}`);
  await run(join(BIN_DIR, "tsc"), ["-p", join(ROOT, "tsconfig.cli.json"), "--outDir", out], { cwd: ROOT });
  bin = join(out, "cli/main.js");
  built = out;
}, 120_000);

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
  if (built) rmSync(built, { recursive: true, force: true });
});

async function seedLibsql(file: string, count: number, bad = 0): Promise<void> {
  const client = createClient({ url: `file:${file}` });
  const storage = libsqlStorage(client);
  await storage.migrate();
  const outbox = createOutbox({ storage });
  for (let i = 0; i < count; i += 5000) {
    const n = Math.min(5000, count - i);
    await client.batch(
      Array.from({ length: n }, (_, j) => outbox.statement("order.created", { n: i + j }, { key: (i + j) % 3 === 0 ? `k${(i + j) % 10}` : undefined })),
      "write",
    );
  }
  for (let i = 0; i < bad; i++) await client.batch([outbox.statement("bad", { n: i })], "write");
  client.close();
}

describe("edge-outbox CLI", () => {
  it("--help on every command exits 0 and describes it", async () => {
    const commands = [[], ["migrate"], ["stats"], ["drain"], ["dead"], ["dead", "list"], ["dead", "show"], ["dead", "replay"], ["dead", "purge"], ["serve"]];
    for (const c of commands) {
      const r = await cli([...c, "--help"]);
      expect(r.code, `${c.join(" ")} --help`).toBe(0);
      expect(r.stdout).toMatch(/^Usage: edge-outbox/);
      if (c.length && c[0] !== "dead" || c.length === 2) expect(r.stdout).toContain("--db <url>");
    }
    const drain = await cli(["drain", "--help"]);
    expect(drain.stdout).toContain("--until-empty");
    expect(drain.stdout).toContain("--transport <module>");
  }, 60_000);

  it("a missing table says to run migrate (exit 4); bad usage exits 2", async () => {
    const r = await cli(["stats", "--db", "file:empty.db"]);
    expect(r.code).toBe(4);
    expect(r.stderr).toContain("run `edge-outbox migrate`");
    expect((await cli(["stats", "--db", "file:empty.db", "--window", "abc"])).code).toBe(2);
    expect((await cli(["stats"], { env: { EDGE_OUTBOX_DB: "", DATABASE_URL: "" } })).stderr).toContain("no database");
    expect((await cli(["stats", "--db", "mysql://x"])).code).toBe(2);
    expect((await cli(["frobnicate"])).code).toBe(2);
    expect((await cli(["drain", "--db", "file:empty.db"])).stderr).toContain("choose one transport");
  }, 60_000);

  it("an unreachable database exits 3 with the reason (postgres and libSQL over HTTP)", async () => {
    const pg = await cli(["stats", "--db", "postgres://postgres:secret@127.0.0.1:1/test"]);
    expect(pg.code).toBe(3);
    expect(pg.stderr).toContain("cannot reach the database postgres://postgres:***@127.0.0.1:1/test");
    expect(pg.stderr).toContain("ECONNREFUSED");
    expect(pg.stderr).not.toContain("secret");
    const http = await cli(["stats", "--db", "http://127.0.0.1:1"]);
    expect(http.code).toBe(3);
    expect(http.stderr).toContain("cannot reach the database http://127.0.0.1:1");
  }, 60_000);

  it("a database that cannot be opened or does not answer exits 3, within --connect-timeout", async () => {
    // a local file in a directory that does not exist: @libsql/client throws while creating the client
    const file = await cli(["stats", "--db", `file:${join(dir, "no-such-dir", "x.db")}`]);
    expect(file.code, file.stderr).toBe(3);
    expect(file.stderr).toContain(`cannot reach the database file:${join(dir, "no-such-dir", "x.db")}`);
    expect(file.stderr).not.toMatch(/\n\s+at /); // a message, not a stack trace
    // a server that accepts connections and never answers (a hung proxy, a firewall that lets the SYN through)
    const sockets = new Set<Socket>();
    const silent = createServer((socket) => {
      sockets.add(socket);
      socket.on("error", () => {}); // the CLI resets the connection when it gives up
    });
    await new Promise<void>((ok) => silent.listen(0, "127.0.0.1", ok));
    const port = (silent.address() as AddressInfo).port;
    try {
      for (const db of [`http://127.0.0.1:${port}`, `postgres://u@127.0.0.1:${port}/test`]) {
        const started = Date.now();
        const r = await cli(["stats", "--db", db, "--connect-timeout", "500"]);
        expect(r.code, `${db}: ${r.stderr}`).toBe(3);
        expect(r.stderr).toContain(`cannot reach the database ${db}: no answer within 500 ms`);
        expect(Date.now() - started, `${db}: the process exits soon after the timeout`).toBeLessThan(8_000);
      }
    } finally {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((ok) => silent.close(() => ok()));
    }
    expect((await cli(["stats", "--db", "file:empty.db", "--connect-timeout", "0"])).code).toBe(2);
  }, 60_000);

  it("drains 100,000 messages from a libSQL file with a progress bar", async () => {
    await seedLibsql(join(dir, "big.db"), 100_000);
    const stats = JSON.parse((await cli(["stats", "--json", "--db", "file:big.db"])).stdout);
    expect(stats.pending).toBe(100_000);
    const r = await cli(["drain", "--db", "file:big.db", "--until-empty", "--batch-size", "500", "--concurrency", "8", "--transport", TRANSPORT]);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stderr.trim().split("\n");
    expect(lines.length).toBeGreaterThan(1);
    expect(lines.at(-1)).toMatch(/█{30} 100% 100,000\/100,000 {2}delivered 100,000 {2}retried 0 {2}dead 0 {2}[\d,]+ msg\/s/);
    console.log(`[cli] drain --until-empty of 100,000 messages:\n${r.stderr}${r.stdout}`);
    // released: rows claimed but not sent when a 1 s drain call reached its budget (given back, sent by the next call)
    expect(r.stdout).toMatch(/delivered 100000, retried 0, dead 0, released \d+; left pending 0 \(due 0\), dead letters 0/);
    const after = JSON.parse((await cli(["stats", "--json", "--db", "file:big.db"])).stdout);
    expect(after.pending).toBe(0);
    expect(after.window.delivered).toBe(100_000);
  }, 180_000);

  it("dead list, show, replay and purge", async () => {
    await seedLibsql(join(dir, "dead.db"), 5, 3);
    const drained = await cli(["drain", "--db", "file:dead.db", "--json", "--transport", TRANSPORT]);
    expect(drained.code, drained.stderr).toBe(0);
    expect(JSON.parse(drained.stdout)).toMatchObject({ delivered: 5, dead: 3, pending: 0 });
    const list = JSON.parse((await cli(["dead", "list", "--json", "--db", "file:dead.db"])).stdout);
    expect(list.items).toHaveLength(3);
    const id = list.items[0].id as string;
    const shown = await cli(["dead", "show", id, "--db", "file:dead.db"]);
    expect(JSON.parse(shown.stdout)).toMatchObject({ id, topic: "bad", lastError: "refused by the test transport", payload: { n: 0 } });
    const plain = await cli(["dead", "list", "--db", "file:dead.db"]);
    expect(plain.stdout.trim().split("\n")).toHaveLength(3);
    const unknown = await cli(["dead", "show", "0190e7a4-0000-7000-8000-000000000000", "--db", "file:dead.db"]);
    expect(unknown.code).toBe(5);
    const replay = await cli(["dead", "replay", id, "--db", "file:dead.db"]);
    expect(replay.code).toBe(0);
    expect(replay.stdout).toContain(`replayed ${id}`);
    const s = JSON.parse((await cli(["stats", "--json", "--db", "file:dead.db"])).stdout);
    expect(s).toMatchObject({ pending: 1, dead: 2 });
    expect((await cli(["dead", "replay", id, "--db", "file:dead.db"])).code).toBe(5);
    const purged = await cli(["dead", "purge", "--older-than", "0s", "--db", "file:dead.db"]);
    expect(purged.stdout).toContain("purged 2 dead letter(s)");
    expect((await cli(["dead", "purge", "--older-than", "soon", "--db", "file:dead.db"])).code).toBe(2);
  }, 60_000);

  it("migrate, stats and drain on PostgreSQL with --schema and --table", async () => {
    const schema = `cli_${randomSuffix()}`;
    const sql = connect(`cli-${schema}`);
    try {
      await sql.unsafe(`create schema ${schema}`).catch((e) => {
        throw unreachable(e);
      });
      const db = ["--db", PG_URL, "--schema", schema, "--table", "events"];
      expect((await cli(["stats", ...db])).code).toBe(4);
      const m = await cli(["migrate", ...db]);
      expect(m.code, m.stderr).toBe(0);
      const outbox = createOutbox({ storage: postgresStorage(sql, { schema, table: "events" }) });
      await sql.begin(async (tx) => {
        for (let i = 0; i < 10; i++) await outbox.enqueue(tx, i < 8 ? "order.created" : "bad", { i }, { key: `k${i % 2}` });
      });
      const s = await cli(["stats", "--json", ...db]);
      expect(s.code, s.stderr).toBe(0);
      expect(JSON.parse(s.stdout)).toMatchObject({ pending: 10, dead: 0 });
      const d = await cli(["drain", "--json", ...db, "--until-empty", "--transport", TRANSPORT]);
      expect(d.code, d.stderr).toBe(0);
      expect(JSON.parse(d.stdout)).toMatchObject({ delivered: 8, dead: 2, pending: 0 });
    } finally {
      await sql.unsafe(`drop schema if exists ${schema} cascade`).catch(() => {});
      await sql.end({ timeout: 5 });
    }
  }, 60_000);

  it("serve shows the dashboard page at GET / with a read secret, not without one", async () => {
    await seedLibsql(join(dir, "page.db"), 3);
    const start = (env: Record<string, string>) => {
      const child = spawn(process.execPath, [bin, "serve", "--db", "file:page.db", "--port", "0", "--transport", TRANSPORT], {
        cwd: dir,
        env: { ...process.env, EDGE_OUTBOX_DRAIN_SECRET: "", CRON_SECRET: "", EDGE_OUTBOX_READ_SECRET: "", ...env },
        stdio: ["ignore", "pipe", "pipe"],
      });
      const started = new Promise<{ url: string; line: string }>((resolveUrl, reject) => {
        let err = "";
        child.stderr.on("data", (b: Buffer) => {
          err += b.toString();
          const m = /relay app on (http:\/\/\S+).*/.exec(err);
          if (m) resolveUrl({ url: m[1]!, line: m[0] });
        });
        child.on("exit", (code) => reject(new Error(`serve exited ${code}: ${err}`)));
        setTimeout(() => reject(new Error(`serve did not start: ${err}`)), 20_000);
      });
      return { child, started };
    };
    const withRead = start({ EDGE_OUTBOX_READ_SECRET: "read-secret-0123456789abcdef" });
    try {
      const { url, line } = await withRead.started;
      expect(line).toContain(`dashboard at ${url}/`);
      const page = await fetch(`${url}/`);
      expect(page.status).toBe(200);
      expect(page.headers.get("content-type")).toMatch(/^text\/html/);
      const html = await page.text();
      expect(html).toContain("<title>edge-outbox</title>");
      const script = /src="\.\/(assets\/dashboard\.js)"/.exec(html);
      expect(script, html).not.toBeNull();
      expect((await fetch(`${url}/${script![1]}`)).status).toBe(200);
      const health = await fetch(`${url}/health`, { headers: { authorization: "Bearer read-secret-0123456789abcdef" } });
      expect(health.status).toBe(200);
    } finally {
      withRead.child.kill("SIGTERM");
    }
    const drainOnly = start({ EDGE_OUTBOX_DRAIN_SECRET: "s3cret-s3cret-s3cret-s3cret" });
    try {
      const { url, line } = await drainOnly.started;
      expect(line).not.toContain("dashboard");
      expect((await fetch(`${url}/`)).status).toBe(404);
    } finally {
      drainOnly.child.kill("SIGTERM");
    }
  }, 60_000);

  it("serve answers POST /drain with the drain secret, 401 without", async () => {
    await seedLibsql(join(dir, "serve.db"), 7);
    const child = spawn(process.execPath, [bin, "serve", "--db", "file:serve.db", "--port", "0", "--transport", TRANSPORT], {
      cwd: dir,
      env: { ...process.env, EDGE_OUTBOX_DRAIN_SECRET: "s3cret-s3cret-s3cret-s3cret" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    try {
      const url = await new Promise<string>((resolveUrl, reject) => {
        let err = "";
        child.stderr.on("data", (b: Buffer) => {
          err += b.toString();
          const m = /relay app on (http:\/\/\S+)/.exec(err);
          if (m) resolveUrl(m[1]!);
        });
        child.on("exit", (code) => reject(new Error(`serve exited ${code}: ${err}`)));
        setTimeout(() => reject(new Error(`serve did not start: ${err}`)), 20_000);
      });
      expect((await fetch(`${url}/drain`, { method: "POST" })).status).toBe(401);
      const res = await fetch(`${url}/drain`, { method: "POST", headers: { authorization: "Bearer s3cret-s3cret-s3cret-s3cret" } });
      expect(res.status).toBe(200);
      expect(await res.json()).toMatchObject({ delivered: 7 });
    } finally {
      child.kill("SIGTERM");
    }
    const missing = await cli(["serve", "--db", "file:serve.db", "--transport", TRANSPORT], { env: { EDGE_OUTBOX_DRAIN_SECRET: "", CRON_SECRET: "" } });
    expect(missing.code).toBe(2);
  }, 60_000);

  it("runs under Bun and Deno", async () => {
    for (const runtime of ["bun", "deno"] as const) {
      const file = `rt-${runtime}.db`;
      await seedLibsql(join(dir, file), 20);
      const help = await cli(["--help"], { runtime });
      expect(help.code, `${runtime}: ${help.stderr}`).toBe(0);
      expect(help.stdout).toContain("Usage: edge-outbox");
      const s = await cli(["stats", "--json", "--db", `file:${file}`], { runtime });
      expect(s.code, `${runtime}: ${s.stderr}`).toBe(0);
      expect(JSON.parse(s.stdout).pending).toBe(20);
      const d = await cli(["drain", "--json", "--until-empty", "--db", `file:${file}`, "--transport", TRANSPORT], { runtime });
      expect(d.code, `${runtime}: ${d.stderr}`).toBe(0);
      expect(JSON.parse(d.stdout)).toMatchObject({ delivered: 20, pending: 0 });
      expect((await cli(["stats", "--db", "file:missing.db"], { runtime })).code).toBe(4);
    }
  }, 120_000);
});
