// At 1,000,000 pending rows the claim (and hasDue, settle) are planned on indexes, never a sequential scan of the
// outbox table, and a claim stays fast.
import { describe, expect, it } from "vitest";
import { postgresSql } from "../adapters/postgres/sql.ts";
import { uuidv7 } from "../src/message.ts";
import { postgresFixture, reservedTransaction } from "./postgres-fixtures.ts";

const planOf = (rows: readonly Record<string, unknown>[]): string => rows.map((r) => String(r["QUERY PLAN"])).join("\n");

describe("postgres claim at scale", () => {
  it("at 1,000,000 pending rows the claim, hasDue and settle use indexes (no Seq Scan on the outbox table)", async () => {
    const f = await postgresFixture();
    try {
      const t = `"${f.schema}".outbox`;
      // Server-side bulk insert: 1/4 keyless, the rest over 5,000 keys; a few delayed and dead rows for realism.
      await f.sql.unsafe(`INSERT INTO ${t} (id, topic, key, payload, headers, status, created_at, available_at)
        SELECT gen_random_uuid(), 'bench.event', CASE WHEN i % 4 = 0 THEN NULL ELSE 'k' || (i % 5000) END,
          json_build_object('n', i), '{}'::json, CASE WHEN i % 1000 = 7 THEN 'dead' ELSE 'pending' END, now(),
          CASE WHEN i % 100 = 3 THEN now() + interval '1 hour' ELSE now() END
        FROM generate_series(1, 1000000) AS i`);
      await f.sql.unsafe(`ANALYZE ${t}`);
      const sql = postgresSql({ schema: f.schema, table: "outbox" });
      const token = crypto.randomUUID();

      const claimPlan = planOf(await f.sql.unsafe(`EXPLAIN ${sql.claim}`, [token, 30_000, 100]));
      expect(claimPlan).not.toMatch(/Seq Scan on outbox/);
      expect(claimPlan).toMatch(/Index Scan using outbox_pending on outbox o/);
      expect(claimPlan).toMatch(/SubPlan[\s\S]*using outbox_key on outbox p/);
      const hasDuePlan = planOf(await f.sql.unsafe(`EXPLAIN ${sql.hasDue}`));
      expect(hasDuePlan).not.toMatch(/Seq Scan on outbox/);
      const ids = JSON.stringify([uuidv7(), uuidv7()]);
      const settlePlan = planOf(await f.sql.unsafe(`EXPLAIN ${sql.settle}`, [token, ids, "[]", "[]", ids]));
      expect(settlePlan).not.toMatch(/Seq Scan on outbox\b/);

      // The real claim, in a transaction rolled back afterwards: 100 rows, fast.
      const h = await reservedTransaction(f.sql);
      try {
        const start = performance.now();
        const rows = await h.tx.unsafe(sql.claim, [token, 30_000, 100]);
        const ms = performance.now() - start;
        console.log(`[1M pending] claim of 100 rows: ${ms.toFixed(1)} ms\n${claimPlan}`);
        expect(rows.filter((r) => r["seq"] !== null)).toHaveLength(100);
        expect(ms).toBeLessThan(1_000);
      } finally {
        await h.rollback();
      }
      const s = await f.storage.stats();
      expect(s.pending).toBe(999_000);
      expect(s.dead).toBe(1_000);
    } finally {
      await f.close();
    }
  }, 180_000);
});
