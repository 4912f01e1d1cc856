import { createClient } from "@libsql/client";
import { Client, Receiver } from "@upstash/qstash";
import { Hono } from "hono";
import { connect } from "node:net";
import * as v from "valibot";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  createOutbox,
  createRelay,
  defineTopic,
  type DeliveryOutcome,
  type DrainReport,
  type OutboxMessage,
  type Transport,
  uuidv7,
} from "../mod.ts";
import { libsqlStorage } from "../adapters/libsql/mod.ts";
import { createRelayApp } from "../adapters/hono/mod.ts";
import {
  ensureSchedule,
  MESSAGE_HEADERS,
  type QstashBatchRequest,
  type QstashClient,
  type QstashCreateScheduleRequest,
  qstashFollowUp,
  qstashNudge,
  type QstashPublishRequest,
  type QstashSchedule,
  qstashTransport,
} from "../adapters/qstash/mod.ts";
import { type FetchServer, serveFetch } from "./fixtures/fetch-server.ts";
import { type QstashEmulator, startQstashEmulator } from "./fixtures/qstash-emulator.ts";
import { codeOf, event, memoryOutbox, sleep } from "./helpers.ts";

// ---- type level: the real Client fits the structural types (checked by tsc -p tsconfig.test.json) ----------------
type Assert<T extends true> = T;
type Fits<A, B> = [A] extends [B] ? true : false;
// Methods are compared bivariantly, so also check each parameter and result in the direction that matters.
export type TypeChecks = [
  Assert<Fits<Client, QstashClient>>,
  Assert<Fits<QstashPublishRequest[], Parameters<Client["batch"]>[0]>>,
  Assert<Fits<QstashBatchRequest[], Parameters<Client["batch"]>[0]>>,
  Assert<Fits<QstashPublishRequest, Parameters<ReturnType<Client["queue"]>["enqueue"]>[0]>>,
  Assert<Fits<Awaited<ReturnType<Client["batch"]>>, Awaited<ReturnType<QstashClient["batch"]>>>>,
  Assert<Fits<QstashPublishRequest, Parameters<Client["publish"]>[0]>>,
  Assert<Fits<Awaited<ReturnType<Client["publish"]>>, Awaited<ReturnType<QstashClient["publish"]>>>>,
  Assert<Fits<QstashCreateScheduleRequest, Parameters<Client["schedules"]["create"]>[0]>>,
  Assert<Fits<Awaited<ReturnType<Client["schedules"]["get"]>>, QstashSchedule>>,
  Assert<Fits<Awaited<ReturnType<Client["schedules"]["list"]>>, readonly QstashSchedule[]>>,
];

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

// The QStash client logs every failed call (console.warn per network retry, console.error per failure); the
// failures here are on purpose, so keep those lines out of the test output (everything else passes through).
beforeEach(() => {
  for (const level of ["warn", "error"] as const) {
    const original = console[level];
    const spy = vi.spyOn(console, level).mockImplementation((...args: unknown[]) => {
      if (typeof args[0] === "string" && args[0].startsWith("[Upstash QStash]")) return;
      original(...args);
    });
    cleanups.push(async () => {
      await sleep(0);
      spy.mockRestore();
    });
  }
});

async function emulator(options: Parameters<typeof startQstashEmulator>[0] = {}): Promise<QstashEmulator> {
  const e = await startQstashEmulator(options);
  cleanups.push(() => e.close());
  return e;
}

interface Received {
  path: string;
  body: string;
  headers: Record<string, string>;
  at: number;
  /** Epoch ms, to compare with QStash times. */
  epoch: number;
}

/** A destination that verifies every delivery with the real Receiver (401 when it fails). */
async function consumer(e: QstashEmulator, status: (r: Received) => number = () => 200, delayMs = 0) {
  const receiver = new Receiver({ currentSigningKey: e.currentSigningKey, nextSigningKey: e.nextSigningKey });
  const received: Received[] = [];
  let rejected = 0;
  const server: FetchServer = await serveFetch(async (req) => {
    const body = await req.text();
    const path = new URL(req.url).pathname;
    try {
      await receiver.verify({ signature: req.headers.get("upstash-signature") ?? "", body, url: `${server.url}${path}` });
    } catch {
      rejected++;
      return new Response("bad signature", { status: 401 });
    }
    if (delayMs) await sleep(delayMs);
    const r: Received = { path, body, headers: Object.fromEntries(req.headers.entries()), at: performance.now(), epoch: Date.now() };
    const s = status(r);
    if (s >= 200 && s < 300) received.push(r);
    return new Response(null, { status: s });
  });
  cleanups.push(() => server.close());
  return { url: server.url, received, rejected: () => rejected };
}

const msg = (n: number, o: Partial<OutboxMessage> = {}): OutboxMessage => ({
  id: uuidv7(),
  topic: "test.event",
  key: null,
  payload: { n },
  body: JSON.stringify({ n }),
  headers: {},
  createdAt: Date.now(),
  attempts: 1,
  lastError: null,
  ...o,
});
const ctx = (ms = 5_000): { signal: AbortSignal } => ({ signal: AbortSignal.timeout(ms) });

/** Wraps a transport to record what the relay handed it. */
function spying(t: Transport): Transport & { sent: OutboxMessage[] } {
  const sent: OutboxMessage[] = [];
  return { name: t.name, maxBatchSize: t.maxBatchSize, sent, send: (ms, c) => (sent.push(...ms), t.send(ms, c)) };
}

