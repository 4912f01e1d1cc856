/**
 * The Standard Webhooks transport and verifier against a real local HTTP server (node:http on 127.0.0.1), checked
 * against the `standardwebhooks` package in both directions.
 */
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createNetServer } from "node:net";
import { Webhook } from "standardwebhooks";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createRelay, type DeliveryOutcome, isOutboxError, type OutboxMessage, type Transport, uuidv7 } from "../mod.ts";
import { signWebhook, verifyWebhook, webhookTransport, type WebhookTransportOptions } from "../adapters/http/mod.ts";
import { caught, codeOf, event, memoryOutbox, sleep } from "./helpers.ts";

const newSecret = (): string => `whsec_${randomBytes(24).toString("base64")}`;
const secret = newSecret();

interface Received {
  method: string;
  url: string;
  headers: Record<string, string>;
  body: string;
  at: number;
  closedAt?: number;
}

let server: Server;
let base: string;
let received: Received[] = [];
/** What the server does with each request (after reading its body); respond 204 by default. */
let respond: (req: IncomingMessage, res: ServerResponse, r: Received) => void;

beforeAll(async () => {
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const headers: Record<string, string> = {};
      for (const [k, val] of Object.entries(req.headers)) if (typeof val === "string") headers[k] = val;
      const r: Received = { method: req.method!, url: req.url!, headers, body: Buffer.concat(chunks).toString("utf8"), at: performance.now() };
      received.push(r);
      res.on("close", () => (r.closedAt = performance.now()));
      respond(req, res, r);
    });
  });
  server.on("connection", (s) => s.unref());
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  server.unref();
  base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});
afterAll(async () => {
  await new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
});
beforeEach(() => {
  received = [];
  respond = (_req, res) => res.writeHead(204).end();
});

const message = (over: Partial<OutboxMessage> = {}): OutboxMessage => ({
  id: uuidv7(),
  topic: "order.created",
  key: null,
  payload: { n: 1 },
  body: '{"n":1}',
  headers: {},
  createdAt: Date.now(),
  attempts: 1,
  lastError: null,
  ...over,
});

const transportTo = (path = "/hook", extra: Partial<WebhookTransportOptions> = {}): Transport =>
  webhookTransport({ url: `${base}${path}`, secret, ...extra });

async function sendOne(transport: Transport, m: OutboxMessage = message(), signal = new AbortController().signal): Promise<DeliveryOutcome> {
  const [outcome] = await transport.send([m], { signal });
  return outcome!;
}

