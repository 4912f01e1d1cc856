import { Receiver as QstashSdkReceiver } from "@upstash/qstash";
import { Hono } from "hono";
import * as v from "valibot";
import { describe, expect, it } from "vitest";
import { createInbox, createOutbox, createRelay, defineTopic, isOutboxError } from "../mod.ts";
import { signWebhook, webhookReceiver, webhookTransport } from "../adapters/http/mod.ts";
import { memoryInbox, memoryStorage } from "../adapters/memory/mod.ts";
import { qstashReceiver, qstashTransport } from "../adapters/qstash/mod.ts";
import { serveFetch } from "./fixtures/fetch-server.ts";
import { signQstashJwt, startQstashEmulator } from "./fixtures/qstash-emulator.ts";
import { caught } from "./helpers.ts";

const orderCreated = defineTopic("order.created", v.object({ id: v.string(), total: v.number() }));
const orderPaid = defineTopic("order.paid", v.object({ id: v.string() }));
const CURRENT = "sig_current_test_key";
const NEXT = "sig_next_test_key";
const URL_ = "https://consumer.example/events";
const sdkReceiver = new QstashSdkReceiver({ currentSigningKey: CURRENT, nextSigningKey: NEXT });

/** A consumer on the memory inbox: `effects` counts each message's applied effects (committed only). */
function consumer(options: { fail?: () => boolean } = {}) {
  const storage = memoryInbox();
  const inbox = createInbox({ storage, consumer: "billing" });
  const effects = new Map<string, number>();
  const seen: { id: string; topic: string; payload: unknown; stale: boolean | undefined; gap: boolean | undefined }[] = [];
  const handler = async (
    m: { id: string; topic: string; payload: unknown },
    { tx, order }: { tx: import("../adapters/memory/mod.ts").MemoryInboxTransaction; order: { stale: boolean; gap: boolean } | null },
  ): Promise<void> => {
    if (options.fail?.()) throw new Error("handler failed");
    seen.push({ id: m.id, topic: m.topic, payload: m.payload, stale: order?.stale, gap: order?.gap });
    tx.onCommit(() => effects.set(m.id, (effects.get(m.id) ?? 0) + 1));
  };
  return { storage, inbox, effects, seen, handler };
}

function qstashRequest(
  body: string,
  options: { headers?: Record<string, string>; key?: string; url?: string; signUrl?: string; signBody?: string; now?: number; expiresInS?: number } = {},
): Request {
  const signature = signQstashJwt(options.key ?? CURRENT, {
    url: options.signUrl ?? options.url ?? URL_,
    body: options.signBody ?? body,
    ...(options.now !== undefined ? { now: options.now } : {}),
    ...(options.expiresInS !== undefined ? { expiresInS: options.expiresInS } : {}),
  });
  return new Request(options.url ?? URL_, {
    method: "POST",
    headers: { "content-type": "application/json", "upstash-signature": signature, "upstash-message-id": "msg_x", ...options.headers },
    body,
  });
}

