// edge-outbox/otel: spans per drain and per send (OpenTelemetry's in-memory exporter), traceparent captured at
// enqueue from the active context and carried by the webhook and QStash transports to the consumer.
import { context, type Context, type ContextManager, propagation, ROOT_CONTEXT, trace } from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { Client } from "@upstash/qstash";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createOutbox, createRelay, type Transport } from "../mod.ts";
import { memoryStorage, recordingTransport } from "../adapters/memory/mod.ts";
import { otelTracing } from "../adapters/otel/mod.ts";
import { webhookTransport } from "../adapters/http/mod.ts";
import { qstashTransport } from "../adapters/qstash/mod.ts";
import { type FetchServer, serveFetch } from "./fixtures/fetch-server.ts";
import { type QstashEmulator, startQstashEmulator } from "./fixtures/qstash-emulator.ts";

/** A synchronous context manager (enough for these tests: enqueue reads the context before its first await). */
class StackContextManager implements ContextManager {
  private stack: Context[] = [];
  active(): Context {
    return this.stack.at(-1) ?? ROOT_CONTEXT;
  }
  with<A extends unknown[], F extends (...args: A) => ReturnType<F>>(ctx: Context, fn: F, thisArg?: ThisParameterType<F>, ...args: A): ReturnType<F> {
    this.stack.push(ctx);
    try {
      return fn.call(thisArg, ...args);
    } finally {
      this.stack.pop();
    }
  }
  bind<T>(_ctx: Context, target: T): T {
    return target;
  }
  enable(): this {
    return this;
  }
  disable(): this {
    this.stack = [];
    return this;
  }
}

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$/;

describe("edge-outbox/otel without an SDK", () => {
  it("is a no-op: no traceparent, drains normally, registers no global provider", async () => {
    const before = trace.getTracerProvider();
    const storage = memoryStorage();
    const tracing = otelTracing();
    const outbox = createOutbox({ storage, tracing });
    const { tx, commit } = storage.begin();
    await outbox.enqueue(tx, "t", { a: 1 });
    await commit();
    const recorder = recordingTransport();
    const report = await createRelay({ outbox, transport: recorder }).drain({ budgetMs: 2_000 });
    expect(report.delivered).toBe(1);
    expect(recorder.delivered[0]!.headers).toEqual({});
    expect(trace.getTracerProvider()).toBe(before);
    // The API's global provider is still the no-op proxy: a tracer from it records nothing.
    expect(trace.getTracer("x").startSpan("s").isRecording()).toBe(false);
  });
});

