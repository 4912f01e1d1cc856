// Strict per-key order at the consumer, end to end: outbox (libSQL file or Postgres) → relay → qstashTransport with
// `queues: false` (keyed messages published like keyless ones: QStash delivers them in parallel, so nothing past
// QStash keeps their order) → QStash emulator → qstashReceiver with `order.strict` → inbox (Postgres).
//
// The consumer fails the first delivery of every third message with a 500 before processing it, so QStash retries
// that message later while the relay has already published its successors: arrival order at the consumer is not
// commit order. Each message carries `Outbox-Seq` and `Outbox-Prev-Seq` (the seq of its key's previous delivered
// message: the storage's delivery position, advanced by the relay within a drain); the strict receiver holds (503) a
// message whose predecessor it has not processed, so the effects come out in commit order, each exactly once.
//
// Controls, same setup: without `strict` the effects of some keys come out of order (the reordering is real); with
// `strict` but a transport that does not forward `prevSeq` (what every storage did before delivery positions) they
// come out of order too: the storage's positions are what the strict hold needs.
import { Receiver } from "@upstash/qstash";
import * as v from "valibot";
import { describe, expect, it } from "vitest";
import { createInbox, createOutbox, createRelay, defineTopic, type OutboxStorage, type Transport } from "../mod.ts";
import { postgresInbox } from "../adapters/postgres/mod.ts";
import { qstashReceiver, qstashTransport } from "../adapters/qstash/mod.ts";
import { serveFetch } from "./fixtures/fetch-server.ts";
import { startQstashEmulator } from "./fixtures/qstash-emulator.ts";
import { libsqlFileFixture } from "./libsql-fixtures.ts";
import { postgresFixture } from "./postgres-fixtures.ts";

const KEYS = 4;
const PER_KEY = 15;
const event = defineTopic("strict.event", v.object({ key: v.string(), i: v.number() }));

type Mode = "strict" | "no strict" | "strict, prevSeq not forwarded";

interface Figures {
  effects: number;
  distinct: number;
  keysOutOfOrder: number;
  gaps: number;
  holds: number;
  failedFirstAttempts: number;
}

/** Enqueues KEYS × PER_KEY keyed messages (one transaction per round), drains them all through QStash, returns what the consumer did. */
async function run(
  outboxStorage: OutboxStorage<never, unknown>,
  enqueueRound: (round: number) => Promise<void>,
  mode: Mode,
): Promise<Figures> {
  const f = await postgresFixture();
  const emulator = await startQstashEmulator({ retryDelayMs: () => 15, defaultRetries: 100 });
  const s = f.schema;
  const inboxStorage = postgresInbox(f.sql, { schema: s });
  await inboxStorage.migrate();
  await f.sql.unsafe(`CREATE TABLE "${s}".effects (n bigserial, key text NOT NULL, i int NOT NULL, gap boolean)`);
  const receiver = qstashReceiver({
    verify: new Receiver({ currentSigningKey: emulator.currentSigningKey, nextSigningKey: emulator.nextSigningKey }),
    inbox: createInbox({ storage: inboxStorage, consumer: "strict-e2e" }),
    topics: [event],
    order: mode === "no strict" ? {} : { strict: { maxHolds: 80, retryAfterSeconds: 1 } },
    handler: async (m, { tx, order }) => {
      await tx.unsafe(`INSERT INTO "${s}".effects (key, i, gap) VALUES ($1, $2, $3)`, [m.payload.key, m.payload.i, order?.gap ?? null]);
    },
  });
  const figures = { holds: 0, failedFirstAttempts: 0 };
  const server = await serveFetch(async (request) => {
    const body = await request.clone().json() as { key: string; i: number };
    if (request.headers.get("upstash-retried") === "0" && body.i % 3 === 1) {
      figures.failedFirstAttempts++;
      return new Response("consumer not ready", { status: 500 }); // QStash retries it after its successors were published
    }
    const res = await receiver.fetch(request);
    if (res.status === 503) figures.holds++;
    return res;
  });
  try {
    const outbox = createOutbox({ storage: outboxStorage, topics: [event] });
    for (let round = 0; round < PER_KEY; round++) await enqueueRound(round);
    const qstash = qstashTransport(emulator.client(), { destination: `${server.url}/events`, queues: false });
    const transport: Transport = mode === "strict, prevSeq not forwarded"
      ? { name: "qstash", send: (batch, ctx) => qstash.send(batch.map((m) => ({ ...m, prevSeq: undefined })), ctx) }
      : qstash;
    const relay = createRelay({ outbox, transport, batchSize: 100, concurrency: 8 });
    for (let i = 0; i < 50 && (await outboxStorage.stats()).pending > 0; i++) await relay.drain({ budgetMs: 5_000 });
    expect((await outboxStorage.stats()).pending).toBe(0);
    await emulator.idle(60_000);
    const rows = await f.sql.unsafe(`SELECT key, i, gap FROM "${s}".effects ORDER BY n`);
    const perKey = new Map<string, number[]>();
    for (const r of rows) perKey.set(String(r["key"]), [...(perKey.get(String(r["key"])) ?? []), Number(r["i"])]);
    const result: Figures = {
      effects: rows.length,
      distinct: new Set(rows.map((r) => `${r["key"]}/${r["i"]}`)).size,
      keysOutOfOrder: [...perKey.values()].filter((is) => is.some((x, j) => j > 0 && x < is[j - 1]!)).length,
      gaps: rows.filter((r) => r["gap"] === true).length,
      ...figures,
    };
    console.log(`[strict-order ${outboxStorage.name}, ${mode}] ${JSON.stringify(result)}`);
    return result;
  } finally {
    await server.close();
    await emulator.close();
    await f.close();
  }
}

