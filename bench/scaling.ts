// Section 5: scaling. (a) Claim time at 1,000 versus 1,000,000 pending rows on Postgres and on a libSQL file: the
// median of repeated claim + release of 100 rows (release gives the rows back, so every claim sees the same table),
// claims on the small and the big table alternating so drift hits both alike.
// Rows are inserted server-side (Postgres `generate_series`, libSQL a recursive CTE) in the adapter's schema: a quarter
// keyless, the rest spread over 5,000 keys. (b) Process RSS, sampled every 100 ms, while one relay drains 1,000,000
// (full) / 200,000 (quick) messages from that Postgres table (in a child process: bench/rss-drain.ts): start, peak and
// end, against the peak while draining the first 10%.
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { NOW_MS } from "../adapters/libsql/sql.ts";
import { type BenchConfig, connect, libsqlOutbox, median, type PgOutbox, pgOutbox, type Results, settleDisk, TOPIC } from "./lib.ts";
import type { OutboxStorage } from "../src/storage.ts";

const SECTION = "5 scaling";
const CLAIM_ROWS = 100;
const SMALL = 1_000;

/** ms of one claim of 100 rows, followed by an untimed release of the claimed rows (so the table stays the same). */
async function claimOnce(storage: OutboxStorage<unknown, unknown>): Promise<number> {
  const t0 = performance.now();
  const c = await storage.claim({ limit: CLAIM_ROWS, leaseMs: 30_000 });
  const ms = performance.now() - t0;
  if (c.messages.length !== CLAIM_ROWS) throw new Error(`claimed ${c.messages.length} rows, expected ${CLAIM_ROWS}`);
  const r = await storage.settle(c.token, c.messages.map((m) => ({ id: m.id, outcome: "released" as const })));
  if (r.applied !== CLAIM_ROWS) throw new Error(`released ${r.applied} rows`);
  return ms;
}

/** Median claim ms on the small and on the big table, the two claims alternating (after three untimed warm-ups each). */
async function claimMedians(
  small: OutboxStorage<unknown, unknown>,
  big: OutboxStorage<unknown, unknown>,
  repeats: number,
): Promise<{ small: number; big: number }> {
  for (let i = 0; i < 3; i++) {
    await claimOnce(small);
    await claimOnce(big);
  }
  const s: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < repeats; i++) {
    if (i % 2 === 0) {
      s.push(await claimOnce(small));
      b.push(await claimOnce(big));
    } else {
      b.push(await claimOnce(big));
      s.push(await claimOnce(small));
    }
  }
  return { small: median(s), big: median(b) };
}

async function pgInsert(o: PgOutbox, rows: number): Promise<void> {
  await o.sql.unsafe(`INSERT INTO ${o.table} (id, topic, key, payload, headers, status, created_at, available_at, attempts)
    SELECT gen_random_uuid(), '${TOPIC}', CASE WHEN i % 4 = 0 THEN NULL ELSE 'k' || (i % 5000) END,
      json_build_object('orderId', 'o-' || i, 'customerId', 'c-' || (i % 997), 'total', (i % 10000) / 100.0, 'currency', 'EUR'),
      '{}'::json, 'pending', now(), now(), 0
    FROM generate_series(1, ${rows}) AS i`);
  // The key rows an enqueue would have written (schema v2): without them the keyed rows are never claimable, and the
  // full run's RSS drain of 1,000,000 stopped after the 250,000 keyless ones.
  await o.sql.unsafe(`INSERT INTO "${o.schema}".outbox_keys (key) SELECT DISTINCT key FROM ${o.table} WHERE key IS NOT NULL
    ON CONFLICT (key) DO NOTHING`);
  await o.sql.unsafe(`VACUUM ANALYZE ${o.table}`);
  await o.sql.unsafe(`VACUUM ANALYZE "${o.schema}".outbox_keys`);
}

