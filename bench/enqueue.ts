// Section 3: the write side's overhead. N sequential transactions, each a business INSERT plus the outbox row:
// `outbox.enqueue(tx, topic, payload)` (validated topic, the adapter's statement) against a bare hand-written INSERT of
// the same row (same table, same columns). The two variants alternate in chunks so drift hits both alike.
import * as v from "valibot";
import { createOutbox, defineTopic, uuidv7 } from "../mod.ts";
import { type BenchConfig, connect, gc, libsqlOutbox, payloadOf, pgOutbox, type Results, TOPIC } from "./lib.ts";

const SECTION = "3 enqueue";
const CHUNKS = 8;
const WARMUP = 300;

const orderCreated = defineTopic(TOPIC, v.object({ orderId: v.string(), customerId: v.string(), total: v.number(), currency: v.string() }));

/** Runs `a` and `b` for `n` iterations each, alternating in chunks; returns the total ms of each. */
async function alternate(n: number, a: (i: number) => Promise<void>, b: (i: number) => Promise<void>): Promise<[number, number]> {
  let ta = 0;
  let tb = 0;
  const chunk = Math.ceil(n / CHUNKS);
  let i = 0;
  // A warm-up of both (prepared statements and generic plans, JIT), not timed.
  for (let w = 0; w < WARMUP; w++) {
    await a(-1 - w);
    await b(-1 - w);
  }
  for (let c = 0; c < CHUNKS; c++) {
    const run = async (f: (i: number) => Promise<void>): Promise<number> => {
      gc();
      const t0 = performance.now();
      for (let j = 0; j < chunk; j++) await f(i + j);
      if (process.env["BENCH_DEBUG"]) console.log(`    chunk ${c} ${f === a ? "a" : "b"} ${((performance.now() - t0) / chunk).toFixed(3)} ms`);
      return performance.now() - t0;
    };
    if (c % 2 === 0) {
      ta += await run(a);
      tb += await run(b);
    } else {
      tb += await run(b);
      ta += await run(a);
    }
    i += chunk;
  }
  return [ta, tb];
}

export async function enqueueSection(cfg: BenchConfig, results: Results): Promise<void> {
  const N = cfg.enqueueTransactions;
  const perTx = (ms: number): number => ms / (Math.ceil(N / CHUNKS) * CHUNKS);

  // ---- Postgres: sql.begin(tx => insert order; enqueue) ----
  {
    const sql = connect({ max: 2 });
    const o = await pgOutbox(sql, "enqueue");
    try {
      const orders = `"${o.schema}".orders`;
      await sql.unsafe(`CREATE TABLE ${orders} (id text PRIMARY KEY, customer_id text NOT NULL, total numeric NOT NULL, currency text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now())`);
      const outbox = createOutbox({ storage: o.storage, topics: [orderCreated] });
      const insertOrder = `INSERT INTO ${orders} (id, customer_id, total, currency) VALUES ($1, $2, $3, $4)`;
      const bare = `INSERT INTO ${o.table} (id, topic, key, payload, headers, status, created_at, available_at, attempts)
        VALUES ($1::uuid, $2, NULL, $3::json, '{}', 'pending', now(), now(), 0)`;
      const order = (tag: string, i: number) => {
        const p = payloadOf(i);
        return { p: { ...p, orderId: `${tag}${i}` }, args: [`${tag}${i}`, p.customerId, p.total, p.currency] };
      };
      const [edge, raw] = await alternate(
        N,
        async (i) => {
          const { p, args } = order("e", i);
          await sql.begin(async (tx) => {
            await tx.unsafe(insertOrder, args, { prepare: true });
            await outbox.enqueue(tx as never, orderCreated, p);
          });
        },
        async (i) => {
          const { p, args } = order("r", i);
          await sql.begin(async (tx) => {
            await tx.unsafe(insertOrder, args, { prepare: true });
            await tx.unsafe(bare, [uuidv7(), TOPIC, JSON.stringify(p)], { prepare: true });
          });
        },
      );
      results.compare(SECTION, `Postgres: INSERT order + outbox.enqueue, ${N.toLocaleString("en-US")} sequential tx`, perTx(edge), "ms", {
        name: "INSERT order + bare INSERT",
        value: perTx(raw),
      }, { kind: "max", value: 1.15 }, `${Math.round(1000 / perTx(edge)).toLocaleString("en-US")} tx/s`);
    } finally {
      await o.drop();
    }
  }

  // ---- libSQL file: an interactive write transaction (storage.begin()), and the one-round-trip batch ----
  {
    const o = await libsqlOutbox();
    try {
      const client = o.client;
      await client.execute(`CREATE TABLE orders (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, total REAL NOT NULL, currency TEXT NOT NULL,
        created_at INTEGER NOT NULL DEFAULT (CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)))`);
      const outbox = createOutbox({ storage: o.storage, topics: [orderCreated] });
      const NOW = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)";
      const insertOrder = "INSERT INTO orders (id, customer_id, total, currency) VALUES (?, ?, ?, ?)";
      const bare = `INSERT INTO outbox (id, topic, key, payload, headers, status, created_at, available_at, attempts)
        VALUES (?, ?, NULL, ?, '{}', 'pending', ${NOW}, ${NOW}, 0)`;
      const order = (tag: string, i: number) => {
        const p = payloadOf(i);
        return { p: { ...p, orderId: `${tag}${i}` }, args: [`${tag}${i}`, p.customerId, p.total, p.currency] };
      };
      const [edge, raw] = await alternate(
        N,
        async (i) => {
          const { p, args } = order("e", i);
          const tx = await o.storage.begin();
          await tx.execute({ sql: insertOrder, args });
          await outbox.enqueue(tx, orderCreated, p);
          await tx.commit();
        },
        async (i) => {
          const { p, args } = order("r", i);
          const tx = await o.storage.begin();
          await tx.execute({ sql: insertOrder, args });
          await tx.execute({ sql: bare, args: [uuidv7(), TOPIC, JSON.stringify(p)] });
          await tx.commit();
        },
      );
      results.compare(SECTION, `libSQL file: transaction, INSERT order + outbox.enqueue, ${N.toLocaleString("en-US")} tx`, perTx(edge), "ms", {
        name: "INSERT order + bare INSERT",
        value: perTx(raw),
      }, { kind: "max", value: 1.15 }, `${Math.round(1000 / perTx(edge)).toLocaleString("en-US")} tx/s`);

      const [edgeB, rawB] = await alternate(
        N,
        async (i) => {
          const { p, args } = order("be", i);
          await client.batch([{ sql: insertOrder, args }, outbox.statement(orderCreated, p)], "write");
        },
        async (i) => {
          const { p, args } = order("br", i);
          await client.batch([{ sql: insertOrder, args }, { sql: bare, args: [uuidv7(), TOPIC, JSON.stringify(p)] }], "write");
        },
      );
      results.compare(SECTION, `libSQL file: batch [INSERT order, outbox.statement], ${N.toLocaleString("en-US")} batches`, perTx(edgeB), "ms", {
        name: "batch [INSERT order, bare INSERT]",
        value: perTx(rawB),
      }, { kind: "max", value: 1.15 }, `${Math.round(1000 / perTx(edgeB)).toLocaleString("en-US")} tx/s`);
    } finally {
      await o.close();
    }
  }
}
