// At 1,000,000 pending rows, hasDue and settle are planned on indexes (never a sequential scan of the outbox table),
// and a claim stays fast, both with the backlog spread over many keys and with it sitting in 10 keys whose heads
// are leased (the claim then reads no row queued behind those heads).
import { describe, expect, it } from "vitest";
import { postgresSql } from "../adapters/postgres/sql.ts";
import { uuidv7 } from "../src/message.ts";
import { postgresFixture } from "./postgres-fixtures.ts";

const planOf = (rows: readonly Record<string, unknown>[]): string => rows.map((r) => String(r["QUERY PLAN"])).join("\n");

describe("postgres claim at scale", () => {
  it("at 1,000,000 pending rows hasDue and settle use indexes, and claims stay fast (many keys, and 10 deep keys with leased heads)", async () => {
    const f = await postgresFixture();
    try {
      const t = `"${f.schema}".outbox`;
      // Server-side bulk insert: 1/4 keyless, the rest over 5,000 keys; a few delayed and dead rows for realism. The
      // key table gets a row per key, as enqueue would have made.
      await f.sql.unsafe(`INSERT INTO ${t} (id, topic, key, payload, headers, status, created_at, available_at)
        SELECT gen_random_uuid(), 'bench.event', CASE WHEN i % 4 = 0 THEN NULL ELSE 'k' || (i % 5000) END,
          json_build_object('n', i), '{}'::json, CASE WHEN i % 1000 = 7 THEN 'dead' ELSE 'pending' END, now(),
          CASE WHEN i % 100 = 3 THEN now() + interval '1 hour' ELSE now() END
        FROM generate_series(1, 1000000) AS i`);
      await f.sql.unsafe(`INSERT INTO "${f.schema}".outbox_keys (key) SELECT DISTINCT key FROM ${t} WHERE key IS NOT NULL`);
      await f.sql.unsafe(`ANALYZE ${t}`);
      await f.sql.unsafe(`ANALYZE "${f.schema}".outbox_keys`);
      const sql = postgresSql({ schema: f.schema, table: "outbox" });
      const token = crypto.randomUUID();
      const hasDuePlan = planOf(await f.sql.unsafe(`EXPLAIN ${sql.hasDue}`));
      expect(hasDuePlan).not.toMatch(/Seq Scan on outbox\b/);
      const ids = JSON.stringify([uuidv7(), uuidv7()]);
      const settlePlan = planOf(await f.sql.unsafe(`EXPLAIN ${sql.settle}`, [token, ids, "[]", "[]", ids]));
      expect(settlePlan).not.toMatch(/Seq Scan on outbox\b/);
      const deliveredPlan = planOf(await f.sql.unsafe(`EXPLAIN ${sql.settleDelivered}`, [token, `{${uuidv7()}}`]));
      expect(deliveredPlan).not.toMatch(/Seq Scan on outbox\b/);

      const timed = async (): Promise<{ ms: number; n: number }> => {
        const start = performance.now();
        const c = await f.storage.claim({ limit: 100, leaseMs: 300_000 });
        return { ms: performance.now() - start, n: c.messages.length };
      };
      await timed(); // warm-up
      const many = await timed();
      console.log(`[1M pending, 5,000 keys] claim of ${many.n} rows: ${many.ms.toFixed(1)} ms`);
      expect(many.n).toBe(100);
      expect(many.ms).toBeLessThan(1_000);
      const s = await f.storage.stats();
      expect(s.pending).toBe(999_000);
      expect(s.dead).toBe(1_000);

      // The backlog in 10 keys whose heads are leased: the claim finds nothing and reads none of the rows behind them.
      await f.sql.unsafe(`DELETE FROM ${t}`);
      await f.sql.unsafe(`DELETE FROM "${f.schema}".outbox_keys`);
      await f.sql.unsafe(`INSERT INTO ${t} (id, topic, key, payload, headers, status, created_at, available_at)
        SELECT gen_random_uuid(), 'bench.event', 'deep' || (i % 10), '{}'::json, '{}'::json, 'pending', now(), now()
        FROM generate_series(1, 1000000) AS i`);
      await f.sql.unsafe(`INSERT INTO "${f.schema}".outbox_keys (key) SELECT DISTINCT key FROM ${t}`);
      await f.sql.unsafe(`VACUUM ANALYZE ${t}`);
      // Lease every key's head: a claim takes whole prefixes of about half the due keys, so claim until all 10 are held.
      const leased = new Set<string | null>();
      for (let i = 0; i < 10 && leased.size < 10; i++) {
        for (const m of (await f.storage.claim({ limit: 10, leaseMs: 300_000 })).messages) leased.add(m.key);
      }
      expect(leased.size).toBe(10);
      const blocked = [];
      for (let i = 0; i < 5; i++) blocked.push(await timed());
      const median = blocked.map((b) => b.ms).sort((a, b) => a - b)[2]!;
      console.log(`[1M pending in 10 keys, heads leased] empty claim: median ${median.toFixed(1)} ms`);
      expect(blocked.every((b) => b.n === 0)).toBe(true);
      expect(median).toBeLessThan(200); // v1 walked every row: about 3.6 s here
      expect(await f.storage.hasDue()).toBe(false);
    } finally {
      await f.close();
    }
  }, 300_000);
});