describe("qstashReceiver", () => {
  it("verifies with the SDK Receiver, processes once, acknowledges redeliveries as duplicates", async () => {
    const c = consumer();
    const receiver = qstashReceiver({ verify: sdkReceiver, inbox: c.inbox, topics: [orderCreated, orderPaid], handler: c.handler });
    const id = "0193b7e2-4c1a-7d3e-9f10-2b3c4d5e6f70";
    const send = () =>
      receiver.fetch(qstashRequest(JSON.stringify({ id: "o1", total: 5 }), { headers: { "outbox-message-id": id, "outbox-topic": "order.created" } }));
    const first = await send();
    expect(first.status).toBe(200);
    expect(await first.json()).toEqual({ status: "processed", id });
    const again = await send();
    expect(again.status).toBe(200);
    expect(await again.json()).toEqual({ status: "duplicate", id });
    expect(c.effects.get(id)).toBe(1);
    expect(c.seen).toEqual([{ id, topic: "order.created", payload: { id: "o1", total: 5 }, stale: undefined, gap: undefined }]);
  });

  it("forged, expired, wrong-URL, tampered and missing signatures → 401, nothing recorded", async () => {
    const c = consumer();
    const receiver = qstashReceiver({ verify: sdkReceiver, inbox: c.inbox, topics: [orderCreated], handler: c.handler });
    const body = JSON.stringify({ id: "o1", total: 5 });
    const headers = { "outbox-message-id": "m-1", "outbox-topic": "order.created" };
    const cases: [string, Request][] = [
      ["forged (unknown key)", qstashRequest(body, { headers, key: "sig_attacker" })],
      ["expired", qstashRequest(body, { headers, now: Date.now() - 600_000, expiresInS: 300 })],
      ["wrong URL", qstashRequest(body, { headers, signUrl: "https://elsewhere.example/events" })],
      ["tampered body", qstashRequest(JSON.stringify({ id: "o1", total: 500 }), { headers, signBody: body })],
      ["garbage signature", new Request(URL_, { method: "POST", headers: { ...headers, "upstash-signature": "not.a.jwt" }, body })],
      ["no signature", new Request(URL_, { method: "POST", headers, body })],
    ];
    for (const [name, request] of cases) {
      const res = await receiver.fetch(request);
      expect({ name, status: res.status }).toEqual({ name, status: 401 });
    }
    expect(c.storage.size()).toBe(0);
    expect(c.effects.size).toBe(0);
    // The next signing key is accepted too (key rotation).
    expect((await receiver.fetch(qstashRequest(body, { headers, key: NEXT }))).status).toBe(200);
  });

  it("invalid payload, unknown topic, non-JSON body → 489 with Upstash-NonRetryable-Error: true, nothing recorded", async () => {
    const c = consumer();
    const receiver = qstashReceiver({ verify: sdkReceiver, inbox: c.inbox, topics: [orderCreated, orderPaid], handler: c.handler });
    const cases: [string, string, Record<string, string>][] = [
      ["schema", JSON.stringify({ id: "o1", total: "five" }), { "outbox-topic": "order.created" }],
      ["unknown topic", JSON.stringify({ id: "o1" }), { "outbox-topic": "order.refunded" }],
      ["no topic with two topics", JSON.stringify({ id: "o1" }), {}],
      ["not JSON", "{nope", { "outbox-topic": "order.paid" }],
      ["bad key encoding", JSON.stringify({ id: "o1" }), { "outbox-topic": "order.paid", "outbox-key": "%E0%A4%A" }],
    ];
    for (const [name, body, h] of cases) {
      const res = await receiver.fetch(qstashRequest(body, { headers: { "outbox-message-id": `m-${name}`, ...h } }));
      expect({ name, status: res.status, header: res.headers.get("Upstash-NonRetryable-Error") }).toEqual({ name, status: 489, header: "true" });
    }
    expect(c.storage.size()).toBe(0);
    expect(c.seen).toHaveLength(0);
  });

  it("a handler error → 500 and nothing recorded; QStash's retry then processes it once", async () => {
    let failures = 1;
    const c = consumer({ fail: () => failures-- > 0 });
    const receiver = qstashReceiver({ verify: sdkReceiver, inbox: c.inbox, topics: [orderPaid], handler: c.handler });
    const send = () => receiver.fetch(qstashRequest(JSON.stringify({ id: "o9" }), { headers: { "outbox-message-id": "m-9" } }));
    const res = await send();
    expect(res.status).toBe(500);
    expect(res.headers.get("upstash-nonretryable-error")).toBeNull();
    expect(await c.inbox.isProcessed("m-9")).toBe(false);
    expect((await send()).status).toBe(200); // the only topic is used when the header is absent
    expect(c.effects.get("m-9")).toBe(1);
  });

  it("falls back to Upstash-Message-Id; caps the body (413) before verifying; mounts on Hono with the public URL", async () => {
    const c = consumer();
    const receiver = qstashReceiver({
      verify: (r) => sdkReceiver.verify(r),
      url: (request) => `https://consumer.example${new URL(request.url).pathname}`,
      inbox: c.inbox,
      topics: [orderPaid],
      handler: c.handler,
      maxBodyBytes: 64,
    });
    const app = new Hono();
    app.post("/events", receiver);
    const body = JSON.stringify({ id: "o1" });
    const signature = signQstashJwt(CURRENT, { url: URL_, body });
    const res = await app.request("http://10.0.0.7:8080/events", { method: "POST", headers: { "upstash-signature": signature, "upstash-message-id": "msg_abc" }, body });
    expect(res.status).toBe(200);
    expect(await c.inbox.isProcessed("msg_abc")).toBe(true);
    const big = JSON.stringify({ id: "x".repeat(100) });
    const tooBig = await receiver.fetch(qstashRequest(big, { headers: { "outbox-message-id": "m-big" } }));
    expect(tooBig.status).toBe(413);
    expect(await c.inbox.isProcessed("m-big")).toBe(false);
    expect((await receiver.fetch(new Request(URL_))).status).toBe(405);
  });

  it("bad options are CONFIG", async () => {
    const c = consumer();
    const base = { verify: sdkReceiver, inbox: c.inbox, topics: [orderPaid], handler: c.handler };
    for (const bad of [{ verify: 5 }, { topics: [] }, { inbox: {} }, { handler: null }, { url: "/relative" }, { maxBodyBytes: 0 }, { order: { strict: { maxHolds: -1 } } }]) {
      expect(isOutboxError(await caught(() => qstashReceiver({ ...base, ...bad } as never)), "CONFIG")).toBe(true);
    }
  });

  it("ordering: a late message is flagged stale (or skipped); strict holds a gap with 503 + Retry-After, then gives up after maxHolds", async () => {
    const c = consumer();
    const receiver = qstashReceiver({
      verify: sdkReceiver,
      inbox: c.inbox,
      topics: [orderPaid],
      handler: c.handler,
      order: { strict: { maxHolds: 2, retryAfterSeconds: 7 } },
    });
    const send = (id: string, seq: number, extra: Record<string, string> = {}) =>
      receiver.fetch(qstashRequest(JSON.stringify({ id }), { headers: { "outbox-message-id": id, "outbox-key": "cust%2F7", "outbox-seq": String(seq), ...extra } }));
    expect((await send("b", 20)).status).toBe(200);
    expect((await send("a", 10)).status).toBe(200);
    expect(c.seen.map((s) => [s.id, s.stale])).toEqual([["b", false], ["a", true]]);
    const held = await send("d", 40, { "outbox-prev-seq": "30" });
    expect(held.status).toBe(503);
    expect(held.headers.get("retry-after")).toBe("7");
    expect(await c.inbox.isProcessed("d")).toBe(false);
    expect((await send("d", 40, { "outbox-prev-seq": "30", "upstash-retried": "1" })).status).toBe(503);
    const forced = await send("d", 40, { "outbox-prev-seq": "30", "upstash-retried": "2" });
    expect(forced.status).toBe(200);
    expect(c.seen.at(-1)).toMatchObject({ id: "d", gap: true });

    const skipping = consumer();
    const r2 = qstashReceiver({ verify: sdkReceiver, inbox: skipping.inbox, topics: [orderPaid], handler: skipping.handler, order: { stale: "skip" } });
    const s2 = (id: string, seq: number) =>
      r2.fetch(qstashRequest(JSON.stringify({ id }), { headers: { "outbox-message-id": id, "outbox-key": "k", "outbox-seq": String(seq) } }));
    expect((await s2("late-b", 5)).status).toBe(200);
    expect((await s2("late-a", 3)).status).toBe(200);
    expect(skipping.seen.map((s) => s.id)).toEqual(["late-b"]);
    expect(await skipping.inbox.isProcessed("late-a")).toBe(true); // recorded: its redelivery is a duplicate
  });

  it("end to end: qstashTransport → QStash emulator → qstashReceiver, with Outbox-Seq for keyed messages", async () => {
    const emulator = await startQstashEmulator();
    const c = consumer();
    const server = await serveFetch((request) => receiver.fetch(request));
    const receiver = qstashReceiver({
      verify: new QstashSdkReceiver({ currentSigningKey: emulator.currentSigningKey, nextSigningKey: emulator.nextSigningKey }),
      inbox: c.inbox,
      topics: [orderCreated],
      handler: c.handler,
    });
    try {
      const storage = memoryStorage();
      const outbox = createOutbox({ storage, topics: [orderCreated] });
      const { tx, commit } = storage.begin();
      for (let i = 0; i < 6; i++) await outbox.enqueue(tx, orderCreated, { id: `o${i}`, total: i }, { key: i % 2 ? "k1" : null });
      await commit();
      const relay = createRelay({ outbox, transport: qstashTransport(emulator.client(), { destination: `${server.url}/events` }) });
      const report = await relay.drain();
      expect(report.delivered).toBeGreaterThan(0);
      while ((await relay.drain()).claimed > 0);
      await emulator.idle(10_000);
      expect([...c.effects.values()]).toEqual([1, 1, 1, 1, 1, 1]);
      const keyed = emulator.deliveries.filter((d) => d.headers["outbox-key"] === "k1");
      expect(keyed).toHaveLength(3);
      expect(keyed.every((d) => /^\d+$/.test(d.headers["outbox-seq"] ?? ""))).toBe(true);
      expect(emulator.deliveries.filter((d) => d.headers["outbox-key"] === undefined).every((d) => d.headers["outbox-seq"] === undefined)).toBe(true);
    } finally {
      await server.close();
      await emulator.close();
    }
  });
});

