// Exactly-once under load: 10,000 messages, each delivered 1–3 times (random duplicates, some of them concurrent), by
// 8 concurrent senders to a webhookReceiver on Postgres and on libSQL (a file). The senders call the receiver's Fetch
// handler in process (the HTTP path is covered by receiver, inbox-kill and inbox-e2e tests; here the CPU goes to the
// receiver and the database). The business effect is an insert into a table without unique keys plus an increment of
// a unique-less counter: every message must leave exactly one row and the counter must sum to exactly 10,000.
import * as v from "valibot";
import { describe, expect, it } from "vitest";
import { createInbox, defineTopic, type Inbox } from "../mod.ts";
import { importWebhookKey, signWebhook, webhookReceiver } from "../adapters/http/mod.ts";
import { libsqlInboxFixture, postgresInboxFixture } from "./inbox-fixtures.ts";

const MESSAGES = 10_000;
const SENDERS = 8;
/** The unique-less counter: increments spread over a few rows (no hot row), summed at the end. */
const BUCKETS = 64;
const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const event = defineTopic("load.event", v.object({ n: v.number() }));

interface LoadFigures {
  messages: number;
  deliveries: number;
  processed: number;
  duplicates: number;
  concurrentCopies: number;
  ms: number;
}

/** Sends every message 1–3 times from 8 senders; returns the counts of answers. */
async function blast(send: (request: Request) => Promise<Response>, log: (line: string) => void): Promise<LoadFigures> {
  const deliveries: number[] = [];
  for (let n = 0; n < MESSAGES; n++) {
    const copies = 1 + Math.floor(Math.random() * 3);
    for (let c = 0; c < copies; c++) deliveries.push(n);
  }
  for (let i = deliveries.length - 1; i > 0; i--) { // Fisher–Yates
    const j = Math.floor(Math.random() * (i + 1));
    [deliveries[i], deliveries[j]] = [deliveries[j]!, deliveries[i]!];
  }
  // Make some copies arrive at the same moment: put every 10th message's copies next to each other in the queue
  // the senders share, so different senders pick them up together.
  const adjacent = new Set<number>();
  for (let n = 0; n < MESSAGES; n += 10) adjacent.add(n);
  const queue = [...deliveries.filter((n) => !adjacent.has(n))];
  const grouped = deliveries.filter((n) => adjacent.has(n)).sort((a, b) => a - b);
  for (let i = 0; i < grouped.length;) { // insert each group at a random place
    let j = i;
    while (j < grouped.length && grouped[j] === grouped[i]) j++;
    queue.splice(Math.floor(Math.random() * queue.length), 0, ...grouped.slice(i, j));
    i = j;
  }
  const counts = { processed: 0, duplicate: 0 };
  const inFlight = new Map<number, number>();
  let concurrentCopies = 0;
  let next = 0;
  const key = await importWebhookKey(secret);
  const signed = new Map<number, Promise<{ ts: number; signature: string }>>(); // copies of a message share one signature
  const sign = (n: number, id: string, body: string) => {
    let s = signed.get(n);
    if (!s) {
      const ts = Math.floor(Date.now() / 1000);
      s = signWebhook(key, id, ts, body).then((signature) => ({ ts, signature }));
      signed.set(n, s);
    }
    return s;
  };
  const started = Date.now();
  const sender = async (): Promise<void> => {
    while (next < queue.length) {
      const n = queue[next++]!;
      const id = `00000000-0000-7000-8000-${String(n).padStart(12, "0")}`;
      const body = JSON.stringify({ n });
      const { ts, signature } = await sign(n, id, body);
      inFlight.set(n, (inFlight.get(n) ?? 0) + 1);
      if (inFlight.get(n)! > 1) concurrentCopies++;
      for (let attempt = 0;; attempt++) {
        const res = await send(new Request("http://consumer.test/hooks", {
          method: "POST",
          headers: {
            "content-type": "application/json",
            "webhook-id": id,
            "webhook-timestamp": String(ts),
            "webhook-signature": signature,
            "outbox-topic": event.name,
          },
          body,
        }));
        const answer = await res.json() as { status: string };
        if (res.status === 200) {
          counts[answer.status as "processed" | "duplicate"]++;
          break;
        }
        // 503 (busy database) is the sender's cue to retry, as a relay would.
        if (res.status !== 503 || attempt > 50) throw new Error(`unexpected ${res.status} ${JSON.stringify(answer)}`);
        await new Promise((r) => setTimeout(r, 5 + Math.random() * 20));
      }
      inFlight.set(n, inFlight.get(n)! - 1);
    }
  };
  await Promise.all(Array.from({ length: SENDERS }, sender));
  const figures = {
    messages: MESSAGES,
    deliveries: queue.length,
    processed: counts.processed,
    duplicates: counts.duplicate,
    concurrentCopies,
    ms: Date.now() - started,
  };
  log(JSON.stringify(figures));
  return figures;
}

