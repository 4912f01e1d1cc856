/**
 * examples/: every example type-checks against the package as published (its declarations built into dist/ and
 * resolved through package.json "exports"; the Deno one with `deno check` through the JSR export map), the
 * Workers example runs in workerd, and the Bun and Deno examples run as real processes against a real database.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { Miniflare } from "miniflare";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DrainResponse, HealthResponse } from "../adapters/hono/mod.ts";
import { bundleWorker } from "./fixtures/workers/bundle.ts";
import {
  CRON_SECRET,
  type HookServer,
  READ_SECRET,
  type RelayBackend,
  startHookServer,
  startRelayBackend,
  WEBHOOK_SECRET,
} from "./fixtures/workers/relay-backend.ts";
import { buildDeclarations, denoConfig, publishedAliases, ROOT, typecheckExample, WORK } from "./edge-examples-typecheck.ts";
import { type PgFixture, postgresFixture, PG_URL } from "./postgres-fixtures.ts";
import { readFileSync } from "node:fs";
import { d1Schema } from "../adapters/d1/mod.ts";
import { signQstashJwt } from "./fixtures/qstash-emulator.ts";
import { type D1Binding } from "../adapters/d1/mod.ts";

const run = promisify(execFile);
const BIN = join(ROOT, "node_modules/.bin");

describe("examples type-check against the published package", () => {
  beforeAll(async () => {
    await buildDeclarations();
  }, 240_000);

  for (const dir of ["cloudflare-workers-d1", "cloudflare-workers-turso", "vercel-cron-postgres", "netlify-scheduled", "bun-server"]) {
    it(`${dir} (tsc${dir === "bun-server" ? ", bun-types" : ""})`, async () => {
      const { ok, output } = await typecheckExample(dir);
      expect(output).toBe("");
      expect(ok).toBe(true);
    }, 120_000);
  }

  it("deno-deploy (deno check)", async () => {
    const config = denoConfig("deno-deploy");
    const { stderr } = await run(join(BIN, "deno"), ["check", "--quiet", "--config", config, join(ROOT, "examples/deno-deploy/main.ts")], {
      env: { ...process.env, DENO_NO_UPDATE_CHECK: "1", NO_COLOR: "1" },
    }).catch((e: { stdout: string; stderr: string }) => {
      throw new Error(`deno check failed:\n${e.stdout}${e.stderr}`);
    });
    expect(stderr).toBe("");
  }, 120_000);

  it("controls: a mistake in an example and an import of an unpublished path both fail the check", async () => {
    const dir = join(ROOT, "examples", ".control");
    mkdirSync(dir, { recursive: true });
    try {
      writeFileSync(join(dir, "tsconfig.json"), JSON.stringify({ extends: "../tsconfig.base.json", compilerOptions: { lib: ["ES2022", "DOM"], types: [] }, include: ["main.ts"] }));
      writeFileSync(join(dir, "main.ts"), `import { scheduledDrain } from "edge-outbox";\nimport { libsqlSql } from "edge-outbox/adapters/libsql/sql";\nawait scheduledDrain({ drain: async () => ({}) as never }, { budgetMs: "soon" });\nexport { libsqlSql };\n`);
      const { ok, output } = await typecheckExample(".control");
      expect(ok).toBe(false);
      expect(output).toContain("Cannot find module 'edge-outbox/adapters/libsql/sql'");
      expect(output).toContain("Type 'string' is not assignable to type 'number'");
      expect(output).not.toContain("Cannot find module 'edge-outbox'");
    } finally {
      const { rmSync } = await import("node:fs");
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);
});

describe("examples/cloudflare-workers-d1 in workerd", () => {
  const PUBLIC = "https://outbox-d1.example.workers.dev/outbox";
  const KEYS = { current: "sig_current_d1_example", next: "sig_next_d1_example" };
  let hook: HookServer;
  let mf: Miniflare;
  let db: D1Binding;

  beforeAll(async () => {
    hook = await startHookServer();
    mf = new Miniflare({
      modules: true,
      script: await bundleWorker(join(ROOT, "examples/cloudflare-workers-d1/src/worker.ts"), { alias: publishedAliases() }),
      compatibilityDate: "2025-06-01",
      d1Databases: ["DB"],
      bindings: {
        WEBHOOK_URL: hook.hookUrl,
        WEBHOOK_SECRET,
        PUBLIC_URL: PUBLIC,
        QSTASH_CURRENT_SIGNING_KEY: KEYS.current,
        QSTASH_NEXT_SIGNING_KEY: KEYS.next,
        READ_SECRET,
      },
    });
    db = (await mf.getD1Database("DB")) as unknown as D1Binding;
    // What `wrangler d1 migrations apply` runs: migrations/0001_outbox.sql (= d1Schema()) and 0002_orders.sql.
    await db.batch(d1Schema().map((sql) => db.prepare(sql)));
    await db.prepare(readFileSync(join(ROOT, "examples/cloudflare-workers-d1/migrations/0002_orders.sql"), "utf8").trim()).all();
  }, 60_000);

  afterAll(async () => {
    await mf?.dispose();
    await hook?.close();
  });

  it("migrations/0001_outbox.sql is exactly d1Schema()", () => {
    const file = readFileSync(join(ROOT, "examples/cloudflare-workers-d1/migrations/0001_outbox.sql"), "utf8");
    expect(file.replace(/^--.*\n/, "")).toBe(`${d1Schema().join(";\n")};\n`);
  });

  it("POST /orders writes order and message in one batch; the cron trigger delivers; a QStash-signed drain and /outbox/health answer", async () => {
    for (const [id, total] of [["o1", 5], ["o2", 9]] as const) {
      const res = await mf.dispatchFetch("http://worker.example/orders", { method: "POST", body: JSON.stringify({ id, total }) });
      expect(res.status).toBe(201);
      await res.arrayBuffer();
    }
    const count = async (table: string): Promise<number> =>
      Number((await db.prepare(`SELECT count(*) AS n FROM ${table} WHERE ${table === "outbox" ? "status = 'pending'" : "1"}`).all()).results?.[0]?.["n"]);
    expect(await count("orders")).toBe(2);
    expect(await count("outbox")).toBe(2);

    const result = await (await mf.getWorker()).scheduled({ cron: "* * * * *", scheduledTime: new Date() });
    expect(result.outcome).toBe("ok");
    expect(hook.forged).toBe(0);
    expect(hook.deliveries.map((d) => d.payload)).toEqual(expect.arrayContaining([{ id: "o1", total: 5 }, { id: "o2", total: 9 }]));
    expect(hook.deliveries).toHaveLength(2);
    expect(await count("outbox")).toBe(0);

    // A QStash schedule's call: signed for the public URL; a forged one is refused.
    const res3 = await mf.dispatchFetch("http://worker.example/orders", { method: "POST", body: JSON.stringify({ id: "o3", total: 1 }) });
    await res3.arrayBuffer();
    const forged = signQstashJwt("sig_someone_else", { url: `${PUBLIC}/drain`, body: "" });
    const refused = await mf.dispatchFetch("http://worker.example/outbox/drain", { method: "POST", headers: { "upstash-signature": forged } });
    expect(refused.status).toBe(401);
    await refused.arrayBuffer();
    const signature = signQstashJwt(KEYS.current, { url: `${PUBLIC}/drain`, body: "" });
    const drain = await mf.dispatchFetch("http://worker.example/outbox/drain", { method: "POST", headers: { "upstash-signature": signature } });
    expect(drain.status).toBe(200);
    expect(((await drain.json()) as DrainResponse)).toMatchObject({ delivered: 1, more: false });
    expect(hook.deliveries).toHaveLength(3);

    const health = await mf.dispatchFetch("http://worker.example/outbox/health", { headers: { authorization: `Bearer ${READ_SECRET}` } });
    expect(health.status).toBe(200);
    expect(((await health.json()) as HealthResponse).stats.pending).toBe(0);
  });
});

describe("examples/cloudflare-workers-turso in workerd", () => {
  let backend: RelayBackend;
  let mf: Miniflare;

  beforeAll(async () => {
    backend = await startRelayBackend();
    await backend.client.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, total REAL NOT NULL)");
    mf = new Miniflare({
      modules: true,
      script: await bundleWorker(join(ROOT, "examples/cloudflare-workers-turso/src/worker.ts"), { alias: publishedAliases() }),
      compatibilityDate: "2025-06-01",
      bindings: {
        TURSO_DATABASE_URL: backend.sqld.url,
        WEBHOOK_URL: backend.env.HOOK_URL,
        WEBHOOK_SECRET,
        DRAIN_SECRET: CRON_SECRET,
        READ_SECRET,
      },
    });
    await mf.ready;
  }, 60_000);

  afterAll(async () => {
    await mf?.dispose();
    await backend?.close();
  });

  it("POST /orders writes order and message atomically; the cron trigger delivers them; /outbox routes answer", async () => {
    for (const [id, total] of [["o1", 5], ["o2", 9], ["o3", 12]] as const) {
      const res = await mf.dispatchFetch("http://worker.example/orders", { method: "POST", body: JSON.stringify({ id, total }) });
      expect(res.status).toBe(201);
      await res.arrayBuffer();
    }
    expect((await backend.client.execute("SELECT count(*) AS n FROM orders")).rows[0]!.n).toBe(3);
    expect(await backend.pending()).toBe(3);

    const worker = await mf.getWorker();
    const result = await worker.scheduled({ cron: "* * * * *", scheduledTime: new Date() });
    expect(result.outcome).toBe("ok");
    expect(backend.forged).toBe(0);
    expect(backend.deliveries.map((d) => d.payload).sort((a, b) => String((a as { id: string }).id).localeCompare((b as { id: string }).id)))
      .toEqual([{ id: "o1", total: 5 }, { id: "o2", total: 9 }, { id: "o3", total: 12 }]);
    expect(await backend.pending()).toBe(0);

    const health = await mf.dispatchFetch("http://worker.example/outbox/health", { headers: { authorization: `Bearer ${READ_SECRET}` } });
    expect(health.status).toBe(200);
    expect(((await health.json()) as HealthResponse).stats.pending).toBe(0);
    const anon = await mf.dispatchFetch("http://worker.example/outbox/drain", { method: "POST" });
    expect(anon.status).toBe(401);
    await anon.arrayBuffer();
    const drain = await mf.dispatchFetch("http://worker.example/outbox/drain", { method: "POST", headers: { authorization: `Bearer ${CRON_SECRET}` } });
    expect(((await drain.json()) as DrainResponse)).toMatchObject({ claimed: 0, more: false });
  });
});

/** Spawns a server process and resolves its URL once it printed `listening on <url>`. */
async function startProcess(command: string, args: string[], env: Record<string, string>): Promise<{ child: ChildProcess; url: string; output: () => string; exited: Promise<number | null> }> {
  const child = spawn(command, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  const deadline = Date.now() + 60_000;
  for (;;) {
    const m = /listening on (http:\/\/[^\s/]+)/.exec(out);
    if (m) return { child, url: m[1]!.replace("0.0.0.0", "127.0.0.1"), output: () => out, exited };
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`${command} did not start:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe("examples/bun-server under Bun, on the local PostgreSQL", () => {
  let f: PgFixture;
  let hook: HookServer;

  beforeAll(async () => {
    f = await postgresFixture();
    hook = await startHookServer();
  }, 60_000);

  afterAll(async () => {
    await hook?.close();
    await f?.close();
  });

  it("an order is delivered by relay.run without any drain call; SIGTERM stops it cleanly (exit 0)", async () => {
    // Bun resolves `edge-outbox` through tsconfig paths: to the source modules package.json "exports" are built from.
    const tsconfig = join(WORK, "tsconfig.bun-run.json");
    mkdirSync(WORK, { recursive: true });
    writeFileSync(tsconfig, JSON.stringify({ compilerOptions: { paths: Object.fromEntries(Object.entries(publishedAliases()).map(([k, v]) => [k, [v]])) } }));
    const server = await startProcess(join(BIN, "bun"), [`--tsconfig-override=${tsconfig}`, "examples/bun-server/server.ts"], {
      DATABASE_URL: PG_URL,
      OUTBOX_SCHEMA: f.schema,
      WEBHOOK_URL: hook.hookUrl,
      WEBHOOK_SECRET,
      READ_SECRET,
      PORT: "0",
    });
    try {
      const res = await fetch(`${server.url}/orders`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ id: "b1", total: 7 }) });
      expect(res.status).toBe(201);
      await hook.waitFor(1);
      expect(hook.deliveries[0]!.payload).toEqual({ id: "b1", total: 7 });
      expect(hook.forged).toBe(0);
      // The delivery arrives before the relay settles it: wait for the settle, seen through the health route.
      let pending = -1;
      for (const deadline = Date.now() + 10_000; pending !== 0 && Date.now() < deadline; await new Promise((r) => setTimeout(r, 50))) {
        const health = await fetch(`${server.url}/outbox/health`, { headers: { authorization: `Bearer ${READ_SECRET}` } });
        expect(health.status).toBe(200);
        pending = ((await health.json()) as HealthResponse).stats.pending;
      }
      expect(pending).toBe(0);
      expect(hook.deliveries).toHaveLength(1);
      expect((await f.sql.unsafe(`SELECT total::int AS t FROM "${f.schema}".orders WHERE id = 'b1'`))[0]!.t).toBe(7);
    } finally {
      server.child.kill("SIGTERM");
    }
    expect(await server.exited).toBe(0);
    expect(server.output()).toContain("stopped");
  }, 90_000);
});

describe("examples/deno-deploy under Deno, on a real sqld", () => {
  let backend: RelayBackend;

  beforeAll(async () => {
    backend = await startRelayBackend();
    await backend.client.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, total REAL NOT NULL)");
  }, 60_000);

  afterAll(async () => {
    await backend?.close();
  });

  it("serves POST /orders (atomic batch) and the relay app; Deno.cron is registered", async () => {
    const config = denoConfig("deno-deploy");
    const server = await startProcess(join(BIN, "deno"), ["run", "--quiet", "--no-check", "--config", config, "--allow-net", "--allow-env", "--allow-read", "--allow-sys", "examples/deno-deploy/main.ts"], {
      TURSO_DATABASE_URL: backend.sqld.url,
      WEBHOOK_URL: backend.env.HOOK_URL,
      WEBHOOK_SECRET,
      DRAIN_SECRET: CRON_SECRET,
      READ_SECRET,
      PORT: "0",
      HOST: "127.0.0.1",
      DENO_NO_UPDATE_CHECK: "1",
    });
    try {
      const res = await fetch(`${server.url}/orders`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ id: "d1", total: 3 }) });
      expect(res.status).toBe(201);
      expect(await backend.pending()).toBe(1);
      const drain = await fetch(`${server.url}/outbox/drain`, { method: "POST", headers: { authorization: `Bearer ${CRON_SECRET}` } });
      expect(drain.status).toBe(200);
      expect((await drain.json()) as DrainResponse).toMatchObject({ claimed: 1, delivered: 1, more: false });
      expect(backend.deliveries.map((d) => d.payload)).toEqual([{ id: "d1", total: 3 }]);
      expect(backend.forged).toBe(0);
    } finally {
      server.child.kill("SIGTERM");
      await server.exited;
    }
  }, 90_000);
});

