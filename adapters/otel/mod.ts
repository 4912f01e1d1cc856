/**
 * `edge-outbox/otel`: OpenTelemetry tracing for the outbox and the relay, on `@opentelemetry/api` (an optional peer
 * dependency). It uses the tracer and propagator the application registered; when the application installs no
 * OpenTelemetry SDK, the API is a no-op and so is this. It never registers a global provider or propagator.
 *
 * - At enqueue, the active context is written into the message headers (`traceparent`, `tracestate`: W3C Trace
 *   Context through the registered propagator), unless the caller already set `traceparent`. The webhook and QStash
 *   transports send message headers along, so the consumer's trace continues the producer's.
 * - Each drain is a span `edge-outbox.drain` (attributes `outbox.claimed`, `outbox.delivered`, `outbox.retried`,
 *   `outbox.dead`, `outbox.released`, `outbox.lease_lost`, `outbox.more`); each send call a child span
 *   `edge-outbox.send` (`messaging.system` = the transport name, `messaging.batch.message_count`,
 *   `messaging.message.id` for a single message, `outbox.topic`, `outbox.outcome.*`) linked to every message's producer span.
 *
 * @example
 * ```ts
 * import { createOutbox, createRelay } from "edge-outbox";
 * import { otelTracing } from "edge-outbox/otel";
 *
 * const tracing = otelTracing(); // the app's registered tracer provider, or a no-op
 * const outbox = createOutbox({ storage, topics: [orderCreated], tracing });
 * const relay = createRelay({ outbox, transport, tracing });
 * ```
 *
 * @module
 */
import {
  type Attributes,
  type Context,
  context,
  type Link,
  propagation,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  trace,
  type Tracer,
} from "@opentelemetry/api";
import type { TraceAttributes, TraceSpan, TraceSpanOptions, Tracing } from "../../src/tracing.ts";

/**
 * The part of an OpenTelemetry `Tracer` this adapter calls: any `Tracer` from `@opentelemetry/api` fits (typed
 * structurally so the public API names no type of the OpenTelemetry package).
 */
export interface OtelTracer {
  /** `Tracer.startSpan(name, options, context)`. */
  startSpan(name: string, options?: object, context?: object): object;
}

/** Options of {@link otelTracing}. */
export interface OtelTracingOptions {
  /** The tracer to use. @default trace.getTracer("edge-outbox") from the globally registered provider */
  tracer?: OtelTracer | undefined;
}

const SPAN = Symbol("edge-outbox.otel.span");

interface WrappedSpan extends TraceSpan {
  readonly [SPAN]: Span;
}

function clean(attributes: TraceAttributes | undefined): Attributes {
  const out: Attributes = {};
  if (attributes) for (const [k, v] of Object.entries(attributes)) if (v !== undefined) out[k] = v;
  return out;
}

const headerGetter = {
  keys: (carrier: Readonly<Record<string, string>>): string[] => Object.keys(carrier),
  get: (carrier: Readonly<Record<string, string>>, key: string): string | undefined => {
    const lower = key.toLowerCase();
    for (const [k, v] of Object.entries(carrier)) if (k.toLowerCase() === lower) return v;
    return undefined;
  },
};

function wrap(span: Span): WrappedSpan {
  return {
    [SPAN]: span,
    setAttributes: (attributes) => void span.setAttributes(clean(attributes)),
    recordError: (error) => {
      span.recordException(error instanceof Error ? error : String(error));
      span.setStatus({ code: SpanStatusCode.ERROR, message: error instanceof Error ? error.message : String(error) });
    },
    end: () => span.end(),
  };
}

/**
 * Tracing hooks on `@opentelemetry/api` for `createOutbox({ tracing })` and `createRelay({ tracing })`.
 *
 * @param options `tracer` (default: the global provider's `edge-outbox` tracer)
 * @returns the hooks; a no-op when no OpenTelemetry SDK is installed
 * @example
 * ```ts
 * import { trace } from "@opentelemetry/api";
 * import { otelTracing } from "edge-outbox/otel";
 * const tracing = otelTracing({ tracer: trace.getTracer("billing-relay", "1.0.0") });
 * ```
 */
export function otelTracing(options: OtelTracingOptions = {}): Tracing {
  const tracer = (): Tracer => (options.tracer as Tracer | undefined) ?? trace.getTracer("edge-outbox");
  return {
    inject(headers: Record<string, string>): void {
      if (Object.keys(headers).some((k) => k.toLowerCase() === "traceparent")) return;
      const carrier: Record<string, string> = {};
      propagation.inject(context.active(), carrier);
      for (const [k, v] of Object.entries(carrier)) if (!(k in headers)) headers[k] = v;
    },
    startSpan(name: string, o: TraceSpanOptions = {}): TraceSpan {
      const parent = o.parent && (o.parent as Partial<WrappedSpan>)[SPAN];
      const ctx: Context = parent ? trace.setSpan(context.active(), parent) : context.active();
      const links: Link[] = [];
      for (const headers of o.links ?? []) {
        const spanContext = trace.getSpanContext(propagation.extract(ROOT_CONTEXT, headers, headerGetter));
        if (spanContext && trace.isSpanContextValid(spanContext)) links.push({ context: spanContext });
      }
      const kind = name.endsWith(".send") ? SpanKind.PRODUCER : SpanKind.INTERNAL;
      return wrap(tracer().startSpan(name, { kind, attributes: clean(o.attributes), links }, ctx));
    },
  };
}
