// Section "claim scaling": the cost of a Postgres claim when the backlog sits in 10 keys whose heads are leased (issue
// 11: claim at 1,000,000 pending in 10 keys ≤ 1.5× of the same at 1,000). Two outboxes in fresh schemas, N = 1,000 and
// N = 1,000,000 keyed rows over 10 keys, inserted server-side (`generate_series`) with their key rows; then one claim
// leases the 10 heads for an hour, so every other row of those keys is queued behind a leased head; then 1,000 keyless
// due rows are added. A timed claim takes 100 rows (keyless: the 10 keys are blocked), an untimed release gives them
// back, so every claim sees the same table; claims on the small and the big table alternate so drift hits both alike.
// With schema v1's claim (a walk of every pending row in seq order) the big claim read all 1,000,000 rows (~3.6 s).
// Second row: claims on a connection whose first claims saw the table empty, once 300,000 rows are there and before
// any ANALYZE, against the same after ANALYZE (target ≤ 1.5×; see `staleStats`).
//
//   flock /tmp/edge-outbox-bench.lock node --expose-gc --import tsx bench/claim-scaling.ts [--quick]
//
// `claimScalingSection(cfg, results)` is what bench/main.ts calls.
import { fileURLToPath } from "node:url";
import { type BenchConfig, cleanupAll, connect, markdownTable, median, parseArgs, type PgOutbox, pgOutbox, Results, TOPIC } from "./lib.ts";

const SECTION = "claim scaling";
const KEYS = 10;
const KEYLESS = 1_000;
const CLAIM_ROWS = 100;
const SMALL = 1_000;
const BIG = 1_000_000;

/** Fills `o` with `n` rows over 10 keys, leases every key's head for an hour, then adds the keyless due rows. */
async function fill(o: PgOutbox, n: number): Promise<void> {
  await o.sql.unsafe(`INSERT INTO ${o.table} (id, topic, key, payload, headers, status, created_at, available_at)
    SELECT gen_random_uuid(), '${TOPIC}', 'customer-' || (i % ${KEYS}),
      json_build_object('orderId', 'o-' || i, 'customerId', 'c-' || (i % ${KEYS}), 'total', (i % 10000) / 100.0, 'currency', 'EUR'),
      '{}'::json, 'pending', now(), now()
    FROM generate_series(1, ${n}) AS i`);
  await o.sql.unsafe(`INSERT INTO "${o.schema}".outbox_keys (key) SELECT 'customer-' || k FROM generate_series(0, ${KEYS - 1}) AS k`);
  await o.sql.unsafe(`VACUUM ANALYZE ${o.table}`);
  // A claim takes whole prefixes of about half the due keys: claim until every key is held.
  const leased = new Set<string | null>();
  for (let i = 0; i < KEYS && leased.size < KEYS; i++) {
    for (const m of (await o.storage.claim({ limit: KEYS, leaseMs: 3_600_000 })).messages) leased.add(m.key);
  }
  if (leased.size !== KEYS) throw new Error(`leased the heads of ${leased.size} keys, expected ${KEYS}`);
  await o.sql.unsafe(`INSERT INTO ${o.table} (id, topic, key, payload, headers, status, created_at, available_at)
    SELECT gen_random_uuid(), '${TOPIC}', NULL, json_build_object('orderId', 'free-' || i), '{}'::json, 'pending', now(), now()
    FROM generate_series(1, ${KEYLESS}) AS i`);
  await o.sql.unsafe(`VACUUM ANALYZE ${o.table}`);
  await o.sql.unsafe(`VACUUM ANALYZE "${o.schema}".outbox_keys`);
}

/**
 * ms of one claim of 100 rows, then an untimed release of them (so the table stays the same). `keylessOnly`: every
 * key's head is leased, so a keyed row in the claim would be one behind a leased head.
 */
async function claimOnce(o: PgOutbox, keylessOnly = true): Promise<number> {
  const t0 = performance.now();
  const c = await o.storage.claim({ limit: CLAIM_ROWS, leaseMs: 30_000 });
  const ms = performance.now() - t0;
  if (c.messages.length !== CLAIM_ROWS) throw new Error(`claimed ${c.messages.length} rows, expected ${CLAIM_ROWS}`);
  if (keylessOnly && c.messages.some((m) => m.key !== null)) throw new Error("claimed a row behind a leased head");
  const r = await o.storage.settle(c.token, c.messages.map((m) => ({ id: m.id, outcome: "released" as const })));
  if (r.applied !== CLAIM_ROWS) throw new Error(`released ${r.applied} rows`);
  return ms;
}

const STALE_ROWS = 300_000;

/**
 * Stale statistics: a relay whose first claims saw an empty outbox (a drained one, a new deployment), then a backlog
 * of 300,000 rows (half over 10 keys, half keyless) before any ANALYZE (autovacuum off for the table, as when it has not
 * come round yet). Timed claims on that connection, then the same after `ANALYZE`: a plan made once from the empty
 * table's statistics and kept (a cached generic plan) scanned a whole index per claim (150–500 ms).
 */