const backends = {
  async libsql(mode: Mode): Promise<Figures> {
    const o = await libsqlFileFixture();
    try {
      const outbox = createOutbox({ storage: o.storage, topics: [event] });
      return await run(o.storage as OutboxStorage<never, unknown>, async (round) => {
        // One atomic batch per round (the libSQL way): one message per key.
        const statements = Array.from({ length: KEYS }, (_, k) => outbox.statement(event, { key: `key-${k}`, i: round }, { key: `key-${k}` }));
        await o.client.batch(statements, "write");
      }, mode);
    } finally {
      await o.close();
    }
  },
  async postgres(mode: Mode): Promise<Figures> {
    const o = await postgresFixture();
    try {
      const outbox = createOutbox({ storage: o.storage, topics: [event] });
      return await run(o.storage as OutboxStorage<never, unknown>, async (round) => {
        await o.sql.begin(async (tx) => {
          for (let k = 0; k < KEYS; k++) await outbox.enqueue(tx, event, { key: `key-${k}`, i: round }, { key: `key-${k}` });
        });
      }, mode);
    } finally {
      await o.close();
    }
  },
};

describe("strict per-key order at the consumer: outbox → relay → QStash (no queues) → qstashReceiver strict → inbox", () => {
  for (const [name, backend] of Object.entries(backends)) {
    it(`${name}: with Outbox-Prev-Seq from the storage's delivery positions, every key's effects in commit order, each once`, async () => {
      const r = await backend("strict");
      expect(r.distinct).toBe(KEYS * PER_KEY);
      expect(r.effects).toBe(KEYS * PER_KEY);
      expect(r.keysOutOfOrder).toBe(0);
      expect(r.gaps).toBe(0); // nothing was forced past a hold budget
      expect(r.failedFirstAttempts).toBeGreaterThan(0);
      expect(r.holds).toBeGreaterThan(0); // successors really arrived before their predecessors and were held
    }, 120_000);
  }

  it("controls (libSQL): without strict, and with strict but no prevSeq forwarded, keys come out of order", async () => {
    const loose = await backends.libsql("no strict");
    expect(loose.distinct).toBe(KEYS * PER_KEY);
    expect(loose.keysOutOfOrder).toBeGreaterThan(0);
    const blind = await backends.libsql("strict, prevSeq not forwarded");
    expect(blind.distinct).toBe(KEYS * PER_KEY);
    expect(blind.keysOutOfOrder).toBeGreaterThan(0);
    expect(blind.holds).toBe(0);
  }, 120_000);
});