describe("qstashTransport", () => {
  it("the real @upstash/qstash Client is a QstashClient", async () => {
    const e = await emulator();
    const client: QstashClient = e.client();
    expect(typeof client.batch).toBe("function");
    expect(typeof client.schedules.create).toBe("function");
  });

  it("publishes many messages per batch call, with the message id as dedup id and the headers forwarded; QStash delivers them signed", async () => {
    const e = await emulator();
    const dest = await consumer(e);
    const { storage, outbox } = memoryOutbox();
    const { tx, commit } = storage.begin();
    const ids: string[] = [];
    for (let n = 0; n < 250; n++) ids.push(await outbox.enqueue(tx, event, { n }, { headers: { "X-Tenant": "acme" } }));
    await commit();
    const transport = spying(qstashTransport(e.client(), { destination: `${dest.url}/events`, retries: 2, headers: { "X-App": "shop" } }));
    const report = await createRelay({ outbox, transport, batchSize: 250, concurrency: 4 }).drain();
    expect(report).toMatchObject({ delivered: 250, retried: 0, dead: 0 });

    const batchCalls = e.calls.filter((c) => c.path === "/v2/batch");
    expect(batchCalls).toHaveLength(3); // 100 + 100 + 50
    expect(batchCalls.map((c) => (JSON.parse(c.body) as unknown[]).length).sort()).toEqual([100, 100, 50].sort());
    expect(e.messages).toHaveLength(250);
    for (const m of e.messages) {
      expect(m.dedupId).toBe(m.forwardHeaders[MESSAGE_HEADERS.id.toLowerCase()]);
      expect(m.retries).toBe(2);
      expect(m.flowControl).toBe(null);
    }
    expect(new Set(e.messages.map((m) => m.dedupId))).toEqual(new Set(ids));

    await e.idle();
    expect(dest.rejected()).toBe(0);
    expect(dest.received).toHaveLength(250);
    const r = dest.received.find((x) => x.headers["outbox-message-id"] === ids[7])!;
    expect(JSON.parse(r.body)).toEqual({ n: 7 });
    expect(r.headers).toMatchObject({ "content-type": "application/json", "x-tenant": "acme", "x-app": "shop", "outbox-topic": "test.event" });
    expect(r.headers["outbox-key"]).toBeUndefined();
    expect(r.headers["upstash-message-id"]).toMatch(/^msg_/);

    // A resend (lost answer, expired lease…) is accepted but deduplicated by QStash: nothing is delivered twice.
    const again = await transport.send(transport.sent.slice(0, 100), ctx());
    expect(again.every((o) => o.status === "delivered")).toBe(true);
    expect(e.messages).toHaveLength(250);
  });

  it("keyed messages go through QStash queues (FIFO, parallelism 1) chosen by a stable hash of the key; order survives a retry inside QStash", async () => {
    const e = await emulator({ retryDelayMs: () => 100 });
    let failedOnce = false;
    const dest = await consumer(e, (r) => {
      if (!failedOnce && JSON.parse(r.body).n === 0) {
        failedOnce = true;
        return 503; // QStash retries message 0; the next message of its queue waits for those retries
      }
      return 200;
    }, 5);
    const { storage, outbox } = memoryOutbox();
    const { tx, commit } = storage.begin();
    for (let n = 0; n < 12; n++) await outbox.enqueue(tx, event, { n }, { key: n % 3 === 2 ? null : n % 3 === 0 ? "customer-7" : "клиент 1" });
    await commit();
    const transport = qstashTransport(e.client(), { destination: `${dest.url}/events` });
    const relay = createRelay({ outbox, transport });
    let delivered = 0;
    for (let i = 0; i < 20 && delivered < 12; i++) delivered += (await relay.drain()).delivered;
    expect(delivered).toBe(12);

    const byN = new Map(e.messages.map((m) => [JSON.parse(m.body).n as number, m]));
    // FNV-1a 32 of the key's UTF-8 bytes mod 8 (pinned: a different hash would move keys between queues on upgrade).
    expect(byN.get(0)!.queue).toBe("outbox-1"); // "customer-7"
    expect(byN.get(1)!.queue).toBe("outbox-6"); // "клиент 1"
    for (const n of [3, 6, 9]) expect(byN.get(n)!.queue).toBe("outbox-1");
    for (const n of [4, 7, 10]) expect(byN.get(n)!.queue).toBe("outbox-6");
    expect(byN.get(2)!.queue).toBe(null); // keyless: the plain batch path
    expect(byN.get(0)!.flowControl).toBe(null);
    expect(byN.get(1)!.forwardHeaders["outbox-key"]).toBe(encodeURIComponent("клиент 1"));
    // Each queue was upserted once with parallelism 1 (FIFO), not once per send.
    const upserts = e.calls.filter((c) => c.method === "POST" && c.path === "/v2/queues");
    expect(upserts.map((c) => JSON.parse(c.body) as { queueName: string; parallelism: number }).sort((a, b) => a.queueName.localeCompare(b.queueName)))
      .toEqual([{ queueName: "outbox-1", parallelism: 1, paused: false }, { queueName: "outbox-6", parallelism: 1, paused: false }]);
    expect(e.queues.get("outbox-1")).toMatchObject({ parallelism: 1, paused: false });

    await e.idle();
    const order = (key: string): number[] =>
      dest.received.filter((r) => r.headers["outbox-key"] === encodeURIComponent(key)).map((r) => JSON.parse(r.body).n as number);
    expect(failedOnce).toBe(true);
    expect(order("customer-7")).toEqual([0, 3, 6, 9]);
    expect(order("клиент 1")).toEqual([1, 4, 7, 10]);
    expect(dest.received).toHaveLength(12);

    const noQueues = qstashTransport(e.client(), { destination: `${dest.url}/events`, queues: false });
    await noQueues.send([msg(100, { key: "k" })], ctx());
    expect(e.messages.at(-1)!.queue).toBe(null);
    const custom = qstashTransport(e.client(), { destination: `${dest.url}/events`, queues: 3, queuePrefix: "shop.orders-" });
    await custom.send([msg(101, { key: "customer-7" })], ctx());
    expect(e.messages.at(-1)!.queue).toBe(`shop.orders-${273657585 % 3}`);
  });

  it("per-key order: QStash flow control may reorder a key's waitlist, a queue may not", async () => {
    // The emulator hands a freed flow-control slot to the LATEST waiter, an order QStash's docs allow ("Token
    // handoff does not guarantee strict ordering").
    const e = await emulator({ flowControlHandoff: "lifo" });
    const dest = await consumer(e, () => 200, 150); // slow enough that later messages wait while one runs
    const qstash = e.client();
    const order = (key: string): number[] =>
      dest.received.filter((r) => r.headers["outbox-key"] === key).map((r) => JSON.parse(r.body).n as number);

    // What the transport did before: each message of the key published once QStash accepted the previous one,
    // with flow control { key, parallelism: 1 }.
    for (let n = 0; n < 6; n++) {
      await qstash.publish({
        url: `${dest.url}/events`,
        body: JSON.stringify({ n }),
        headers: { "Content-Type": "application/json", "Upstash-Forward-Outbox-Key": "fc" },
        flowControl: { key: "outbox-fc", parallelism: 1 },
      });
    }
    await e.idle();
    expect(order("fc")).toHaveLength(6);
    expect(order("fc")).not.toEqual([0, 1, 2, 3, 4, 5]); // here [0, 5, 4, 3, 2, 1]

    // Through the relay and qstashTransport: a FIFO queue per key hash keeps commit order.
    const { storage, outbox } = memoryOutbox();
    const { tx, commit } = storage.begin();
    for (let n = 0; n < 6; n++) await outbox.enqueue(tx, event, { n }, { key: "q" });
    await commit();
    const relay = createRelay({ outbox, transport: qstashTransport(qstash, { destination: `${dest.url}/events` }) });
    for (let i = 0; i < 20 && (await storage.stats()).pending > 0; i++) await relay.drain();
    expect((await storage.stats()).pending).toBe(0);
    await e.idle();
    expect(order("q")).toEqual([0, 1, 2, 3, 4, 5]);
    // The queue really had a waitlist (the consumer is slow): later messages were accepted while earlier ones ran.
    const qMessages = e.messages.filter((m) => m.forwardHeaders["outbox-key"] === "q");
    const firstDelivered = Math.min(...e.deliveries.filter((d) => qMessages.some((m) => m.messageId === d.messageId)).map((d) => d.at));
    expect(qMessages.filter((m) => m.createdAt < firstDelivered).length).toBeGreaterThan(1);
  });

  it("a queue that cannot be created makes its messages retry (never dead), and the next send tries again", async () => {
    const e = await emulator();
    let refuseQueues = true;
    e.intercept = (call) => (refuseQueues && call.path === "/v2/queues" ? { status: 400, body: '{"error":"queue limit reached"}' } : undefined);
    const t = qstashTransport(e.client(), { destination: "https://consumer.example/events" });
    const out = await t.send([msg(0, { key: "customer-7" }), msg(1)], ctx());
    expect(out[0]).toEqual({ status: "retry", error: expect.stringMatching(/creating queue outbox-1: HTTP 400.*queue limit reached/) });
    expect(out[1]).toEqual({ status: "delivered" });
    refuseQueues = false;
    expect(await t.send([msg(2, { key: "customer-7" })], ctx())).toEqual([{ status: "delivered" }]);
    expect(e.messages.at(-1)!.queue).toBe("outbox-1");
  });

  it("maps errors: 429 → retry after the reset, 401/403 → retry, other 4xx → dead, 5xx → retry, network → retry", async () => {
    const e = await emulator();
    const client = e.client();
    const transport = qstashTransport(client, { destination: "https://consumer.example/events" });
    const send = async (n = 1): Promise<readonly DeliveryOutcome[]> => transport.send(Array.from({ length: n }, (_, i) => msg(i)), ctx());

    const resetS = Math.floor(Date.now() / 1_000) + 5;
    e.intercept = () => ({ status: 429, headers: { "Burst-RateLimit-Limit": "100", "Burst-RateLimit-Remaining": "0", "Burst-RateLimit-Reset": String(resetS) }, body: "rate limited" });
    const [burst] = await send();
    expect(burst).toMatchObject({ status: "retry", error: expect.stringMatching(/429/) });
    const wait = (burst as { retryAfterMs: number }).retryAfterMs;
    expect(wait).toBeGreaterThan(3_000);
    expect(wait).toBeLessThanOrEqual(5_000);

    e.intercept = () => ({ status: 429, headers: { "RateLimit-Limit": "1000", "RateLimit-Remaining": "0", "RateLimit-Reset": String(Math.floor(Date.now() / 1_000) + 3_600) } });
    const [daily] = await send();
    expect(daily).toMatchObject({ status: "retry" });
    expect((daily as { retryAfterMs: number }).retryAfterMs).toBeGreaterThan(3_500_000);

    e.intercept = () => ({ status: 400, body: '{"error":"invalid destination"}' });
    expect(await send(1)).toEqual([{ status: "dead", error: expect.stringMatching(/HTTP 400.*invalid destination/) }]);
    e.intercept = () => ({ status: 413, body: "too large" });
    expect((await send(1))[0]).toMatchObject({ status: "dead" });
    e.intercept = () => ({ status: 500, body: "internal" });
    expect(await send(2)).toEqual([
      { status: "retry", error: expect.stringMatching(/HTTP 500/) },
      { status: "retry", error: expect.stringMatching(/HTTP 500/) },
    ]);
    e.intercept = () => ({ status: 503 });
    expect((await send(1))[0]).toMatchObject({ status: "retry" });
    e.intercept = () => ({ status: 403, body: "forbidden" });
    expect((await send(1))[0]).toMatchObject({ status: "retry", error: expect.stringMatching(/HTTP 403/) });
    e.intercept = null;

    // A wrong token (the emulator answers 401) is a configuration problem, not a bad message: retry, never dead.
    const wrongToken = qstashTransport(new Client({ baseUrl: e.url, token: "wrong-token", retry: false, enableTelemetry: false }), { destination: "https://consumer.example/events" });
    expect((await wrongToken.send([msg(1)], ctx()))[0]).toMatchObject({ status: "retry", error: expect.stringMatching(/HTTP 401/) });

    const closed = await serveFetch(() => new Response());
    const deadPort = closed.url;
    await closed.close();
    const offline = qstashTransport(new Client({ baseUrl: deadPort, token: "t", retry: false, enableTelemetry: false }), { destination: "https://consumer.example/events" });
    const [network] = await offline.send([msg(1)], ctx());
    expect(network).toMatchObject({ status: "retry" });
    expect(e.messages).toHaveLength(0);

    // Through the relay: the 429's reset becomes the row's next attempt time.
    const { storage, outbox } = memoryOutbox();
    const { tx, commit } = storage.begin();
    await outbox.enqueue(tx, event, { n: 1 });
    await commit();
    e.intercept = () => ({ status: 429, headers: { "Burst-RateLimit-Reset": String(Math.floor(Date.now() / 1_000) + 5) } });
    expect(await createRelay({ outbox, transport }).drain()).toMatchObject({ retried: 1 });
    expect(await storage.hasDue()).toBe(false);
    const stats = await storage.stats();
    expect(stats.pending).toBe(1);
  });

  it("a batch QStash answers per message: a refused message gets its own outcome and its row is not deleted", async () => {
    const e = await emulator();
    const dest = await consumer(e);
    // QStash refuses message 1 (permanently) and message 3 (transiently) and sends the others.
    e.refuse = (c) => {
      const n = (JSON.parse(c.body) as { n: number }).n;
      return n === 1 ? { error: "invalid message", status: 400 } : n === 3 ? { error: "try again later", status: 503 } : null;
    };
    const { storage, outbox } = memoryOutbox();
    const { tx, commit } = storage.begin();
    const ids: string[] = [];
    for (let n = 0; n < 5; n++) ids.push(await outbox.enqueue(tx, event, { n }));
    await commit();
    const transport = spying(qstashTransport(e.client(), { destination: `${dest.url}/events` }));
    const report = await createRelay({ outbox, transport, batchSize: 10 }).drain();
    expect(report).toMatchObject({ claimed: 5, delivered: 3, dead: 1, retried: 1 });
    // The batch endpoint answered one entry per message, 200, and the refused ones were resent alone once.
    const batch = e.calls.find((c) => c.path === "/v2/batch")!;
    expect((JSON.parse(batch.body) as unknown[]).length).toBe(5);
    expect(e.calls.filter((c) => c.path.startsWith("/v2/publish/"))).toHaveLength(2);
    expect(e.messages.map((m) => JSON.parse(m.body).n).sort()).toEqual([0, 2, 4]);
    const dead = await outbox.deadLetters.list();
    expect(dead.items.map((d) => d.id)).toEqual([ids[1]]);
    expect(dead.items[0]!.lastError).toMatch(/HTTP 400.*invalid message/);
    const stats = await storage.stats();
    expect(stats).toMatchObject({ pending: 1, dead: 1 }); // message 3 waits for its retry
    await e.idle();
    expect(dest.received.map((r) => JSON.parse(r.body).n).sort()).toEqual([0, 2, 4]);

    // Once QStash takes message 3, it is delivered: nothing was lost.
    e.refuse = null;
    await transport.send([transport.sent.find((m) => (m.payload as { n: number }).n === 3)!], ctx()).then((o) => expect(o).toEqual([{ status: "delivered" }]));
    expect(e.messages.map((m) => JSON.parse(m.body).n).sort()).toEqual([0, 2, 3, 4]);
  });

  it("a refused batch entry is classified like a refused single publish (429 → retry after the reset)", async () => {
    const e = await emulator();
    const t = qstashTransport(e.client(), { destination: "https://consumer.example/events" });
    e.refuse = (c) => (JSON.parse(c.body).n === 0 ? { error: "quota" , status: 400 } : null);
    e.intercept = (call) =>
      call.path.startsWith("/v2/publish/") ? { status: 429, headers: { "Burst-RateLimit-Reset": String(Math.floor(Date.now() / 1_000) + 5) }, body: "rate limited" } : undefined;
    const out = await t.send([msg(0), msg(1)], ctx());
    expect(out[0]).toMatchObject({ status: "retry", error: expect.stringMatching(/429/) });
    expect((out[0] as { retryAfterMs: number }).retryAfterMs).toBeGreaterThan(3_000);
    expect(out[1]).toEqual({ status: "delivered" });
  });

  it("a batch refused as a whole is resent one by one, so only the bad message is dead; bad destinations are dead", async () => {
    const e = await emulator();
    const isBad = (body: string): boolean => JSON.parse(body).n === 1;
    e.intercept = (call) => {
      if (call.path === "/v2/batch") {
        const list = JSON.parse(call.body) as Array<{ body: string }>;
        return list.some((m) => isBad(m.body)) ? { status: 400, body: '{"error":"bad message"}' } : undefined;
      }
      return call.path.startsWith("/v2/publish/") && isBad(call.body) ? { status: 400, body: '{"error":"bad message"}' } : undefined;
    };
    const t = qstashTransport(e.client(), { destination: "https://consumer.example/events" });
    const out = await t.send([msg(0), msg(1), msg(2)], ctx());
    expect(out.map((o) => o.status)).toEqual(["delivered", "dead", "delivered"]);
    expect(e.messages.map((m) => JSON.parse(m.body).n).sort()).toEqual([0, 2]);
    const byFn = qstashTransport(e.client(), {
      destination: (m) => {
        const n = (m.payload as { n: number }).n;
        if (n === 10) throw new Error("no route for n=10");
        return n === 11 ? "not a url" : `https://consumer.example/events/${n}`;
      },
    });
    const out2 = await byFn.send([msg(10), msg(11), msg(12)], ctx());
    expect(out2).toEqual([
      { status: "dead", error: expect.stringMatching(/no route for n=10/) },
      { status: "dead", error: expect.stringMatching(/not an absolute http\(s\) URL/) },
      { status: "delivered" },
    ]);
    expect(e.messages.at(-1)!.url).toBe("https://consumer.example/events/12");

    // A header value HTTP cannot carry is a permanent failure of that message alone.
    const out3 = await t.send([msg(20, { headers: { "X-Name": "клиент" } }), msg(21, { headers: { "X-Name": "café" } })], ctx());
    expect(out3).toEqual([{ status: "dead", error: expect.stringMatching(/X-Name/) }, { status: "delivered" }]);
  });

  it("publishes to a URL group: delivered only when every endpoint took it", async () => {
    const e = await emulator();
    const a = await consumer(e), b = await consumer(e);
    e.urlGroups.set("audit", [`${a.url}/a`, `${b.url}/b`]);
    const t = qstashTransport(e.client(), { destination: { urlGroup: "audit" } });
    expect(await t.send([msg(1), msg(2)], ctx())).toEqual([{ status: "delivered" }, { status: "delivered" }]);
    await e.idle();
    expect(a.received).toHaveLength(2);
    expect(b.received).toHaveLength(2);
    expect((await t.send([msg(3)], ctx()))[0]).toMatchObject({ status: "delivered" });
    const missing = qstashTransport(e.client(), { destination: { urlGroup: "nope" } });
    expect((await missing.send([msg(4)], ctx()))[0]).toMatchObject({ status: "dead", error: expect.stringMatching(/404/) });

    // One endpoint refused, the other accepted: dead (a resend would reach the accepting endpoint twice), with
    // both facts in the error; the accepting endpoint has it.
    e.refuse = (c) => (c.url === `${b.url}/b` && JSON.parse(c.body).n === 5 ? "endpoint b refused" : null);
    const [partial] = await t.send([msg(5)], ctx());
    expect(partial).toMatchObject({ status: "dead", error: expect.stringMatching(/accepted for 1 of 2 endpoints, refused for .*\/b: endpoint b refused/) });
    expect(e.messages.filter((m) => JSON.parse(m.body).n === 5).map((m) => m.url)).toEqual([`${a.url}/a`]);

    // Every endpoint refused: resent alone and classified by the status (here transient → retry).
    e.refuse = (c) => (JSON.parse(c.body).n === 6 ? { error: "busy", status: 503 } : null);
    expect((await t.send([msg(6)], ctx()))[0]).toMatchObject({ status: "retry" });
    expect(e.messages.filter((m) => JSON.parse(m.body).n === 6)).toHaveLength(0);
    e.refuse = null;

    // A group without endpoints reaches nobody: dead, not delivered.
    e.urlGroups.set("empty", []);
    const empty = qstashTransport(e.client(), { destination: { urlGroup: "empty" } });
    expect((await empty.send([msg(7)], ctx()))[0]).toMatchObject({ status: "dead", error: expect.stringMatching(/no endpoints/) });
  });

  it("abandons a publish QStash does not answer before the send's signal: retry in time, and the resend is deduplicated", async () => {
    const e = await emulator();
    let slow = true;
    e.intercept = (call) => (slow && call.path === "/v2/batch" ? { delayMs: 1_500 } : undefined);
    const transport = qstashTransport(e.client(), { destination: "https://consumer.example/events" });
    const messages = [msg(1), msg(2), msg(3)];
    const t0 = performance.now();
    const out = await transport.send(messages, ctx(200));
    const took = performance.now() - t0;
    expect(took).toBeLessThan(400);
    for (const o of out) expect(o).toMatchObject({ status: "retry", error: expect.stringMatching(/abandoned/) });

    // Through the relay: the send timeout bounds the drain, the rows come back as retries.
    const { storage, outbox } = memoryOutbox();
    const { tx, commit } = storage.begin();
    await outbox.enqueue(tx, event, { n: 1 });
    await commit();
    const r0 = performance.now();
    const report: DrainReport = await createRelay({ outbox, transport, leaseMs: 2_000, sendTimeoutMs: 250 }).drain({ budgetMs: 1_000 });
    expect(performance.now() - r0).toBeLessThan(1_000);
    expect(report).toMatchObject({ retried: 1, delivered: 0 });

    // QStash eventually accepted the abandoned publish; resending the same messages is deduplicated.
    await e.waitFor(() => e.messages.length === 4, 3_000);
    slow = false;
    expect(await transport.send(messages, ctx())).toEqual(messages.map(() => ({ status: "delivered" })));
    expect(e.messages).toHaveLength(4);

    // The client's own network retries (here 3 × 200 ms against a dead port) cannot hold a send past its signal.
    const closed = await serveFetch(() => new Response());
    await closed.close();
    const retrying = new Client({ baseUrl: closed.url, token: "t", retry: { retries: 3, backoff: () => 200 }, enableTelemetry: false });
    cleanups.push(() => sleep(800)); // let the abandoned request finish its retries before the console is restored
    const a0 = performance.now();
    const [abandoned] = await qstashTransport(retrying, { destination: "https://consumer.example/events" }).send([msg(9)], ctx(150));
    expect(performance.now() - a0).toBeLessThan(350);
    expect(abandoned).toMatchObject({ status: "retry", error: expect.stringMatching(/abandoned/) });
  });

  it("optional options given as undefined take their defaults (exactOptionalPropertyTypes callers)", async () => {
    const e = await emulator();
    const c = e.client();
    const t = qstashTransport(c, { destination: "https://consumer.example/events", maxBatchSize: undefined, retries: undefined, headers: undefined, queues: undefined, queuePrefix: undefined, name: undefined });
    expect(t).toMatchObject({ name: "qstash", maxBatchSize: 100 });
    expect(await t.send([msg(0, { key: "customer-7" })], ctx())).toEqual([{ status: "delivered" }]);
    expect(e.messages.at(-1)!.queue).toBe("outbox-1");
    const n = await qstashNudge(c, { url: "https://app.example/drain", windowMs: undefined, retries: undefined, timeoutMs: undefined, now: undefined });
    expect(n.edge).toBe("leading");
    await qstashFollowUp(c, { url: "https://app.example/drain", retries: undefined, timeoutMs: undefined })({ dedupId: "d-1" });
    expect(await ensureSchedule(c, { url: "https://app.example/drain", cron: "* * * * *", scheduleId: undefined, method: undefined, retries: undefined }))
      .toMatchObject({ status: "created" });
  });

  it("rejects bad options with CONFIG naming the field", async () => {
    const e = await emulator();
    const c = e.client();
    expect(() => qstashTransport(c, { destination: "ftp://x" })).toThrow(/destination/);
    expect(() => qstashTransport(c, { destination: "https://x", maxBatchSize: 0 })).toThrow(/maxBatchSize/);
    expect(() => qstashTransport(c, { destination: "https://x", queuePrefix: "bad prefix!" })).toThrow(/queuePrefix/);
    expect(() => qstashTransport(c, { destination: "https://x", queues: 0 })).toThrow(/queues/);
    expect(() => qstashTransport(c, { destination: "https://x", headers: { "bad header": "x" } })).toThrow(/headers/);
    expect(await codeOf(() => qstashTransport({} as never, { destination: "https://x" }))).toBe("CONFIG");
    expect(await codeOf(qstashNudge(c, { url: "https://x/drain", windowMs: 1_500 }))).toBe("CONFIG");
    expect(await codeOf(ensureSchedule(c, { url: "https://x/drain", cron: "every minute" }))).toBe("CONFIG");
    expect(() => qstashFollowUp(c, { url: "nope" })).toThrow(/url/);
  });
});