describe("edge-outbox/otel with the SDK", () => {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  const tracer = provider.getTracer("test");
  const tracing = otelTracing({ tracer });
  let hooks: FetchServer;
  let qstash: QstashEmulator;
  let consumer: FetchServer;
  const received: Array<Record<string, string>> = [];

  beforeAll(async () => {
    // The application's setup, not the library's: a propagator and a context manager.
    propagation.setGlobalPropagator(new W3CTraceContextPropagator());
    context.setGlobalContextManager(new StackContextManager());
    hooks = await serveFetch((r) => {
      received.push(Object.fromEntries(r.headers));
      return new Response(null, { status: 204 });
    });
    consumer = await serveFetch((r) => {
      received.push(Object.fromEntries(r.headers));
      return new Response("ok");
    });
    qstash = await startQstashEmulator();
  });
  afterAll(async () => {
    await hooks?.close();
    await consumer?.close();
    await qstash?.close();
    propagation.disable();
    context.disable();
  });

  /** Enqueues inside a producer span and returns that span's ids. */
  async function produce(outbox: ReturnType<typeof createOutbox>, storage: ReturnType<typeof memoryStorage>, n: number, key?: string) {
    const producer = tracer.startSpan("checkout");
    const { tx, commit } = storage.begin();
    for (let i = 0; i < n; i++) {
      await context.with(trace.setSpan(context.active(), producer), () => outbox.enqueue(tx, "order.created", { i }, key ? { key } : {}));
    }
    await commit();
    producer.end();
    return producer.spanContext();
  }

  it("captures the active context at enqueue, keeps an explicit traceparent", async () => {
    const storage = memoryStorage();
    const outbox = createOutbox({ storage, tracing });
    const producer = await produce(outbox, storage, 1);
    const explicit = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const { tx, commit } = storage.begin();
    await outbox.enqueue(tx, "order.created", { i: 9 }, { headers: { traceparent: explicit } });
    await commit();
    const recorder = recordingTransport();
    await createRelay({ outbox, transport: recorder }).drain({ budgetMs: 2_000 });
    const [a, b] = recorder.delivered;
    expect(a!.headers["traceparent"]).toMatch(TRACEPARENT);
    expect(TRACEPARENT.exec(a!.headers["traceparent"]!)![1]).toBe(producer.traceId);
    expect(TRACEPARENT.exec(a!.headers["traceparent"]!)![2]).toBe(producer.spanId);
    expect(b!.headers["traceparent"]).toBe(explicit);
  });

  it("a span per drain with the report as attributes, a child span per send linked to the producer", async () => {
    exporter.reset();
    const storage = memoryStorage();
    const outbox = createOutbox({ storage, tracing });
    const producer = await produce(outbox, storage, 3, "k1");
    const failing: Transport = {
      name: "flaky",
      async send(messages) {
        return messages.map((m) => ((m.payload as { i: number }).i === 1 ? { status: "retry", error: "boom" } : { status: "delivered" }));
      },
    };
    const report = await createRelay({ outbox, transport: failing }).drain({ budgetMs: 2_000 });
    expect(report).toMatchObject({ claimed: 3, delivered: 1, retried: 1, released: 1 });
    const spans = exporter.getFinishedSpans().filter((s) => s.name.startsWith("edge-outbox."));
    const drain = spans.find((s) => s.name === "edge-outbox.drain")!;
    expect(drain.attributes).toMatchObject({
      "outbox.claimed": 3, "outbox.delivered": 1, "outbox.retried": 1, "outbox.dead": 0, "outbox.released": 1, "outbox.storage": "memory",
    });
    const sends = spans.filter((s) => s.name === "edge-outbox.send");
    expect(sends).toHaveLength(2); // the retrying head blocks its key: the third is released unsent
    for (const s of sends) {
      expect(s.parentSpanContext?.spanId).toBe(drain.spanContext().spanId);
      expect(s.spanContext().traceId).toBe(drain.spanContext().traceId);
      expect(s.attributes["messaging.system"]).toBe("flaky");
      expect(s.links.map((l) => l.context.spanId)).toEqual([producer.spanId]);
    }
    expect(sends[0]!.attributes["outbox.outcome.delivered"]).toBe(1);
    expect(sends[1]!.attributes["outbox.outcome.retry"]).toBe(1);
    expect(sends[1]!.status.code).toBe(2); // ERROR
  });

  it("a throwing tracer never changes a drain or an enqueue", async () => {
    const storage = memoryStorage();
    const broken = {
      inject() {
        throw new Error("tracer down");
      },
      startSpan(): never {
        throw new Error("tracer down");
      },
    };
    const outbox = createOutbox({ storage, tracing: broken });
    const { tx, commit } = storage.begin();
    await outbox.enqueue(tx, "t", { a: 1 });
    await commit();
    const recorder = recordingTransport();
    expect((await createRelay({ outbox, transport: recorder }).drain({ budgetMs: 2_000 })).delivered).toBe(1);
  });

  it("the webhook transport sends the producer's traceparent to the consumer", async () => {
    received.length = 0;
    const storage = memoryStorage();
    const outbox = createOutbox({ storage, tracing });
    const producer = await produce(outbox, storage, 1);
    const transport = webhookTransport({ url: `${hooks.url}/hook`, secret: `whsec_${btoa("0123456789abcdef0123456789abcdef")}` });
    expect((await createRelay({ outbox, transport }).drain({ budgetMs: 5_000 })).delivered).toBe(1);
    const tp = received[0]!["traceparent"]!;
    expect(TRACEPARENT.exec(tp)?.[1]).toBe(producer.traceId);
    expect(TRACEPARENT.exec(tp)?.[2]).toBe(producer.spanId);
  });

  it("the QStash transport forwards it through QStash to the consumer", async () => {
    received.length = 0;
    const storage = memoryStorage();
    const outbox = createOutbox({ storage, tracing });
    const producer = await produce(outbox, storage, 1);
    const client = new Client({ token: qstash.token, baseUrl: qstash.url, retry: false });
    const transport = qstashTransport(client, { destination: `${consumer.url}/events` });
    expect((await createRelay({ outbox, transport }).drain({ budgetMs: 5_000 })).delivered).toBe(1);
    for (let i = 0; i < 100 && received.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    const tp = received[0]?.["traceparent"];
    expect(tp, JSON.stringify(received[0])).toBeDefined();
    expect(TRACEPARENT.exec(tp!)?.[1]).toBe(producer.traceId);
    expect(TRACEPARENT.exec(tp!)?.[2]).toBe(producer.spanId);
  });
});