describe("webhookReceiver", () => {
  const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
  async function hook(body: string, options: { id?: string; secret?: string; at?: number; signBody?: string; headers?: Record<string, string> } = {}): Promise<Request> {
    const id = options.id ?? "0193b7e2-4c1a-7d3e-9f10-2b3c4d5e6f70";
    const ts = Math.floor((options.at ?? Date.now()) / 1000);
    const signature = await signWebhook(options.secret ?? secret, id, ts, options.signBody ?? body);
    return new Request("https://consumer.example/hooks", {
      method: "POST",
      headers: { "webhook-id": id, "webhook-timestamp": String(ts), "webhook-signature": signature, "outbox-topic": "order.created", ...options.headers },
      body,
    });
  }

  it("processes once; redelivery is a duplicate; forged, expired and tampered → 401 with nothing recorded", async () => {
    const c = consumer();
    const receiver = webhookReceiver({ secret, inbox: c.inbox, topics: [orderCreated], handler: c.handler });
    const body = JSON.stringify({ id: "o1", total: 1 });
    expect((await receiver.fetch(await hook(body))).status).toBe(200);
    const dup = await receiver.fetch(await hook(body));
    expect(await dup.json()).toMatchObject({ status: "duplicate" });
    for (const [name, request] of [
      ["forged", await hook(body, { id: "x1", secret: "whsec_c2VjcmV0LW9mLWFuLWF0dGFja2Vy" })],
      ["expired", await hook(body, { id: "x2", at: Date.now() - 3_600_000 })],
      ["tampered", await hook(JSON.stringify({ id: "o1", total: 999 }), { id: "x3", signBody: body })],
    ] as const) {
      const res = await receiver.fetch(request);
      expect({ name, status: res.status }).toEqual({ name, status: 401 });
    }
    expect(c.storage.size()).toBe(1);
    expect(c.effects.get("0193b7e2-4c1a-7d3e-9f10-2b3c4d5e6f70")).toBe(1);
  });

  it("invalid payload or topic → 422 (the sender dead-letters it); handler error → 500; too large → 413", async () => {
    let fail = true;
    const c = consumer({ fail: () => fail });
    const receiver = webhookReceiver({ secret, inbox: c.inbox, topics: [orderCreated, orderPaid], handler: c.handler, maxBodyBytes: 100 });
    expect((await receiver.fetch(await hook(JSON.stringify({ id: 1 }), { id: "v1" }))).status).toBe(422);
    expect((await receiver.fetch(await hook("{nope", { id: "v2" }))).status).toBe(422);
    expect((await receiver.fetch(await hook("{}", { id: "v3", headers: { "outbox-topic": "nope" } }))).status).toBe(422);
    expect((await receiver.fetch(await hook(JSON.stringify({ id: "x".repeat(200), total: 1 }), { id: "v4" }))).status).toBe(413);
    expect((await receiver.fetch(await hook(JSON.stringify({ id: "o", total: 1 }), { id: "v5" }))).status).toBe(500);
    expect(c.storage.size()).toBe(0);
    fail = false;
    expect((await receiver.fetch(await hook(JSON.stringify({ id: "o", total: 1 }), { id: "v5" }))).status).toBe(200);
  });

  it("webhookTransport sends Outbox-Seq / Outbox-Prev-Seq of claimed keyed messages; strict order holds a gap (503), then processes", async () => {
    const c = consumer();
    const receiver = webhookReceiver({
      secret,
      inbox: c.inbox,
      topics: [orderPaid],
      handler: c.handler,
      order: { strict: { maxHolds: 1, retryAfterSeconds: 2 } },
    });
    const sent: Headers[] = [];
    const transport = webhookTransport({
      url: "https://consumer.example/hooks",
      secret,
      fetch: (url, init) => {
        sent.push(new Headers(init.headers));
        return receiver.fetch(new Request(url, init));
      },
    });
    const claimed = (id: string, key: string | null, seq: number, prevSeq: number | null, attempts = 1) => ({
      id,
      topic: "order.paid",
      key,
      payload: { id },
      body: JSON.stringify({ id }),
      headers: {},
      createdAt: Date.now(),
      attempts,
      lastError: null,
      seq,
      ...(prevSeq === null ? {} : { prevSeq }),
    });
    const signal = new AbortController().signal;
    expect(await transport.send([claimed("m1", "k", 10, null)], { signal })).toEqual([{ status: "delivered" }]);
    expect(sent[0]!.get("outbox-seq")).toBe("10");
    expect(sent[0]!.get("outbox-prev-seq")).toBeNull();
    // m3 declares predecessor 20, which this consumer has not processed (its position is 10): held, retried later.
    const [held] = await transport.send([claimed("m3", "k", 30, 20)], { signal });
    expect(held).toMatchObject({ status: "retry", retryAfterMs: 2_000 });
    expect(sent[1]!.get("outbox-prev-seq")).toBe("20");
    expect(await c.inbox.isProcessed("m3")).toBe(false);
    // The predecessor arrives: m3 goes through on its next attempt.
    expect(await transport.send([claimed("m2", "k", 20, 10)], { signal })).toEqual([{ status: "delivered" }]);
    expect(await transport.send([claimed("m3", "k", 30, 20, 2)], { signal })).toEqual([{ status: "delivered" }]);
    // A predecessor that never comes (dead-lettered) blocks at most maxHolds attempts.
    expect((await transport.send([claimed("m5", "k", 50, 40)], { signal }))[0]!.status).toBe("retry");
    expect(await transport.send([claimed("m5", "k", 50, 40, 2)], { signal })).toEqual([{ status: "delivered" }]);
    expect(c.seen.map((x) => [x.id, x.gap])).toEqual([["m1", false], ["m2", false], ["m3", false], ["m5", true]]);
    // Keyless messages carry no sequence headers.
    await transport.send([claimed("m9", null, 90, 80)], { signal });
    expect(sent.at(-1)!.get("outbox-seq")).toBeNull();
  });

  it("end to end with webhookTransport: statuses drive the relay (processed → delivered, 422 → dead)", async () => {
    const c = consumer();
    const receiver = webhookReceiver({ secret, inbox: c.inbox, topics: [orderCreated], handler: c.handler });
    const server = await serveFetch((r) => receiver.fetch(r));
    try {
      const storage = memoryStorage();
      const outbox = createOutbox({ storage });
      const { tx, commit } = storage.begin();
      await outbox.enqueue(tx, "order.created", { id: "o1", total: 2 }, { key: "k" });
      await outbox.enqueue(tx, "order.created", { id: "o2", total: "bad" }, { key: "k2" });
      await commit();
      const relay = createRelay({ outbox, transport: webhookTransport({ url: `${server.url}/hooks`, secret }) });
      const report = await relay.drain();
      expect(report.delivered).toBe(1);
      expect(report.dead).toBe(1);
      expect([...c.effects.values()]).toEqual([1]);
    } finally {
      await server.close();
    }
  });
});