/** A relay app behind a real HTTP server, QStash-authenticated, counting drain calls. */
async function relayServer(e: QstashEmulator, options: Partial<Parameters<typeof createRelayApp>[0]> = {}) {
  let handler: ((r: Request) => Response | Promise<Response>) | null = null;
  const server = await serveFetch((r) => handler!(r));
  cleanups.push(() => server.close());
  const drains: number[] = [];
  const { outbox } = memoryOutbox();
  const real = createRelay({ outbox, transport: { name: "none", send: async (ms) => ms.map(() => ({ status: "delivered" as const })) } });
  const parent = new Hono();
  parent.route("/outbox", createRelayApp({
    relay: { drain: (o) => (drains.push(Date.now()), real.drain(o)) },
    auth: { qstash: { verifier: new Receiver({ currentSigningKey: e.currentSigningKey, nextSigningKey: e.nextSigningKey, devMode: false }) } },
    publicUrl: `${server.url}/outbox`,
    ...options,
  }));
  handler = (r) => parent.fetch(r);
  return { url: server.url, drainUrl: `${server.url}/outbox/drain`, drains };
}

describe("ensureSchedule", () => {
  it("called twice makes one schedule; a changed cron updates it; it drives the drain", async () => {
    const e = await emulator();
    const qstash = e.client();
    const relay = await relayServer(e);
    const first = await ensureSchedule(qstash, { url: relay.drainUrl, cron: "* * * * *" });
    expect(first.status).toBe("created");
    expect(first.scheduleId).toMatch(/^edge-outbox-[0-9a-f]{16}$/);
    const second = await ensureSchedule(qstash, { url: relay.drainUrl, cron: "* * * * *" });
    expect(second).toEqual({ scheduleId: first.scheduleId, status: "unchanged" });
    expect(await qstash.schedules.list()).toHaveLength(1);
    const third = await ensureSchedule(qstash, { url: relay.drainUrl, cron: "*/5 * * * *", retries: 1 });
    expect(third).toEqual({ scheduleId: first.scheduleId, status: "updated" });
    const list = await qstash.schedules.list();
    expect(list).toHaveLength(1);
    expect(list[0]).toMatchObject({ scheduleId: first.scheduleId, cron: "*/5 * * * *", destination: relay.drainUrl, method: "POST", retries: 1 });
    expect(e.calls.filter((c) => c.method === "POST" && c.path.startsWith("/v2/schedules/"))).toHaveLength(2);

    e.fireSchedule(first.scheduleId);
    await e.idle();
    expect(relay.drains).toHaveLength(1);
    expect(e.deliveries.at(-1)).toMatchObject({ status: 200, url: relay.drainUrl });

    const other = await ensureSchedule(qstash, { url: `${relay.url}/other/drain`, cron: "* * * * *", scheduleId: "my-drain" });
    expect(other).toEqual({ scheduleId: "my-drain", status: "created" });
    expect(await qstash.schedules.list()).toHaveLength(2);
  });
});