async function closedPort(): Promise<number> {
  const s = createNetServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const { port } = s.address() as { port: number };
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

describe("webhookTransport: delivery", () => {
  it("posts each message's raw JSON with Standard Webhooks headers, verifiable by the standardwebhooks package", async () => {
    const { storage, outbox } = memoryOutbox();
    const { tx, commit } = storage.begin();
    const ids = [
      await outbox.enqueue(tx, event, { n: 1 }, { key: "customer 7/é", headers: { "x-trace": "t-1" } }),
      await outbox.enqueue(tx, event, { n: 2 }),
    ];
    await commit();
    const transport = webhookTransport({ url: `${base}/hook`, secret, headers: { "x-static": "s", "x-trace": "overridden" } });
    const report = await createRelay({ outbox, transport }).drain();
    expect(report).toMatchObject({ claimed: 2, delivered: 2, retried: 0, dead: 0 });
    expect(received.map((r) => r.headers["webhook-id"]).sort()).toEqual([...ids].sort());
    const wh = new Webhook(secret);
    const now = Math.floor(Date.now() / 1000);
    for (const r of received) {
      expect(r.method).toBe("POST");
      expect(r.url).toBe("/hook");
      expect(r.headers["content-type"]).toBe("application/json");
      expect(Math.abs(Number(r.headers["webhook-timestamp"]) - now)).toBeLessThanOrEqual(5);
      expect(r.headers["webhook-signature"]).toMatch(/^v1,[A-Za-z0-9+/]{43}=$/);
      expect(r.headers["outbox-topic"]).toBe("test.event");
      expect(r.headers["outbox-attempt"]).toBe("1");
      expect(r.headers["x-static"]).toBe("s");
      expect(wh.verify(r.body, r.headers)).toEqual(JSON.parse(r.body)); // the standardwebhooks package accepts ours
    }
    const keyed = received.find((r) => r.headers["webhook-id"] === ids[0])!;
    expect(keyed.body).toBe('{"n":1}');
    expect(keyed.headers["outbox-key"]).toBe(encodeURIComponent("customer 7/é"));
    expect(decodeURIComponent(keyed.headers["outbox-key"]!)).toBe("customer 7/é");
    expect(keyed.headers["x-trace"]).toBe("t-1"); // the message's own header wins over the static one
    expect(received.find((r) => r.headers["webhook-id"] === ids[1])!.headers["outbox-key"]).toBeUndefined();
  });

  it.each([
    [200, "delivered"],
    [204, "delivered"],
    [400, "dead"],
    [404, "dead"],
    [410, "dead"],
    [301, "dead"],
    [408, "retry"],
    [429, "retry"],
    [500, "retry"],
    [503, "retry"],
  ] as const)("HTTP %i → %s", async (status, expected) => {
    respond = (_req, res) => {
      if (status === 301) res.writeHead(301, { location: `${base}/elsewhere` }).end();
      else res.writeHead(status, { "content-type": "text/plain" }).end(status >= 300 ? `nope ${status}` : "ok");
    };
    const outcome = await sendOne(transportTo());
    expect(outcome.status).toBe(expected);
    if (outcome.status !== "delivered") {
      expect(outcome.error).toContain(`HTTP ${status}`);
      if (status === 301) expect(outcome.error).toMatch(/redirect to .*\/elsewhere not followed/);
      else expect(outcome.error).toContain(`nope ${status}`);
    }
    if (outcome.status === "retry") expect(outcome.retryAfterMs).toBeUndefined();
    expect(received.map((r) => r.url)).toEqual(["/hook"]); // a redirect is not followed
  });

  it("connection refused → retry", async () => {
    const outcome = await sendOne(webhookTransport({ url: `http://127.0.0.1:${await closedPort()}/hook`, secret }));
    expect(outcome.status).toBe("retry");
    expect(outcome.status === "retry" && outcome.error).toMatch(/ECONNREFUSED/);
  });

  it("honours Retry-After in seconds and as an HTTP date", async () => {
    respond = (_req, res) => res.writeHead(429, { "retry-after": "7" }).end();
    expect(await sendOne(transportTo())).toMatchObject({ status: "retry", retryAfterMs: 7_000 });
    const at = new Date(Date.now() + 30_000);
    respond = (_req, res) => res.writeHead(503, { "retry-after": at.toUTCString() }).end();
    const outcome = await sendOne(transportTo());
    expect(outcome.status).toBe("retry");
    const ms = outcome.status === "retry" ? outcome.retryAfterMs! : -1;
    expect(ms).toBeGreaterThan(28_000);
    expect(ms).toBeLessThanOrEqual(30_000);
  });

  it("timeoutMs aborts a request the server never answers → retry", async () => {
    respond = () => {}; // never answers
    const t0 = performance.now();
    const outcome = await sendOne(transportTo("/hang", { timeoutMs: 300 }));
    const took = performance.now() - t0;
    expect(outcome).toMatchObject({ status: "retry", error: expect.stringMatching(/timed out after 300 ms/) });
    expect(took).toBeGreaterThanOrEqual(290);
    expect(took).toBeLessThan(1_000);
    await sleep(50);
    expect(received[0]!.closedAt).toBeDefined(); // the server saw the connection go
  });

  it("the relay's send signal aborts the request too", async () => {
    respond = () => {};
    const { storage, outbox } = memoryOutbox();
    const { tx, commit } = storage.begin();
    await outbox.enqueue(tx, event, { n: 1 });
    await commit();
    const t0 = performance.now();
    const report = await createRelay({ outbox, transport: transportTo("/hang", { timeoutMs: 10_000 }), sendTimeoutMs: 200, leaseMs: 5_000 })
      .drain({ budgetMs: 3_000 });
    expect(report).toMatchObject({ claimed: 1, retried: 1, delivered: 0 });
    expect(performance.now() - t0).toBeLessThan(1_000);
    await sleep(50);
    expect(received[0]!.closedAt! - received[0]!.at).toBeLessThan(500);

    // And directly: an aborted context signal is reported as a retry naming the reason.
    const c = new AbortController();
    setTimeout(() => c.abort(new Error("drain stopped")), 100);
    const outcome = await sendOne(transportTo("/hang"), message(), c.signal);
    expect(outcome).toMatchObject({ status: "retry", error: expect.stringMatching(/aborted: drain stopped/) });
  });

  it("chooses the URL per message, and dead-letters what cannot be sent", async () => {
    const transport = webhookTransport({ url: (m) => `${base}/by-topic/${m.topic}`, secret });
    expect(await sendOne(transport, message({ topic: "a.b" }))).toEqual({ status: "delivered" });
    expect(received[0]!.url).toBe("/by-topic/a.b");
    expect(await sendOne(webhookTransport({ url: () => "ftp://x", secret }))).toMatchObject({ status: "dead" });
    expect(await sendOne(transportTo(), message({ headers: { "x-name": "Zoë ✓" } }))).toMatchObject({
      status: "dead",
      error: expect.stringMatching(/headers cannot be sent/),
    });
  });

  it("rejects bad options with CONFIG naming the field", async () => {
    expect(String(await caught(() => webhookTransport({ url: "/relative", secret })))).toMatch(/url/);
    expect(String(await caught(() => webhookTransport({ url: base, secret: "whsec_***" })))).toMatch(/secret/);
    expect(String(await caught(() => webhookTransport({ url: base, secret, timeoutMs: 0 })))).toMatch(/timeoutMs/);
    expect(await codeOf(() => webhookTransport({ url: base, secret: "" }))).toBe("CONFIG");
    expect(await codeOf(() => webhookTransport({ url: base, secret, headers: { "bad header": "x" } }))).toBe("CONFIG");
    // An option given as undefined takes its default (the fields are declared `?: T | undefined`).
    expect(webhookTransport({ url: base, secret, timeoutMs: undefined, headers: undefined, fetch: undefined, name: undefined }).name).toBe("webhook");
  });
});

describe("verifyWebhook", () => {
  const body = '{"orderId":"o1","total":5}';
  const request = (headers: Record<string, string>, b = body): Request =>
    new Request("https://app.example/hooks", { method: "POST", headers, body: b });
  const signed = async (over: { id?: string; ts?: number; sig?: string; secret?: string; body?: string } = {}): Promise<Request> => {
    const id = over.id ?? "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W";
    const ts = over.ts ?? Math.floor(Date.now() / 1000);
    const sig = over.sig ?? await signWebhook(over.secret ?? secret, id, ts, body);
    return request({ "webhook-id": id, "webhook-timestamp": String(ts), "webhook-signature": sig }, over.body ?? body);
  };

  it("accepts what the standardwebhooks package signs", async () => {
    const wh = new Webhook(secret);
    const id = uuidv7();
    const at = new Date();
    const signature = wh.sign(id, at, body);
    const verified = await verifyWebhook<{ orderId: string }>(
      request({ "webhook-id": id, "webhook-timestamp": String(Math.floor(at.getTime() / 1000)), "webhook-signature": signature }),
      secret,
    );
    expect(verified).toEqual({ id, sentAt: Math.floor(at.getTime() / 1000) * 1000, body, payload: { orderId: "o1", total: 5 } });
    expect(verified.payload.orderId).toBe("o1");
  });

  it("signs exactly like the standardwebhooks package", async () => {
    const ts = 1_700_000_000;
    expect(await signWebhook(secret, "msg_1", ts, body)).toBe(new Webhook(secret).sign("msg_1", new Date(ts * 1000), body));
  });

  it("accepts any matching v1 signature among several (secret rotation)", async () => {
    const good = await signWebhook(secret, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", Math.floor(Date.now() / 1000), body);
    const other = await signWebhook(newSecret(), "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", Math.floor(Date.now() / 1000), body);
    const v = await verifyWebhook(await signed({ sig: `v1a,AAAA ${other} ${good}` }), secret);
    expect(v.payload).toEqual({ orderId: "o1", total: 5 });
  });

  it("rejects a tampered body, a wrong secret, a bad signature", async () => {
    const cases: Array<[string, Promise<Request>]> = [
      ["tampered body", signed({ body: body.replace("5", "500") })],
      ["wrong secret", signed({ secret: newSecret() })],
      ["garbage signature", signed({ sig: "v1,not-base64!!" })],
      ["other version", signed({ sig: (await signWebhook(secret, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", Math.floor(Date.now() / 1000), body)).replace("v1,", "v2,") })],
    ];
    for (const [what, req] of cases) {
      const e = await caught(verifyWebhook(await req, secret));
      expect(isOutboxError(e, "VALIDATION"), what).toBe(true);
      expect(String(e), what).toMatch(/no matching signature/);
    }
  });

  it("rejects an old or future timestamp beyond the tolerance (default 5 minutes), and accepts within it", async () => {
    const now = Math.floor(Date.now() / 1000);
    expect(String(await caught(verifyWebhook(await signed({ ts: now - 6 * 60 }), secret)))).toMatch(/old/);
    expect(String(await caught(verifyWebhook(await signed({ ts: now + 6 * 60 }), secret)))).toMatch(/future/);
    expect((await verifyWebhook(await signed({ ts: now - 4 * 60 }), secret)).id).toBe("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W");
    expect(await codeOf(verifyWebhook(await signed({ ts: now - 60 }), secret, { toleranceMs: 30_000 }))).toBe("VALIDATION");
    expect((await verifyWebhook(await signed({ ts: now - 4 * 60 }), secret, { toleranceMs: undefined, now: undefined })).id).toBe("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W");
  });

  it("rejects missing headers and a non-numeric timestamp", async () => {
    const good = await signed();
    for (const drop of ["webhook-id", "webhook-timestamp", "webhook-signature"]) {
      const headers = Object.fromEntries([...good.headers].filter(([k]) => k !== drop));
      const e = await caught(verifyWebhook(request(headers), secret));
      expect(isOutboxError(e, "VALIDATION")).toBe(true);
      expect(String(e)).toContain(drop);
    }
    const headers = Object.fromEntries(good.headers);
    expect(await codeOf(verifyWebhook(request({ ...headers, "webhook-timestamp": "soon" }), secret))).toBe("VALIDATION");
  });

  it("round-trips with webhookTransport through a real server", async () => {
    let verified: unknown;
    respond = (req, res, r) => {
      const request = new Request(`${base}${req.url}`, { method: "POST", headers: r.headers, body: r.body });
      verifyWebhook(request, secret).then(
        (v) => {
          verified = v;
          res.writeHead(204).end();
        },
        () => res.writeHead(401).end(),
      );
    };
    const m = message({ body: '{"hello":"wörld"}', payload: { hello: "wörld" } });
    expect(await sendOne(transportTo(), m)).toEqual({ status: "delivered" });
    expect(verified).toMatchObject({ id: m.id, payload: { hello: "wörld" } });
    expect(await sendOne(webhookTransport({ url: `${base}/hook`, secret: newSecret() }), m)).toMatchObject({ status: "dead", error: expect.stringMatching(/HTTP 401/) });
  });
});