const LIBSQL_INSERT = (rows: number): string => `WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ${rows})
INSERT INTO outbox (id, topic, key, payload, headers, status, created_at, available_at, attempts)
SELECT printf('%08x-0000-7000-8000-%012x', i, i), '${TOPIC}', CASE WHEN i % 4 = 0 THEN NULL ELSE 'k' || (i % 5000) END,
  json_object('orderId', 'o-' || i, 'customerId', 'c-' || (i % 997), 'total', (i % 10000) / 100.0, 'currency', 'EUR'),
  '{}', 'pending', n.now, n.now, 0
FROM s, (SELECT ${NOW_MS} AS now) AS n`;

export async function scalingSection(cfg: BenchConfig, results: Results): Promise<void> {
  const big = cfg.scaleRows;
  const bigLabel = big.toLocaleString("en-US");
  const target = { kind: "max", value: 1.5 } as const;

  // ---- Postgres: claim time on both tables (alternating), then the RSS drain on the large one ----
  const sql = connect({ max: 4 });
  {
    const small = await pgOutbox(sql, "scale_small");
    const o = await pgOutbox(sql, "scale_big");
    try {
      await pgInsert(small, SMALL);
      const t0 = performance.now();
      await pgInsert(o, big);
      const insertS = (performance.now() - t0) / 1000;
      await settleDisk();
      const m = await claimMedians(small.storage, o.storage, cfg.claimRepeats);
      results.compare(SECTION, `Postgres: claim of 100 rows at ${bigLabel} pending (median of ${cfg.claimRepeats})`, m.big, "ms", {
        name: `at ${SMALL.toLocaleString("en-US")} pending`,
        value: m.small,
      }, target, `${bigLabel} rows inserted in ${insertS.toFixed(1)} s`);
      await small.drop();
      await rssDrain(cfg, results, o);
    } finally {
      await small.drop();
      await o.drop();
    }
  }

  // ---- libSQL file: claim time on both files (alternating) ----
  {
    const small = await libsqlOutbox();
    const o = await libsqlOutbox();
    try {
      await small.client.execute(LIBSQL_INSERT(SMALL));
      await small.client.execute("ANALYZE");
      const t0 = performance.now();
      await o.client.execute(LIBSQL_INSERT(big));
      await o.client.execute("ANALYZE");
      const insertS = (performance.now() - t0) / 1000;
      await settleDisk();
      const m = await claimMedians(small.storage, o.storage, cfg.claimRepeats);
      results.compare(SECTION, `libSQL file: claim of 100 rows at ${bigLabel} pending (median of ${cfg.claimRepeats})`, m.big, "ms", {
        name: `at ${SMALL.toLocaleString("en-US")} pending`,
        value: m.small,
      }, target, `${bigLabel} rows inserted in ${insertS.toFixed(1)} s`);
    } finally {
      await small.close();
      await o.close();
    }
  }
}

/**
 * Drains `cfg.rssMessages` messages from the large table in a child process (bench/rss-drain.ts: one relay, batch 100,
 * RSS sampled every 100 ms), so earlier sections' memory does not blur its figures.
 */
async function rssDrain(cfg: BenchConfig, results: Results, o: PgOutbox): Promise<void> {
  const n = cfg.rssMessages;
  const script = join(dirname(fileURLToPath(import.meta.url)), "rss-drain.ts");
  const out = await new Promise<string>((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, script, o.schema, String(n)], { stdio: ["ignore", "pipe", "inherit"] });
    let stdout = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.on("error", reject);
    child.on("exit", (code) => (code === 0 ? resolve(stdout) : reject(new Error(`rss-drain exited with ${code}`))));
  });
  const r = JSON.parse(out.trim().split("\n").at(-1)!) as {
    drained: number; seconds: number; samples: number; startMb: number; firstTenthPeakMb: number; peakMb: number; endMb: number;
  };
  results.compare(
    SECTION,
    `RSS while one relay drains ${n.toLocaleString("en-US")} of ${cfg.scaleRows.toLocaleString("en-US")} (Postgres, batch 100): peak`,
    r.peakMb,
    "MB",
    { name: "peak during the first 10%", value: r.firstTenthPeakMb },
    { kind: "max", value: 1.25 },
    `start ${r.startMb} MB, end ${r.endMb} MB, ${r.samples} samples, ${Math.round(r.drained / r.seconds).toLocaleString("en-US")} msg/s`,
  );
}