describe("qstashNudge and qstashFollowUp", () => {
  it("the first commit of a quiet window drains at once (leading edge); a burst adds one drain at the window's end (trailing edge)", async () => {
    const e = await emulator();
    const qstash = e.client();
    const relay = await relayServer(e);
    const windowMs = 1_000;
    const nudge = (): Promise<Awaited<ReturnType<typeof qstashNudge>>> => qstashNudge(qstash, { url: relay.drainUrl, windowMs });
    const inWindow = async (from: number, to: number): Promise<void> => {
      while (Date.now() % windowMs < from || Date.now() % windowMs > to) await sleep(2);
    };

    // An isolated commit in the middle of a window: its drain comes at once, not at the window's end.
    await inWindow(300, 400);
    const t0 = Date.now();
    const single = await nudge();
    await e.waitFor(() => relay.drains.length >= 1, 3_000);
    // Before the window's end (≥ 600 ms away), where a window-end-only nudge would deliver it.
    expect(relay.drains[0]!).toBeLessThan((Math.floor(t0 / windowMs) + 1) * windowMs);
    expect(single).toMatchObject({ edge: "leading", deduplicated: false });
    expect(single.deliverAt).toBeGreaterThanOrEqual(t0);
    expect(single.dedupId).toMatch(/^nudge-[0-9a-f]{16}-\d+$/);
    await sleep(windowMs * 2); // a quiet window

    // A burst of 50 concurrent nudges in one window: one drain at once, one more at the window's end.
    await inWindow(50, 150);
    const b0 = Date.now();
    const burst = await Promise.all(Array.from({ length: 50 }, nudge));
    const windowEnd = (Math.floor(b0 / windowMs) + 1) * windowMs;
    expect(burst.filter((r) => r.edge === "leading" && !r.deduplicated)).toHaveLength(1);
    expect(burst.filter((r) => r.edge === "trailing")).toHaveLength(49);
    expect(burst.filter((r) => r.edge === "trailing" && !r.deduplicated)).toHaveLength(1);
    expect(new Set(burst.filter((r) => r.edge === "trailing").map((r) => r.messageId)).size).toBe(1);
    for (const r of burst.filter((x) => x.edge === "trailing")) expect(r.deliverAt).toBe(windowEnd);
    await e.waitFor(() => relay.drains.length >= 3, 3_000);
    expect(relay.drains[1]!).toBeLessThan(windowEnd);
    expect(relay.drains[2]!).toBeGreaterThanOrEqual(windowEnd - 5);
    expect(relay.drains[2]!).toBeLessThanOrEqual(windowEnd + 250);

    // The next window: its leading edge was that trailing drain, so a commit in it waits for the window's end.
    await inWindow(100, 200);
    const next = await nudge();
    expect(next).toMatchObject({ edge: "trailing", deduplicated: false, deliverAt: windowEnd + windowMs });
    await e.waitFor(() => relay.drains.length >= 4, 3_000);
    await sleep(300);
    // 1 + (2 windows with commits + 1): never more than one drain per window plus one.
    expect(relay.drains).toHaveLength(4);
    expect(e.messages.filter((m) => m.url === relay.drainUrl)).toHaveLength(4);
    expect(e.deliveries.every((d) => d.status === 200)).toBe(true);
  });

  it("linger: true: a burst of commits inside a window is delivered well before the window's end, through the emulator", async () => {
    const e = await emulator();
    const qstash = e.client();
    const windowMs = 1_000;
    let handler: ((r: Request) => Response | Promise<Response>) | null = null;
    const server = await serveFetch((r) => handler!(r));
    cleanups.push(() => server.close());
    const drainUrl = `${server.url}/outbox/drain`;
    const { storage, outbox } = memoryOutbox();
    const deliveredAt = new Map<number, number>();
    const real = createRelay({
      outbox,
      transport: { name: "timed", send: async (ms) => ms.map((m) => (deliveredAt.set((m.payload as { n: number }).n, Date.now()), { status: "delivered" as const })) },
    });
    const lingers: Array<number | undefined> = [];
    const parent = new Hono();
    parent.route("/outbox", createRelayApp({
      relay: { drain: (o) => (lingers.push(o?.lingerMs), real.drain(o)) },
      auth: { qstash: { verifier: new Receiver({ currentSigningKey: e.currentSigningKey, nextSigningKey: e.nextSigningKey, devMode: false }) } },
      publicUrl: `${server.url}/outbox`,
      budgetMs: 3_000,
      maxLingerMs: windowMs,
    }));
    handler = (r) => parent.fetch(r);
    const committedAt = new Map<number, number>();
    const commitAndNudge = async (n: number): Promise<Awaited<ReturnType<typeof qstashNudge>>> => {
      const h = storage.begin();
      await outbox.enqueue(h.tx, event, { n });
      await h.commit();
      committedAt.set(n, Date.now());
      return await qstashNudge(qstash, { url: drainUrl, windowMs, linger: true });
    };
    while (Date.now() % windowMs < 50 || Date.now() % windowMs > 150) await sleep(2);
    const windowEnd = (Math.floor(Date.now() / windowMs) + 1) * windowMs;

    // Commits ~10 ms apart (plus the nudge's publishes) until 400 ms before the window's end: without the linger
    // all but the first would wait for the window's end.
    const results: Array<Awaited<ReturnType<typeof qstashNudge>>> = [];
    while (results.length < 5 || Date.now() < windowEnd - 400) {
      results.push(await commitAndNudge(results.length));
      await sleep(10);
    }
    const burst = results.length;
    expect(Date.now()).toBeLessThan(windowEnd); // the burst stayed inside the window
    await e.waitFor(() => deliveredAt.size === burst, 3_000);
    const latencies = [...committedAt.values()].map((t, n) => deliveredAt.get(n)! - t).sort((a, b) => a - b);
    console.log(`[qstash linger] ${burst} commits in one window: commit→delivery p50 ${latencies[Math.floor(burst / 2)]} ms, max ${latencies.at(-1)} ms`);
    expect(latencies[Math.floor(burst / 2)]!).toBeLessThan(windowMs / 2); // median: the poll interval plus a drain, not half a window
    expect(Math.max(...[...deliveredAt.values()])).toBeLessThan(windowEnd); // all of them before the trailing edge
    expect(results[0]).toMatchObject({ edge: "leading", deduplicated: false });
    expect(results.slice(1).every((r) => r.edge === "trailing" && r.deliverAt === windowEnd)).toBe(true);

    // The trailing edge comes at the window's end and lingers through the next window: a commit there is quick too.
    while (Date.now() < windowEnd + 300) await sleep(5);
    const next = await commitAndNudge(burst);
    expect(next).toMatchObject({ edge: "trailing", deliverAt: windowEnd + windowMs }); // its window's drain was already requested
    await e.waitFor(() => deliveredAt.size === burst + 1, 3_000);
    expect(deliveredAt.get(burst)! - committedAt.get(burst)!).toBeLessThan(windowMs / 2);

    await e.idle(5_000);
    const calls = e.messages.filter((m) => m.url.startsWith(drainUrl));
    // Still one drain call per window plus one: leading edge, trailing edge (next window), the next trailing edge.
    expect(calls).toHaveLength(3);
    expect(calls.map((m) => new URL(m.url).searchParams.get("linger"))).toEqual([expect.stringMatching(/^\d+$/), "1000", "1000"]);
    expect(Number(new URL(calls[0]!.url).searchParams.get("linger"))).toBeLessThanOrEqual(windowEnd - committedAt.get(0)!);
    expect(e.deliveries.filter((d) => d.url.startsWith(drainUrl)).every((d) => d.status === 200)).toBe(true);
    expect(lingers).toEqual([expect.any(Number), 1_000, 1_000]);
    expect(storage.count().pending).toBe(0);
  }, 20_000);

  it("linger: true asks for ?linger= on the drain URL, keeps the URL's own query and the deduplication ids of the plain nudge", async () => {
    const published: QstashPublishRequest[] = [];
    let seen = new Set<string>();
    const client = {
      publish: async (r: QstashPublishRequest) => {
        published.push(r);
        const deduplicated = seen.has(r.deduplicationId!);
        seen.add(r.deduplicationId!);
        return { messageId: `m${published.length}`, ...(deduplicated ? { deduplicated: true } : {}) };
      },
    };
    const at = 7_250; // 750 ms before the end of window 7
    const lead = await qstashNudge(client, { url: "https://app.example/outbox/drain?tenant=a", linger: true, now: () => at });
    const trail = await qstashNudge(client, { url: "https://app.example/outbox/drain?tenant=a", linger: true, now: () => at });
    expect(lead).toMatchObject({ edge: "leading", deliverAt: at });
    expect(trail).toMatchObject({ edge: "trailing", deliverAt: 8_000 });
    expect(published.map((r) => r.url)).toEqual([
      "https://app.example/outbox/drain?tenant=a&linger=750",
      "https://app.example/outbox/drain?tenant=a&linger=750",
      "https://app.example/outbox/drain?tenant=a&linger=1000",
    ]);
    seen = new Set();
    const plainLead = await qstashNudge(client, { url: "https://app.example/outbox/drain?tenant=a", now: () => at });
    expect(plainLead.dedupId).toBe(lead.dedupId);
    expect(published.at(-1)!.url).toBe("https://app.example/outbox/drain?tenant=a");
    expect(await codeOf(qstashNudge(client, { url: "https://x/drain", linger: "yes" as unknown as boolean }))).toBe("CONFIG");
  });

  it("qstashFollowUp publishes one drain call per dedup id; the app's follow-up chain reaches the relay", async () => {
    const e = await emulator();
    const qstash = e.client();
    const relay = await relayServer(e);
    const followUp = qstashFollowUp(qstash, { url: relay.drainUrl, retries: 0 });
    await followUp({ dedupId: "drain-abc" });
    await followUp({ dedupId: "drain-abc" });
    expect(e.messages).toHaveLength(1);
    expect(e.messages[0]).toMatchObject({ dedupId: "drain-abc", retries: 0, url: relay.drainUrl });
    await e.idle();
    expect(relay.drains).toHaveLength(1);
    e.intercept = () => ({ status: 500 });
    expect(await codeOf(followUp({ dedupId: "drain-def" }))).toBe("TRANSPORT");
  });
});

