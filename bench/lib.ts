// Shared benchmark helpers: configuration, databases (fresh Postgres schemas, temp libSQL files, all cleaned up),
// message generation, timing, statistics, RSS sampling and the result rows. Benchmarks are not tests and not shipped.
import { type Client, createClient } from "@libsql/client";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { createOutbox, type Outbox, type OutboxMessage, type Transport, uuidv7 } from "../mod.ts";
import type { NewMessage } from "../src/message.ts";
import { type LibsqlStorage, libsqlStorage } from "../adapters/libsql/mod.ts";
import { type PostgresStorage, postgresStorage } from "../adapters/postgres/mod.ts";

/** The server the benchmarks use (the tests' default). */
export const PG_URL: string = process.env["OUTBOX_PG_URL"] ?? "postgres://postgres@127.0.0.1:5432/test";

export type Sql = postgres.Sql;

/** Run-wide settings, from the command line. */
export interface BenchConfig {
  readonly quick: boolean;
  /** Messages per drain row (100,000 full, 10,000 quick). */
  readonly drainMessages: number;
  /** Floor/edge-outbox run pairs per drain figure; the pair with the median ratio is reported (5 full, 3 quick). */
  readonly drainRepeats: number;
  /** Sequential transactions per enqueue-overhead row. */
  readonly enqueueTransactions: number;
  /** Commits per latency row. */
  readonly latencyCommits: number;
  /** Messages drained while RSS is sampled. */
  readonly rssMessages: number;
  /** Pending rows of the large scaling table. */
  readonly scaleRows: number;
  /** Repetitions of claim+release per scaling figure (median reported). */
  readonly claimRepeats: number;
  /** Only run sections whose name is listed (all when empty). */
  readonly only: readonly string[];
}

export function parseArgs(argv: readonly string[]): BenchConfig {
  const quick = argv.includes("--quick");
  const onlyArg = argv.find((a) => a.startsWith("--only="));
  const only = onlyArg ? onlyArg.slice("--only=".length).split(",").filter(Boolean) : [];
  return {
    quick,
    drainMessages: quick ? 10_000 : 100_000,
    drainRepeats: Number(process.env["BENCH_REPEATS"] ?? (quick ? 3 : 5)),
    enqueueTransactions: quick ? 500 : 10_000,
    latencyCommits: quick ? 100 : 400,
    rssMessages: quick ? 100_000 : 1_000_000,
    scaleRows: 1_000_000,
    claimRepeats: quick ? 30 : 100,
    only,
  };
}

// ---- results ------------------------------------------------------------------------------------------------------

export interface Target {
  /** "min": ratio must be at least `value`; "max": at most. */
  readonly kind: "min" | "max";
  readonly value: number;
}

/** One line of the table. */
export interface ResultRow {
  readonly section: string;
  readonly name: string;
  readonly value: number;
  readonly unit: string;
  /** Free text next to the value (e.g. "p99 812 ms"). */
  readonly detail?: string;
  readonly baseline?: { readonly name: string; readonly value: number };
  /** value / baseline (or baseline / value for "lower is better" rows: see `ratioOf`). */
  readonly ratio?: number;
  readonly target?: Target;
  readonly met?: boolean;
}

export class Results {
  readonly rows: ResultRow[] = [];
  readonly notes: string[] = [];

  add(row: ResultRow): ResultRow {
    this.rows.push(row);
    const r = formatRow(row);
    console.log(`  ${r.name.padEnd(58)} ${r.value.padStart(16)}  ${r.ratio.padStart(7)} ${r.status}${r.baseline ? `  (vs ${r.baseline})` : ""}`);
    return row;
  }

  /** Adds a row compared with a baseline: ratio = value / baseline. */
  compare(
    section: string,
    name: string,
    value: number,
    unit: string,
    baseline: { name: string; value: number },
    target?: Target,
    detail?: string,
  ): ResultRow {
    const ratio = baseline.value > 0 ? value / baseline.value : Number.NaN;
    const met = target ? (target.kind === "min" ? ratio >= target.value : ratio <= target.value) : undefined;
    return this.add({ section, name, value, unit, baseline, ratio, ...(target ? { target, met } : {}), ...(detail ? { detail } : {}) });
  }

  note(text: string): void {
    this.notes.push(text);
    console.log(`  note: ${text}`);
  }
}