function receiverOf<Tx>(inbox: Inbox<Tx, never> | Inbox<Tx, unknown>, effect: (tx: Tx, n: number) => Promise<void>) {
  return webhookReceiver({
    secret,
    toleranceMs: 3_600_000, // copies reuse their first signature, as a stored request would
    inbox: inbox as Inbox<Tx, never>,
    topics: [event],
    handler: (m, { tx }) => effect(tx, m.payload.n),
  });
}

describe("inbox under load: 10,000 messages × 1–3 deliveries from 8 concurrent senders", () => {
  it("Postgres: every effect exactly once, duplicates counted", async () => {
    // Commits need not wait for the disk here: atomicity is what is tested, not durability.
    const f = await postgresInboxFixture({ max: 8, connection: { synchronous_commit: "off" } });
    const s = f.schema;
    await f.sql.unsafe(`CREATE TABLE "${s}".counter (id int PRIMARY KEY, n bigint NOT NULL)`);
    await f.sql.unsafe(`INSERT INTO "${s}".counter SELECT g, 0 FROM generate_series(0, ${BUCKETS - 1}) g`);
    const inbox = createInbox({ storage: f.storage, consumer: "load" });
    const receiver = receiverOf(inbox, async (tx, n) => {
      await tx.unsafe(`INSERT INTO "${s}".effects (message_id) VALUES ($1)`, [String(n)]);
      await tx.unsafe(`UPDATE "${s}".counter SET n = n + 1 WHERE id = $1`, [n % BUCKETS]);
    });
    try {
      const figures = await blast(receiver.fetch, (l) => console.log(`[inbox-load postgres] ${l}`));
      const effects = await f.allEffects();
      const [counter] = await f.sql.unsafe(`SELECT sum(n)::int AS n FROM "${s}".counter`);
      const [recorded] = await f.sql.unsafe(`SELECT count(*)::int AS n FROM "${s}".inbox`);
      expect(effects).toHaveLength(MESSAGES);
      expect(new Set(effects).size).toBe(MESSAGES);
      expect(counter!["n"]).toBe(MESSAGES);
      expect(recorded!["n"]).toBe(MESSAGES);
      expect(figures.processed).toBe(MESSAGES);
      expect(figures.duplicates).toBe(figures.deliveries - MESSAGES);
      expect(figures.duplicates).toBeGreaterThan(MESSAGES * 0.8);
      expect(figures.concurrentCopies).toBeGreaterThan(0);
    } finally {
      await f.close();
    }
  }, 420_000);

  it("libSQL (file, WAL): every effect exactly once, duplicates counted", async () => {
    const f = await libsqlInboxFixture("file");
    await f.client.executeMultiple("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;");
    await f.client.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)");
    for (let b = 0; b < BUCKETS; b++) await f.client.execute({ sql: "INSERT INTO counter VALUES (?, 0)", args: [b] });
    const inbox = createInbox({ storage: f.storage, consumer: "load" });
    const receiver = receiverOf(inbox, async (tx, n) => {
      await tx.execute({ sql: "INSERT INTO effects (message_id) VALUES (?)", args: [String(n)] });
      await tx.execute({ sql: "UPDATE counter SET n = n + 1 WHERE id = ?", args: [n % BUCKETS] });
    });
    try {
      const figures = await blast(receiver.fetch, (l) => console.log(`[inbox-load libsql] ${l}`));
      const effects = await f.allEffects();
      const counter = (await f.client.execute("SELECT sum(n) AS n FROM counter")).rows[0]!["n"];
      expect(effects).toHaveLength(MESSAGES);
      expect(new Set(effects).size).toBe(MESSAGES);
      expect(Number(counter)).toBe(MESSAGES);
      expect(figures.processed).toBe(MESSAGES);
      expect(figures.duplicates).toBe(figures.deliveries - MESSAGES);
      expect(figures.concurrentCopies).toBeGreaterThan(0);
    } finally {
      await f.close();
    }
  }, 420_000);
});