describe("end to end through the emulator", () => {
  it("commit → qstashNudge → /drain → qstashTransport → signed delivery to the consumer: 200 orders, p50/p99 latency", async () => {
    const e = await emulator();
    const qstash = e.client();
    const dest = await consumer(e);

    const client = createClient({ url: ":memory:" });
    cleanups.push(() => client.close());
    await client.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, total REAL NOT NULL)");
    const storage = libsqlStorage(client);
    await storage.migrate();
    const orderCreated = defineTopic("order.created", v.object({ id: v.string(), total: v.number() }));
    const outbox = createOutbox({ storage, topics: [orderCreated] });

    let handler: ((r: Request) => Response | Promise<Response>) | null = null;
    const server = await serveFetch((r) => handler!(r));
    cleanups.push(() => server.close());
    const drainUrl = `${server.url}/outbox/drain`;
    const relay = createRelay({
      outbox,
      transport: qstashTransport(qstash, { destination: `${dest.url}/orders` }),
      batchSize: 100,
      concurrency: 8,
      leaseMs: 10_000,
      sendTimeoutMs: 3_000,
    });
    const parent = new Hono();
    parent.route("/outbox", createRelayApp({
      relay,
      outbox,
      auth: { qstash: { verifier: new Receiver({ currentSigningKey: e.currentSigningKey, nextSigningKey: e.nextSigningKey, devMode: false }) } },
      publicUrl: `${server.url}/outbox`,
      budgetMs: 5_000,
      followUp: qstashFollowUp(qstash, { url: drainUrl }),
    }));
    handler = (r) => parent.fetch(r);

    const windowMs = 1_000;
    const committed = new Map<string, number>();
    const windowEnd = new Map<string, number>();
    const t0 = performance.now();
    for (let i = 0; i < 200; i++) {
      const id = `o${i}`;
      await client.batch([
        { sql: "INSERT INTO orders (id, total) VALUES (?, ?)", args: [id, i] },
        outbox.statement(orderCreated, { id, total: i }),
      ], "write");
      committed.set(id, performance.now());
      windowEnd.set(id, (await qstashNudge(qstash, { url: drainUrl, windowMs })).deliverAt);
      await sleep(5 + Math.random() * 10);
    }
    const commitSpanMs = performance.now() - t0;
    await e.waitFor(() => dest.received.length >= 200, 20_000);
    await sleep(200);

    expect(dest.rejected()).toBe(0);
    const ids = dest.received.map((r) => (JSON.parse(r.body) as { id: string }).id);
    expect(new Set(ids).size).toBe(200);
    expect(dest.received).toHaveLength(200);
    const latencies = dest.received.map((r) => r.at - committed.get((JSON.parse(r.body) as { id: string }).id)!).sort((a, b) => a - b);
    const pct = (p: number): number => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))]!;
    // The pipeline alone: from the window's end (when the nudge is due) to the consumer.
    const pipeline = dest.received.map((r) => r.epoch - windowEnd.get((JSON.parse(r.body) as { id: string }).id)!).sort((a, b) => a - b);
    const pipe = (p: number): number => pipeline[Math.min(pipeline.length - 1, Math.floor(p * pipeline.length))]!;
    const drainCalls = e.deliveries.filter((d) => d.url === drainUrl);
    const nudges = e.messages.filter((m) => m.url === drainUrl && m.dedupId?.startsWith("nudge-")).length;
    console.log(
      `[qstash e2e] 200 commits over ${Math.round(commitSpanMs)} ms, window ${windowMs} ms: commit→consumer ` +
        `p50 ${Math.round(pct(0.5))} ms, p99 ${Math.round(pct(0.99))} ms, max ${Math.round(latencies.at(-1)!)} ms ` +
        `(window end→consumer p50 ${pipe(0.5)} ms, p99 ${pipe(0.99)} ms); ` +
        `${nudges} nudge messages for 200 nudges, ${drainCalls.length} drain calls`,
    );
    expect(drainCalls.every((d) => d.status === 200)).toBe(true);
    // k windows touched (at most ceil(span) + 1 of them) make at most k + 1 drain calls.
    expect(nudges).toBeLessThanOrEqual(Math.ceil(commitSpanMs / windowMs) + 2);
    expect(pct(0.99)).toBeLessThan(windowMs + 1_500); // at most one window plus the drain and two hops
    expect((await storage.stats()).pending).toBe(0);
    const { rows } = await client.execute("SELECT count(*) AS n FROM orders");
    expect(Number(rows[0]!["n"])).toBe(200);
  }, 60_000);
});

