// Profiling aid (not part of `npm run bench`): one Postgres transaction (BEGIN; INSERT order; X; COMMIT) with X the bare
// INSERT, the bare INSERT and a pg_notify, the adapter's enqueue statement, that statement without its pg_notify,
// storage.enqueue and outbox.enqueue (topic validated with valibot, as the bench's enqueue section); interleaved, medians.
//   node --import tsx bench/profile-enqueue.ts
import { cleanupAll, connect, payloadOf, pgOutbox } from "./lib.ts";
import { postgresSql } from "../adapters/postgres/sql.ts";
import * as v from "valibot";
import { createOutbox, defineTopic, uuidv7 } from "../mod.ts";
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
  const bareNotify = `WITH i AS (${bare} RETURNING 1) SELECT pg_notify('${ps.channel}', '') FROM i`;
  const topic = defineTopic("order.created", v.object({ orderId: v.string(), customerId: v.string(), total: v.number(), currency: v.string() }));
  const outbox = createOutbox({ storage: o.storage, topics: [topic] });
  const one = `WITH i AS (
  INSERT INTO ${T} (id, topic, key, payload, headers, status, created_at, available_at, attempts)
  VALUES ($1::uuid, $2, NULL, $3::json, $4::json, 'pending', now(), now() + $5::bigint * interval '1 millisecond', 0)
  ON CONFLICT (id) DO NOTHING RETURNING id
), n AS (SELECT pg_notify('${ps.channel}', '') FROM i)
SELECT (SELECT count(*) FROM i) AS inserted, (SELECT count(*) FROM n) AS notified`;
  const bareConflict = `${bare} ON CONFLICT (id) DO NOTHING`;
  let n = 0;
  const variants: Record<string, (tx: any) => Promise<unknown>> = {
    bare: (tx) => tx.unsafe(bare, [uuidv7(), "order.created", JSON.stringify(payloadOf(n))], { prepare: true }),
    bareNotify: (tx) => tx.unsafe(bareNotify, [uuidv7(), "order.created", JSON.stringify(payloadOf(n))], { prepare: true }),
    outbox: (tx) => outbox.enqueue(tx, topic, payloadOf(n)),
    one: (tx) => tx.unsafe(one, [uuidv7(), "order.created", JSON.stringify(payloadOf(n)), "{}", 0], { prepare: true }),
    bareConflict: (tx) => tx.unsafe(bareConflict, [uuidv7(), "order.created", JSON.stringify(payloadOf(n))], { prepare: true }),
    enqueue: (tx) => tx.unsafe(ps.enqueue, [JSON.stringify([[uuidv7(), "order.created", null, JSON.stringify(payloadOf(n)), "{}", 0]])], { prepare: true }),
    keyless: (tx) => tx.unsafe(keyless, [JSON.stringify([[uuidv7(), "order.created", null, JSON.stringify(payloadOf(n)), "{}", 0]])], { prepare: true }),
    noNotify: (tx) => tx.unsafe(noNotify, [JSON.stringify([[uuidv7(), "order.created", null, JSON.stringify(payloadOf(n)), "{}", 0]])], { prepare: true }),
    storage: (tx) => o.storage.enqueue(tx, [{ id: uuidv7(), topic: "order.created", payload: JSON.stringify(payloadOf(n)) } as never]),
  };
  const t: Record<string, number> = {};
  // Interleaved: each round runs one transaction of every variant in turn (drift hits all alike); medians per variant.
  const times: Record<string, number[]> = {};
  const entries = Object.entries(variants);
  for (let round = 0; round < 1_200; round++) {
    for (let j = 0; j < entries.length; j++) {
      const [name, f] = entries[(round + j) % entries.length]!;
      n++;
      const s = performance.now();
      await sql.begin(async (tx) => { await tx.unsafe(insertOrder, [`o${n}`, "c", 1, "EUR"], { prepare: true }); await f(tx); });
      if (round >= 200) (times[name] ??= []).push(performance.now() - s);
    }
  }
  for (const [k, v] of Object.entries(times)) t[k] = [...v].sort((a, b) => a - b)[v.length >> 1]!;
  console.log(Object.entries(t).map(([k, v]) => `${k} ${v.toFixed(3)} ms`).join(" | "));
} finally { await cleanupAll(); }