async function staleStats(repeats: number): Promise<{ staleMs: number; analysedMs: number }> {
  const sql = connect({ max: 1 });
  const o = await pgOutbox(sql, "claimscale_stale");
  try {
    await sql.unsafe(`ALTER TABLE ${o.table} SET (autovacuum_enabled = false, toast.autovacuum_enabled = false)`);
    await sql.unsafe(`ANALYZE ${o.table}`);
    for (let i = 0; i < 8; i++) await o.storage.claim({ limit: CLAIM_ROWS, leaseMs: 30_000 });
    await sql.unsafe(`INSERT INTO ${o.table} (id, topic, key, payload, headers, status, created_at, available_at)
      SELECT gen_random_uuid(), '${TOPIC}', CASE WHEN i % 2 = 0 THEN 'customer-' || (i % ${KEYS}) END,
        json_build_object('orderId', 'o-' || i), '{}'::json, 'pending', now(), now()
      FROM generate_series(1, ${STALE_ROWS}) AS i`);
    await sql.unsafe(`INSERT INTO "${o.schema}".outbox_keys (key) SELECT 'customer-' || k FROM generate_series(0, ${KEYS - 1}) AS k`);
    const stale: number[] = [];
    for (let i = 0; i < repeats; i++) stale.push(await claimOnce(o, false));
    await sql.unsafe(`ANALYZE ${o.table}`);
    await sql.unsafe(`ANALYZE "${o.schema}".outbox_keys`);
    const analysed: number[] = [];
    for (let i = 0; i < repeats; i++) analysed.push(await claimOnce(o, false));
    return { staleMs: median(stale), analysedMs: median(analysed) };
  } finally {
    await o.drop();
    await sql.end({ timeout: 5 });
  }
}

/** The figures of the section. */
export interface ClaimScalingFigures {
  /** Median claim ms at 1,000 rows in 10 keys. */
  readonly smallMs: number;
  /** Median claim ms at 1,000,000 rows in 10 keys. */
  readonly bigMs: number;
  /** Timed claims per table. */
  readonly repeats: number;
  /** Seconds spent filling the big table. */
  readonly fillS: number;
}

/**
 * Runs the section and adds its row to `results`: the median claim at 1,000,000 pending in 10 keys with leased heads
 * against the same at 1,000 (target ≤ 1.5×).
 *
 * @param cfg the run's settings (`claimRepeats` timed claims per table)
 * @param results where the row goes
 * @returns the figures
 */
export async function claimScalingSection(cfg: BenchConfig, results: Results): Promise<ClaimScalingFigures> {
  const sql = connect({ max: 2 });
  const small = await pgOutbox(sql, "claimscale_small");
  const big = await pgOutbox(sql, "claimscale_big");
  try {
    await fill(small, SMALL);
    const t0 = performance.now();
    await fill(big, BIG);
    const fillS = (performance.now() - t0) / 1000;
    for (let i = 0; i < 3; i++) {
      await claimOnce(small);
      await claimOnce(big);
    }
    const s: number[] = [], b: number[] = [];
    for (let i = 0; i < cfg.claimRepeats; i++) {
      s.push(await claimOnce(small));
      b.push(await claimOnce(big));
    }
    const figures = { smallMs: median(s), bigMs: median(b), repeats: cfg.claimRepeats, fillS };
    results.compare(
      SECTION,
      `Postgres: claim of ${CLAIM_ROWS} at ${BIG.toLocaleString("en-US")} pending in ${KEYS} keys, heads leased (median of ${cfg.claimRepeats})`,
      figures.bigMs,
      "ms",
      { name: `at ${SMALL.toLocaleString("en-US")} pending in ${KEYS} keys`, value: figures.smallMs },
      { kind: "max", value: 1.5 },
      `+${KEYLESS.toLocaleString("en-US")} keyless due rows in both; big table filled in ${fillS.toFixed(1)} s`,
    );
    const st = await staleStats(cfg.claimRepeats);
    results.compare(
      SECTION,
      `Postgres: claim of ${CLAIM_ROWS} at ${STALE_ROWS.toLocaleString("en-US")} pending, statistics of an empty table (median of ${cfg.claimRepeats})`,
      st.staleMs,
      "ms",
      { name: "the same after ANALYZE", value: st.analysedMs },
      { kind: "max", value: 1.5 },
      "the connection's first claims saw the table empty; half the rows over 10 keys, half keyless; autovacuum off",
    );
    return figures;
  } finally {
    await small.drop();
    await big.drop();
    await sql.end({ timeout: 5 });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const cfg = parseArgs(process.argv.slice(2));
  const results = new Results();
  try {
    await claimScalingSection(cfg, results);
  } finally {
    await cleanupAll();
  }
  console.log(`\n${markdownTable(results)}`);
}
