// Profiling aid (not part of `npm run bench`): where the Postgres relay's per-row server CPU goes, against the raw-SQL
// floor of section 1 (bench/drain.ts). One client, one connection, claims and deletes one at a time on a fresh table
// of keyless rows each: the floor's claim or the adapter's (`storage.claim`) followed by the floor's fenced delete or
// the adapter's settle (`storage.settle`, all delivered), in the four pairings; and the floor with a claim that writes
// only unindexed columns (`lease_token`, `lease_until`; the read skips leased rows) on a table with `fillfactor = 60`,
// so PostgreSQL can update the rows in place (HOT: no new index entries). Prints rows/s and the PostgreSQL processes'
// CPU per row (from /proc), and how many of the claims' row updates were HOT.
//   node --import tsx bench/profile-floor.ts [batch] [rows] [rounds]
import { cleanupAll, connect, pgFill, pgOutbox, postgresCpuMs } from "./lib.ts";
import { pgFloorSql } from "./drain.ts";

const [batchArg = "500", rowsArg = "60000", roundsArg = "2"] = process.argv.slice(2);
const batch = Number(batchArg), rows = Number(rowsArg), rounds = Number(roundsArg);
const VARIANTS = ["floor+floor", "ours+floor", "floor+ours", "ours+ours", "hot+floor"] as const;
const LEASE_MS = 30_000;
try {
  const sql = connect({ max: 1 });
  for (let round = 0; round < rounds; round++) {
    for (const variant of VARIANTS) {
      const o = await pgOutbox(sql, `pfloor${round}_${variant.replace("+", "_")}`);
      if (variant === "hot+floor") await sql.unsafe(`ALTER TABLE ${o.table} SET (fillfactor = 60)`);
      await pgFill(o, rows);
      await sql.unsafe("CHECKPOINT");
      const q = pgFloorSql(o.table);
      const hotClaim = `UPDATE ${o.table} AS t SET lease_token = $1::uuid, lease_until = now() + $2::bigint * interval '1 millisecond'
FROM (SELECT seq FROM ${o.table} WHERE key IS NULL AND status = 'pending' AND available_at <= now()
  AND (lease_until IS NULL OR lease_until <= now()) ORDER BY available_at, seq LIMIT $3 FOR UPDATE SKIP LOCKED) AS c
WHERE t.seq = c.seq RETURNING t.seq, t.id::text AS id, t.topic, t.payload::text AS payload`;
      /** The table's row updates and HOT updates so far (this backend's pending statistics flushed first). */
      const updates = async (): Promise<[number, number]> => {
        await sql.unsafe("SELECT pg_stat_force_next_flush()");
        await sql.unsafe("SELECT 1");
        const [r] = await sql.unsafe(`SELECT n_tup_upd::int AS u, n_tup_hot_upd::int AS h FROM pg_stat_user_tables
          WHERE relid = '${o.table}'::regclass`);
        return [Number(r!["u"]), Number(r!["h"])];
      };
      const [u0, h0] = await updates();
      const cpu0 = postgresCpuMs();
      const t0 = performance.now();
      let n = 0;
      for (;;) {
        let token: string, ids: string[], seqs: number[];
        if (variant.startsWith("ours")) {
          const c = await o.storage.claim({ limit: batch, leaseMs: LEASE_MS });
          token = c.token;
          ids = c.messages.map((m) => m.id);
          seqs = c.messages.map((m) => m.seq);
        } else {
          token = crypto.randomUUID();
          const claimed = await sql.unsafe(variant === "hot+floor" ? hotClaim : q.claim, [token, LEASE_MS, batch], { prepare: true });
          ids = claimed.map((r) => String(r["id"]));
          seqs = claimed.map((r) => Number(r["seq"]));
        }
        if (ids.length === 0) break;
        n += ids.length;
        if (variant.endsWith("+floor")) await sql.unsafe(q.remove, [`{${seqs.join(",")}}`, token], { prepare: true });
        else {
          const r = await o.storage.settle(token, ids.map((id) => ({ id, outcome: "delivered" as const })));
          if (r.lost.length > 0) throw new Error(`${r.lost.length} settlements lost`);
        }
      }
      const ms = performance.now() - t0;
      const cpu = postgresCpuMs() - cpu0;
      const [u1, h1] = await updates();
      const updated = u1 - u0, hot = h1 - h0;
      if (n !== rows) throw new Error(`${variant}: drained ${n} of ${rows}`);
      console.log(`${variant.padEnd(12)} batch ${batch}: ${Math.round(n / (ms / 1000))} rows/s, PostgreSQL CPU ${(cpu * 1000 / n).toFixed(1)} µs/row, ` +
        `${updated} row updates by the claims, ${hot} of them HOT`);
      await o.drop();
    }
  }
} finally {
  await cleanupAll();
}