export function fmtNum(n: number, unit: string): string {
  if (!Number.isFinite(n)) return "n/a";
  if (unit === "msg/s" || unit === "tx/s") return `${Math.round(n).toLocaleString("en-US")} ${unit}`;
  if (unit === "MB") return `${n.toFixed(1)} MB`;
  if (unit === "ms") return n >= 100 ? `${Math.round(n).toLocaleString("en-US")} ms` : `${n.toFixed(n >= 10 ? 1 : 2)} ms`;
  return `${n} ${unit}`;
}

function formatRow(r: ResultRow): { name: string; value: string; ratio: string; status: string; baseline: string } {
  const target = r.target ? `${r.target.kind === "min" ? "≥" : "≤"} ${r.target.value}×` : "";
  return {
    name: r.name,
    value: fmtNum(r.value, r.unit),
    ratio: r.ratio === undefined ? "" : `${r.ratio.toFixed(2)}×`,
    status: r.target ? `${r.met ? "met" : "MISSED"} (${target})` : "",
    baseline: r.baseline ? `${r.baseline.name} ${fmtNum(r.baseline.value, r.unit)}` : "",
  };
}

/** The final Markdown table (also pasted into bench/README.md). */
export function markdownTable(results: Results): string {
  const lines = [
    "| # | measurement | value | baseline (same run) | ratio | target |",
    "|---|---|---:|---|---:|---|",
  ];
  let section = "";
  for (const r of results.rows) {
    const f = formatRow(r);
    const sec = r.section === section ? "" : r.section;
    section = r.section;
    const value = r.detail ? `${f.value} (${r.detail})` : f.value;
    const target = r.target ? `${r.target.kind === "min" ? "≥" : "≤"} ${r.target.value}×: ${r.met ? "met" : "**missed**"}` : "";
    lines.push(`| ${sec} | ${f.name} | ${value} | ${f.baseline} | ${f.ratio} | ${target} |`);
  }
  return lines.join("\n");
}

// ---- timing and statistics ----------------------------------------------------------------------------------------

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1));
  return sorted[i]!;
}

/**
 * CPU ms used so far by every process named postgres on this machine (utime + stime of /proc/<pid>/stat, in 10 ms
 * clock ticks): read before and after a measurement, for the server's CPU per row. Linux only; the bench server is
 * local.
 */
export function postgresCpuMs(): number {
  let ticks = 0;
  for (const pid of readdirSync("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      if (!stat.includes("(postgres)")) continue;
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      ticks += Number(f[11]) + Number(f[12]);
    } catch {
      // the process ended meanwhile
    }
  }
  return ticks * 10;
}

export function median(values: readonly number[]): number {
  return percentile([...values].sort((a, b) => a - b), 0.5);
}

