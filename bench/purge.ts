// Section "purge": the cost of one purge chunk on a libSQL file at 1,000,000 delivered/dead rows against 1,000 (issue
// 11: target ≤ 1.5×). Each table holds N dead and N kept-delivered rows (done a day ago) plus 1,000 pending rows, N =
// 1,000 or 1,000,000; a chunk is `storage.purge({ status, olderThan, limit: 1000 })` (the outbox's default chunk), so
// on the small table it deletes every row of that status and on the large one 1,000 of 1,000,000. After each timed chunk the deleted rows are
// put back (untimed), so every chunk sees the same table; chunks on the small and the large table alternate so drift
// hits both alike. Rows are inserted server-side with a recursive CTE.
//
//   flock /tmp/edge-outbox-bench.lock node --expose-gc --import tsx bench/purge.ts [--quick]
//
// `purgeSection(cfg, results)` is what bench/main.ts calls.
import { fileURLToPath } from "node:url";
import { NOW_MS } from "../adapters/libsql/sql.ts";
import { type BenchConfig, cleanupAll, type LibsqlOutbox, libsqlOutbox, markdownTable, median, parseArgs, Results, TOPIC } from "./lib.ts";

const SECTION = "purge";
const CHUNK = 1_000;
const SMALL = 1_000;
const BIG = 1_000_000;
const PENDING = 1_000;
/** Every done row's done_at is BASE + its row number: a fixed past, so a row put back is exactly the row purged. */
const BASE = Date.now() - 86_400_000;

type Status = "dead" | "delivered";

/**
 * Inserts rows `from`…`to` (inclusive) of status `status` (or pending), done a day ago. Ids are unique per
 * (status, row number), so a row put back after a purge has the id it had.
 */
function insertSql(status: Status | "pending", from: number, to: number): string {
  const tag = status === "dead" ? 1 : status === "delivered" ? 2 : 3;
  const done = status === "pending" ? "NULL" : `${BASE} + s.i`;
  return `WITH RECURSIVE s(i) AS (SELECT ${from} UNION ALL SELECT i + 1 FROM s WHERE i < ${to})
INSERT INTO outbox (id, topic, key, payload, headers, status, created_at, available_at, attempts, done_at, last_error)
SELECT printf('%08x-000${tag}-7000-8000-%012x', s.i, s.i), '${TOPIC}', CASE WHEN s.i % 4 = 0 THEN NULL ELSE 'k' || (s.i % 5000) END,
  json_object('orderId', 'o-' || s.i, 'customerId', 'c-' || (s.i % 997), 'total', (s.i % 10000) / 100.0, 'currency', 'EUR'),
  '{}', '${status}', ${BASE} - 1000, ${status === "pending" ? NOW_MS : BASE}, ${status === "pending" ? 0 : 1}, ${done},
  ${status === "dead" ? "'HTTP 400'" : "NULL"}
FROM s`;
}

/** A libSQL file with `rows` dead and `rows` delivered rows and PENDING pending rows, analysed. */
async function table(rows: number): Promise<LibsqlOutbox> {
  const o = await libsqlOutbox();
  for (const status of ["dead", "delivered"] as const) {
    for (let i = 1; i <= rows; i += 250_000) await o.client.execute(insertSql(status, i, Math.min(rows, i + 249_999)));
  }
  await o.client.execute(insertSql("pending", 1, PENDING));
  await o.client.execute("ANALYZE");
  return o;
}

/** ms of one purge chunk of `status`; the deleted rows are then put back (untimed): they were the oldest ones. */
async function chunkOnce(o: LibsqlOutbox, status: Status): Promise<number> {
  const olderThan = Date.now();
  const t0 = performance.now();
  const n = await o.storage.purge({ status, olderThan, limit: CHUNK });
  const ms = performance.now() - t0;
  if (n !== CHUNK) throw new Error(`purged ${n} ${status} rows, expected ${CHUNK}`);
  await o.client.execute(insertSql(status, 1, CHUNK));
  return ms;
}

/** Median chunk ms on the small and the big table, alternating (after three untimed warm-ups each). */
async function chunkMedians(small: LibsqlOutbox, big: LibsqlOutbox, status: Status, repeats: number): Promise<{ small: number; big: number }> {
  for (let i = 0; i < 3; i++) {
    await chunkOnce(small, status);
    await chunkOnce(big, status);
  }
  const s: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < repeats; i++) {
    if (i % 2 === 0) {
      s.push(await chunkOnce(small, status));
      b.push(await chunkOnce(big, status));
    } else {
      b.push(await chunkOnce(big, status));
      s.push(await chunkOnce(small, status));
    }
  }
  return { small: median(s), big: median(b) };
}

/**
 * The purge rows of the bench: one chunk of `purge` (1,000 rows, dead and delivered) on a libSQL file at 1,000,000
 * rows of that status against 1,000, with the target ≤ 1.5×.
 *
 * @param cfg the bench configuration (`claimRepeats` sets the repetitions: 100 full, 30 quick)
 * @param results where the rows go
 */
export async function purgeSection(cfg: BenchConfig, results: Results): Promise<void> {
  const repeats = Math.max(10, Math.round(cfg.claimRepeats / 2));
  const small = await table(SMALL);
  const t0 = performance.now();
  const big = await table(BIG);
  const fillS = (performance.now() - t0) / 1000;
  try {
    for (const status of ["dead", "delivered"] as const) {
      const m = await chunkMedians(small, big, status, repeats);
      results.compare(
        SECTION,
        `libSQL file: purge chunk of ${CHUNK.toLocaleString("en-US")} at ${BIG.toLocaleString("en-US")} ${status} rows (median of ${repeats})`,
        m.big,
        "ms",
        { name: `at ${SMALL.toLocaleString("en-US")} ${status} rows`, value: m.small },
        { kind: "max", value: 1.5 },
        `${(2 * BIG).toLocaleString("en-US")} done rows inserted in ${fillS.toFixed(1)} s`,
      );
    }
  } finally {
    await small.close();
    await big.close();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const cfg = parseArgs(process.argv.slice(2));
  const results = new Results();
  try {
    await purgeSection(cfg, results);
  } finally {
    await cleanupAll();
  }
  console.log(`\n${markdownTable(results)}`);
}
