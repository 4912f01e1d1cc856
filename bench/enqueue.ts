// Section 3: the write side's overhead. N sequential transactions, each a business INSERT plus the outbox row:
// `outbox.enqueue(tx, topic, payload)` (validated topic, the adapter's statement) against a bare hand-written INSERT of
// the same row (same table, same columns). The two variants alternate in chunk pairs so drift hits both alike.
import * as v from "valibot";
import { createOutbox, defineTopic, uuidv7 } from "../mod.ts";
import { postgresStorage } from "../adapters/postgres/mod.ts";
import { type BenchConfig, connect, gc, libsqlOutbox, payloadOf, pgOutbox, type Results, TOPIC } from "./lib.ts";

const SECTION = "3 enqueue";
const CHUNKS = 16;
const WARMUP = 300;

const orderCreated = defineTopic(TOPIC, v.object({ orderId: v.string(), customerId: v.string(), total: v.number(), currency: v.string() }));

/** ms per transaction of edge-outbox (`edge`) and of the bare insert (`raw`) in the chunk pair with the median ratio. */
interface Overhead {
  readonly edge: number;
  readonly raw: number;
  readonly ratios: readonly number[];
}

/**
 * Runs `edge` and `raw` for `n` transactions each, as CHUNKS back-to-back chunk pairs (alternating which goes first)
 * after an untimed warm-up of both, and returns the pair whose ratio is the median (as in the drain section).
 */
async function alternate(n: number, edge: (i: number) => Promise<void>, raw: (i: number) => Promise<void>): Promise<Overhead> {
  const chunk = Math.ceil(n / CHUNKS);
  // A warm-up of both (prepared statements and generic plans, JIT), not timed.
  for (let w = 0; w < WARMUP; w++) {
    await edge(-1 - w);
    await raw(-1 - w);
  }
  const run = async (f: (i: number) => Promise<void>, from: number): Promise<number> => {
    gc();
    const t0 = performance.now();
    for (let j = 0; j < chunk; j++) await f(from + j);
    return (performance.now() - t0) / chunk;
  };
  const pairs: { edge: number; raw: number; ratio: number }[] = [];
  for (let c = 0; c < CHUNKS; c++) {
    let e: number;
    let r: number;
    if (c % 2 === 0) {
      e = await run(edge, c * chunk);
      r = await run(raw, c * chunk);
    } else {
      r = await run(raw, c * chunk);
      e = await run(edge, c * chunk);
    }
    pairs.push({ edge: e, raw: r, ratio: e / r });
    if (process.env["BENCH_DEBUG"]) console.log(`    chunk ${c}: edge ${e.toFixed(3)} ms, bare ${r.toFixed(3)} ms (${(e / r).toFixed(2)}×)`);
  }
  const mid = [...pairs].sort((x, y) => x.ratio - y.ratio)[Math.floor((pairs.length - 1) / 2)]!;
  return { edge: mid.edge, raw: mid.raw, ratios: pairs.map((p) => p.ratio) };
}

const detail = (o: Overhead): string =>
  `${Math.round(1000 / o.edge).toLocaleString("en-US")} tx/s; median of ${o.ratios.length} chunk pairs, ratios ` +
  `${Math.min(...o.ratios).toFixed(2)}–${Math.max(...o.ratios).toFixed(2)}`;

const WRITERS = 8;

/**
 * 8 writers at once, each its own connection, one keyless enqueue per transaction, for 3 s (1 s quick) per run, the
 * notifying storage and a `notify: false` one alternating over 3 rounds (1 quick): transactions per second, the
 * median of the rounds. PostgreSQL serialises the commits of transactions that notified (a cluster-wide lock held
 * until the commit is flushed, `PreCommit_Notify` in its async.c), which concurrent writers feel first.
 */
