/**
 * The Tracing contract: how the core reports spans and carries trace context without depending on a tracing
 * library. `edge-outbox/otel` implements it on `@opentelemetry/api`; without a `tracing` option nothing is traced and
 * no tracing code runs.
 *
 * @module
 */

/** Span attributes (OpenTelemetry's primitive attribute values). */
export type TraceAttributes = Readonly<Record<string, string | number | boolean | undefined>>;

/** A span started by {@link Tracing.startSpan}. */
export interface TraceSpan {
  /** Adds or overwrites attributes. */
  setAttributes(attributes: TraceAttributes): void;
  /** Records an error on the span and marks it failed. */
  recordError(error: unknown): void;
  /** Ends the span (idempotent in OpenTelemetry; called once by the core). */
  end(): void;
}

/** Options of {@link Tracing.startSpan}. */
export interface TraceSpanOptions {
  /** Initial attributes. @default {} */
  attributes?: TraceAttributes | undefined;
  /** The parent span (a span this Tracing started). @default the active context */
  parent?: TraceSpan | undefined;
  /**
   * Header sets carrying W3C trace context (`traceparent`/`tracestate`), e.g. the messages of a send: the span links
   * to each producer's span context. @default none
   */
  links?: ReadonlyArray<Readonly<Record<string, string>>> | undefined;
}

/**
 * Tracing hooks for {@link createOutbox} (`inject`) and {@link createRelay} (`startSpan`).
 *
 * @example
 * ```ts
 * import type { Tracing } from "edge-outbox";
 * // A tracer that logs span names (edge-outbox/otel gives the OpenTelemetry one).
 * const logging: Tracing = {
 *   inject() {},
 *   startSpan(name) {
 *     const started = Date.now();
 *     return { setAttributes() {}, recordError() {}, end: () => console.log(name, Date.now() - started, "ms") };
 *   },
 * };
 * ```
 */
export interface Tracing {
  /**
   * Writes the active trace context into `headers` (W3C `traceparent`, `tracestate`), at enqueue, so the message
   * carries its producer's context to the consumer. Must not overwrite a header the caller set.
   */
  inject(headers: Record<string, string>): void;
  /** Starts a span. */
  startSpan(name: string, options?: TraceSpanOptions): TraceSpan;
}
