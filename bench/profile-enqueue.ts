// Profiling aid (not part of `npm run bench`): one Postgres transaction (BEGIN; INSERT order; X; COMMIT) with X the bare
// INSERT, the adapter's enqueue statement, that statement without its pg_notify, and storage.enqueue; 10 rounds of 100.
//   node --import tsx bench/profile-enqueue.ts
import { cleanupAll, connect, payloadOf, pgOutbox } from "./lib.ts";
import { postgresSql } from "../adapters/postgres/sql.ts";
import { uuidv7 } from "../mod.ts";
try {
  const sql = connect({ max: 2 });
  const o = await pgOutbox(sql, "penq");
  const orders = `"${o.schema}".orders`;
  await sql.unsafe(`CREATE TABLE ${orders} (id text PRIMARY KEY, customer_id text NOT NULL, total numeric NOT NULL, currency text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`);
  const ps = postgresSql({ schema: o.schema, table: "outbox" });
  const noNotify = ps.enqueue.replace(/pg_notify\('[^']*', ''\)/, "1");
  const T = `"${o.schema}"."outbox"`;
  const keyless = `WITH i AS (
  INSERT INTO ${T} (id, topic, key, payload, headers, status, created_at, available_at, attempts)
  SELECT (m.v->>0)::uuid, m.v->>1, NULL, (m.v->>3)::json, (m.v->>4)::json, 'pending', now(), now() + (m.v->>5)::bigint * interval '1 millisecond', 0
  FROM json_array_elements($1::text::json) WITH ORDINALITY AS m(v, ord) ORDER BY m.ord
  ON CONFLICT (id) DO NOTHING RETURNING id
), n AS (SELECT pg_notify('${ps.channel}', '') FROM (SELECT 1 FROM i LIMIT 1) AS one)
SELECT x.inserted, CASE WHEN x.inserted < json_array_length($1::text::json) THEN (SELECT coalesce(json_agg(i.id)::text, '[]') FROM i) END AS ids
FROM (SELECT count(*) AS inserted FROM i) AS x, (SELECT count(*) FROM n) AS notified`;
  const bare = `INSERT INTO ${o.table} (id, topic, key, payload, headers, status, created_at, available_at, attempts) VALUES ($1::uuid, $2, NULL, $3::json, '{}', 'pending', now(), now(), 0)`;
  const insertOrder = `INSERT INTO ${orders} (id, customer_id, total, currency) VALUES ($1, $2, $3, $4)`;
  let n = 0;
  const variants: Record<string, (tx: any) => Promise<unknown>> = {
    bare: (tx) => tx.unsafe(bare, [uuidv7(), "order.created", JSON.stringify(payloadOf(n))], { prepare: true }),
    enqueue: (tx) => tx.unsafe(ps.enqueue, [JSON.stringify([[uuidv7(), "order.created", null, JSON.stringify(payloadOf(n)), "{}", 0]])], { prepare: true }),
    keyless: (tx) => tx.unsafe(keyless, [JSON.stringify([[uuidv7(), "order.created", null, JSON.stringify(payloadOf(n)), "{}", 0]])], { prepare: true }),
    noNotify: (tx) => tx.unsafe(noNotify, [JSON.stringify([[uuidv7(), "order.created", null, JSON.stringify(payloadOf(n)), "{}", 0]])], { prepare: true }),
    storage: (tx) => o.storage.enqueue(tx, [{ id: uuidv7(), topic: "order.created", payload: JSON.stringify(payloadOf(n)) } as never]),
  };
  const t: Record<string, number> = {};
  for (let round = 0; round < 12; round++) {
    for (const [name, f] of Object.entries(variants)) {
      const s = performance.now();
      for (let i = 0; i < 100; i++) {
        n++;
        await sql.begin(async (tx) => { await tx.unsafe(insertOrder, [`o${n}`, "c", 1, "EUR"], { prepare: true }); await f(tx); });
      }
      if (round >= 2) t[name] = (t[name] ?? 0) + (performance.now() - s) / 100;
    }
  }
  console.log(Object.entries(t).map(([k, v]) => `${k} ${(v / 10).toFixed(3)} ms`).join(" | "));
} finally { await cleanupAll(); }