describe("the QStash emulator (test fixture)", () => {
  it("a client that goes away mid-request is dropped unseen: no unhandled rejection, nothing published, it still answers", async () => {
    const e = await emulator();
    const unhandled: unknown[] = [];
    const onUnhandled = (x: unknown): void => void unhandled.push(x);
    process.on("unhandledRejection", onUnhandled);
    try {
      const url = new URL(e.url);
      const socket = connect(Number(url.port), url.hostname);
      socket.on("error", () => {});
      await new Promise((resolve) => socket.once("connect", resolve));
      socket.write(
        `POST /v2/publish/https://consumer.example/events HTTP/1.1\r\nHost: ${url.host}\r\n` +
          `Authorization: Bearer ${e.token}\r\nContent-Length: 100\r\n\r\n{"n":`,
      );
      await sleep(50); // the emulator has the headers and is reading the body
      socket.destroy(); // before the fix: readBody rejected ("aborted", ECONNRESET) and nobody caught it
      await sleep(100);
    } finally {
      process.off("unhandledRejection", onUnhandled);
    }
    expect(unhandled.map(String)).toEqual([]);
    expect(e.calls).toHaveLength(0);
    expect(e.messages).toHaveLength(0);
    const { messageId } = await e.client().publish({ url: "https://consumer.example/events", body: "{}" });
    expect(e.messages.map((m) => m.messageId)).toEqual([messageId]);
  });
});