export function gc(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

/** Samples process RSS every `intervalMs` until stopped. */
export function rssSampler(intervalMs = 100): { stop(): { at: number; rss: number }[]; mark(): number } {
  const samples: { at: number; rss: number }[] = [];
  const t0 = performance.now();
  const take = (): void => {
    samples.push({ at: performance.now() - t0, rss: process.memoryUsage.rss() });
  };
  take();
  const timer = setInterval(take, intervalMs);
  return {
    mark: () => performance.now() - t0,
    stop: () => {
      clearInterval(timer);
      take();
      return samples;
    },
  };
}

export const MB = 1024 * 1024;

// ---- environment --------------------------------------------------------------------------------------------------

/** What the run ran on: the server's relevant settings and two quick speed probes (CPU, fsync), to read figures by. */
export async function environment(): Promise<Record<string, string | number>> {
  const settings = await adminSql().unsafe(`SELECT name, setting, unit FROM pg_settings
    WHERE name IN ('server_version', 'autovacuum', 'synchronous_commit', 'fsync', 'shared_buffers', 'max_wal_size')`);
  const env: Record<string, string | number> = {};
  for (const r of settings) env[`pg.${String(r["name"])}`] = `${String(r["setting"])}${r["unit"] ? ` ${String(r["unit"])}` : ""}`;
  // CPU: JSON.parse of 100,000 small payloads (about 50 ms on an idle 2-core reference VM).
  const bodies = Array.from({ length: 100_000 }, (_, i) => JSON.stringify(payloadOf(i)));
  let best = Number.POSITIVE_INFINITY;
  for (let r = 0; r < 3; r++) {
    const t0 = performance.now();
    let x = 0;
    for (const b of bodies) x += (JSON.parse(b) as { total: number }).total;
    best = Math.min(best, performance.now() - t0);
    if (x < 0) console.log(x);
  }
  env["cpuProbeMs"] = Math.round(best);
  // Disk: one small libSQL autocommit insert (an fsync'd commit) on the temp directory's file system.
  const o = await libsqlOutbox();
  try {
    await o.client.execute("CREATE TABLE probe (a INTEGER)");
    const t0 = performance.now();
    for (let i = 0; i < 100; i++) await o.client.execute("INSERT INTO probe VALUES (1)");
    env["commitProbeUs"] = Math.round(((performance.now() - t0) / 100) * 1000);
  } finally {
    await o.close();
  }
  return env;
}

// ---- messages -----------------------------------------------------------------------------------------------------

export const TOPIC = "order.created";

/** The payload every benchmark sends (edge-outbox and its peers alike). */
export function payloadOf(i: number): { orderId: string; customerId: string; total: number; currency: string } {
  return { orderId: `o-${i}`, customerId: `c-${i % 997}`, total: (i % 10_000) / 100, currency: "EUR" };
}

/** Keyless, immediately due messages as the core hands them to `storage.enqueue`. */
export function newMessages(start: number, count: number): NewMessage[] {
  const out: NewMessage[] = new Array(count);
  for (let i = 0; i < count; i++) {
    out[i] = { id: uuidv7(), topic: TOPIC, key: null, payload: JSON.stringify(payloadOf(start + i)), headers: "{}", delayMs: 0 };
  }
  return out;
}

/** Messages as {@link newMessages}, with message i keyed `c-<i % keys>` (keyless when keys is 0). */
export function keyedMessages(start: number, count: number, keys: number): NewMessage[] {
  const out = newMessages(start, count);
  if (keys === 0) return out;
  return out.map((m, i) => ({ ...m, key: `c-${(start + i) % keys}` }));
}

/**
 * A transport that accepts everything at once (transport cost ~0). `orderedBatches`: it says it keeps a call's
 * messages of one key in order (Transport.orderedBatches), so the relay may send runs of a key's rows in one call.
 */
export function noopTransport(onSend?: (messages: readonly OutboxMessage[]) => void, orderedBatches = false): Transport & { count: number } {
  const t = {
    name: orderedBatches ? "noop-ordered" : "noop",
    maxBatchSize: 1_000,
    orderedBatches,
    count: 0,
    send(messages: readonly OutboxMessage[]) {
      t.count += messages.length;
      onSend?.(messages);
      return Promise.resolve(messages.map(() => DELIVERED));
    },
  };
  return t;
}
const DELIVERED = { status: "delivered" } as const;

// ---- databases ----------------------------------------------------------------------------------------------------

const cleanups: Array<() => Promise<void> | void> = [];

/** Registers a cleanup run by `cleanupAll` (at the end, or on SIGINT/SIGTERM). */
export function onCleanup(fn: () => Promise<void> | void): () => Promise<void> {
  let done = false;
  const once = async (): Promise<void> => {
    if (done) return;
    done = true;
    const i = cleanups.indexOf(once);
    if (i >= 0) cleanups.splice(i, 1);
    await fn();
  };
  cleanups.push(once);
  return once;
}

export async function cleanupAll(): Promise<void> {
  while (cleanups.length > 0) {
    try {
      await cleanups.pop()!();
    } catch (e) {
      console.error("cleanup failed:", e);
    }
  }
}

export function randomSuffix(): string {
  return crypto.randomUUID().replaceAll("-", "").slice(0, 10);
}

/** The run's tag: every schema and temp directory of this run carries it. */
export const RUN_ID: string = randomSuffix();
let schemaCounter = 0;

/** A fresh schema name for this run (dropped by `dropSchema` or at the end). */
export function schemaName(label: string): string {
  adminSql(); // registers the end-of-run drop of every schema of this run
  return `eo_bench_${RUN_ID}_${label}_${++schemaCounter}`;
}

export function connect(options: postgres.Options<Record<string, postgres.PostgresType>> = {}): Sql {
  const sql = postgres(PG_URL, {
    max: 4,
    onnotice: () => {},
    idle_timeout: 30,
    connect_timeout: 5,
    ...options,
    connection: { application_name: `eo-bench-${RUN_ID}`, ...(options.connection ?? {}) },
  }) as unknown as Sql;
  onCleanup(() => sql.end({ timeout: 2 }).catch(() => {}));
  return sql;
}

/** An admin connection that drops every schema this run created (registered first, so it runs last). */
let admin: Sql | null = null;
export function adminSql(): Sql {
  if (!admin) {
    const a = postgres(PG_URL, { max: 1, onnotice: () => {}, connection: { application_name: `eo-bench-${RUN_ID}-admin` } }) as unknown as Sql;
    admin = a;
    cleanups.unshift(async () => {
      const rows = await a.unsafe(`SELECT nspname FROM pg_namespace WHERE nspname LIKE 'eo_bench_${RUN_ID}%'`);
      for (const r of rows) await a.unsafe(`DROP SCHEMA IF EXISTS "${String(r["nspname"])}" CASCADE`);
      await a.end({ timeout: 2 });
      admin = null;
    });
  }
  return admin;
}

/**
 * Flushes PostgreSQL's dirty buffers now (CHECKPOINT), so a checkpoint's writes do not land in the middle of the next
 * measurement, on Postgres or on a libSQL file sharing the disk. Called after every fill, before the clock starts.
 */
export async function settleDisk(): Promise<void> {
  await adminSql().unsafe("CHECKPOINT");
}

export async function dropSchema(schema: string): Promise<void> {
  await adminSql().unsafe(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
}

export interface PgOutbox {
  readonly sql: Sql;
  readonly schema: string;
  readonly storage: PostgresStorage;
  readonly outbox: Outbox<unknown, unknown>;
  /** `"schema"."outbox"` */
  readonly table: string;
  drop(): Promise<void>;
}

/** A migrated outbox in a fresh schema, on `sql`. */
export async function pgOutbox(sql: Sql, label: string): Promise<PgOutbox> {
  const schema = schemaName(label);
  const storage = postgresStorage(sql, { schema });
  await storage.migrate();
  const outbox = createOutbox({ storage }) as unknown as Outbox<unknown, unknown>;
  return { sql, schema, storage, outbox, table: `"${schema}"."outbox"`, drop: () => dropSchema(schema) };
}

/** Pre-inserts `count` keyless messages through the storage's own bulk enqueue, in committed chunks, then VACUUM ANALYZE. */
export async function pgFill(o: PgOutbox, count: number, chunk = 10_000, keys = 0): Promise<void> {
  for (let i = 0; i < count; i += chunk) {
    const batch = keyedMessages(i, Math.min(chunk, count - i), keys);
    await o.sql.begin((tx) => o.storage.enqueue(tx as never, batch));
  }
  await o.sql.unsafe(`VACUUM ANALYZE ${o.table}`);
}

export interface LibsqlOutbox {
  readonly client: Client;
  readonly path: string;
  readonly storage: LibsqlStorage;
  readonly outbox: Outbox<unknown, unknown>;
  close(): Promise<void>;
}

/** A migrated outbox on a fresh temporary database file. */
export async function libsqlOutbox(): Promise<LibsqlOutbox> {
  const dir = mkdtempSync(join(tmpdir(), `eo-bench-${RUN_ID}-`));
  const path = join(dir, "outbox.db");
  const client = createClient({ url: `file:${path}` });
  const close = onCleanup(() => {
    client.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const storage = libsqlStorage(client);
  await storage.migrate();
  const outbox = createOutbox({ storage }) as unknown as Outbox<unknown, unknown>;
  return { client, path, storage, outbox, close };
}

/** Pre-inserts `count` keyless messages through the storage's batch statement, in committed chunks. */
export async function libsqlFill(o: LibsqlOutbox, count: number, chunk = 10_000, keys = 0): Promise<void> {
  for (let i = 0; i < count; i += chunk) {
    await o.client.batch([o.storage.statement(keyedMessages(i, Math.min(chunk, count - i), keys))], "write");
  }
  await o.client.execute("ANALYZE");
}

export async function pgCount(sql: Sql, table: string): Promise<number> {
  const [r] = await sql.unsafe(`SELECT count(*)::int AS n FROM ${table}`);
  return Number(r!["n"]);
}