async function concurrentWriters(schema: string, cfg: BenchConfig, results: Results): Promise<void> {
  const sql = connect({ max: WRITERS });
  const outboxOf = (notify: boolean) => createOutbox({ storage: postgresStorage(sql, { schema, notify }), topics: [orderCreated] });
  const loud = outboxOf(true);
  const quiet = outboxOf(false);
  try {
    const ms = cfg.quick ? 1_000 : 3_000;
    const rate = async (outbox: typeof loud, tag: string): Promise<number> => {
      let n = 0;
      const end = performance.now() + ms;
      await Promise.all(Array.from({ length: WRITERS }, async (_, w) => {
        while (performance.now() < end) {
          const p = { ...payloadOf(n), orderId: `${tag}${w}-${n}` };
          await sql.begin((tx) => outbox.enqueue(tx, orderCreated, p));
          n++;
        }
      }));
      return n / (ms / 1000);
    };
    await rate(loud, "wl");
    await rate(quiet, "wq");
    const l: number[] = [];
    const q: number[] = [];
    for (let r = 0; r < (cfg.quick ? 1 : 3); r++) {
      l.push(await rate(loud, `l${r}-`));
      q.push(await rate(quiet, `q${r}-`));
    }
    const med = (a: number[]): number => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
    results.compare(SECTION, `Postgres: ${WRITERS} writers at once, one outbox.enqueue per tx (notify on, the default)`, med(l), "tx/s", {
      name: "the same with notify: false",
      value: med(q),
    }, undefined, `rounds ${l.map((x) => Math.round(x).toLocaleString("en-US")).join(" / ")} against ${q.map((x) => Math.round(x).toLocaleString("en-US")).join(" / ")} tx/s`);
  } finally {
    await sql.end({ timeout: 2 }).catch(() => {});
  }
}

export async function enqueueSection(cfg: BenchConfig, results: Results): Promise<void> {
  const N = cfg.enqueueTransactions;

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
      // A transaction of the order and its event through `ob`, and the same with the bare INSERT (tags keep ids apart).
      const viaOutbox = (ob: typeof outbox, tag: string) => async (i: number): Promise<void> => {
        const { p, args } = order(tag, i);
        await sql.begin(async (tx) => {
          await tx.unsafe(insertOrder, args, { prepare: true });
          await ob.enqueue(tx as never, orderCreated, p);
        });
      };
      const viaBare = (tag: string) => async (i: number): Promise<void> => {
        const { p, args } = order(tag, i);
        await sql.begin(async (tx) => {
          await tx.unsafe(insertOrder, args, { prepare: true });
          await tx.unsafe(bare, [uuidv7(), TOPIC, JSON.stringify(p)], { prepare: true });
        });
      };
      const o1 = await alternate(N, viaOutbox(outbox, "e"), viaBare("r"));
      results.compare(SECTION, `Postgres: INSERT order + outbox.enqueue, ${N.toLocaleString("en-US")} sequential tx`, o1.edge, "ms", {
        name: "INSERT order + bare INSERT",
        value: o1.raw,
      }, { kind: "max", value: 1.1 }, detail(o1));
      // The same with `notify: false` (no pg_notify: for outboxes nothing LISTENs to), against the same bare insert.
      const quiet = createOutbox({ storage: postgresStorage(sql, { schema: o.schema, notify: false }), topics: [orderCreated] });
      const o3 = await alternate(N, viaOutbox(quiet, "q"), viaBare("s"));
      results.compare(SECTION, `Postgres: the same with postgresStorage({ notify: false })`, o3.edge, "ms", {
        name: "INSERT order + bare INSERT",
        value: o3.raw,
      }, undefined, detail(o3));
      await concurrentWriters(o.schema, cfg, results);
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
      const o2 = await alternate(
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
      results.compare(SECTION, `libSQL file: transaction, INSERT order + outbox.enqueue, ${N.toLocaleString("en-US")} tx`, o2.edge, "ms", {
        name: "INSERT order + bare INSERT",
        value: o2.raw,
      }, { kind: "max", value: 1.1 }, detail(o2));

      const o3 = await alternate(
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
      results.compare(SECTION, `libSQL file: batch [INSERT order, outbox.statement], ${N.toLocaleString("en-US")} batches`, o3.edge, "ms", {
        name: "batch [INSERT order, bare INSERT]",
        value: o3.raw,
      }, { kind: "max", value: 1.1 }, detail(o3));
    } finally {
      await o.close();
    }
  }
}
