/**
 * Topics: a name plus a schema that types and validates payloads at enqueue. Any Standard Schema works
 * (valibot, zod, arktype); the schema must validate synchronously.
 *
 * @module
 */
import { OutboxError } from "./errors.ts";
import { assertTopicName } from "./message.ts";

/** The Standard Schema v1 interface (https://standardschema.dev), copied as the spec recommends. */
export interface StandardSchemaV1<Input = unknown, Output = Input> {
  /** The standard properties. */
  readonly "~standard": {
    readonly version: 1;
    readonly vendor: string;
    readonly validate: (
      value: unknown,
    ) => StandardResult<Output> | Promise<StandardResult<Output>>;
    readonly types?: { readonly input: Input; readonly output: Output } | undefined;
  };
}

/** A Standard Schema validation result. */
export type StandardResult<Output> =
  | { readonly value: Output; readonly issues?: undefined }
  | {
    readonly issues: ReadonlyArray<
      { readonly message: string; readonly path?: ReadonlyArray<PropertyKey | { readonly key: PropertyKey }> | undefined }
    >;
  };

/** A named message type with a payload schema. */
export interface Topic<Name extends string = string, Input = unknown, Output = Input> {
  /** The topic name, e.g. "order.created". */
  readonly name: Name;
  /** The payload schema. */
  readonly schema: StandardSchemaV1<Input, Output>;
}

/** Any topic. */
// deno-lint-ignore no-explicit-any
export type AnyTopic = Topic<string, any, any>;
/** The payload type a topic accepts at enqueue. */
export type TopicInput<T> = T extends Topic<string, infer I, unknown> ? I : never;
/** The payload type a topic's consumers receive (after the schema's transforms). */
export type TopicOutput<T> = T extends Topic<string, unknown, infer O> ? O : never;

/**
 * Defines a topic: its name and the schema every payload must pass at enqueue.
 *
 * @param name 1–255 characters of letters, digits and `. _ : / -`
 * @param schema a synchronous Standard Schema (a valibot schema, for instance)
 * @returns the topic, typed by the schema
 * @throws {OutboxError} VALIDATION for a bad name; CONFIG when `schema` is not a Standard Schema
 * @example
 * ```ts
 * import * as v from "valibot";
 * import { defineTopic } from "edge-outbox";
 * const orderCreated = defineTopic("order.created", v.object({ id: v.string(), total: v.number() }));
 * ```
 */
export function defineTopic<const Name extends string, Input, Output>(
  name: Name,
  schema: StandardSchemaV1<Input, Output>,
): Topic<Name, Input, Output> {
  assertTopicName(name);
  const std = (schema as Partial<StandardSchemaV1>)?.["~standard"];
  if (!std || typeof std.validate !== "function") {
    throw new OutboxError("CONFIG", `defineTopic("${name}"): schema is not a Standard Schema (use valibot, zod or arktype)`);
  }
  return Object.freeze({ name, schema });
}

/**
 * Validates a payload against its topic's schema, synchronously.
 *
 * @param topic the topic
 * @param payload the candidate payload
 * @returns the schema's output (transforms applied)
 * @throws {OutboxError} VALIDATION listing the issues; CONFIG when the schema validates asynchronously
 * @example
 * ```ts
 * import * as v from "valibot";
 * import { defineTopic, validatePayload } from "edge-outbox";
 * const t = defineTopic("user.renamed", v.object({ name: v.string() }));
 * validatePayload(t, { name: "Ada" });
 * ```
 */
export function validatePayload<T extends AnyTopic>(topic: T, payload: unknown): TopicOutput<T> {
  const result = topic.schema["~standard"].validate(payload);
  if (result instanceof Promise || (typeof result === "object" && result !== null && "then" in result)) {
    // Swallow the promise's eventual rejection: we refuse it either way.
    (result as Promise<unknown>).then(() => {}, () => {});
    throw new OutboxError(
      "CONFIG",
      `topic "${topic.name}": its schema validates asynchronously; enqueue needs a synchronous schema (no async checks or transforms)`,
    );
  }
  if (result.issues) {
    const detail = result.issues.slice(0, 5).map((i) => {
      const path = i.path?.map((p) => String(typeof p === "object" ? p.key : p)).join(".");
      return path ? `${path}: ${i.message}` : i.message;
    }).join("; ");
    throw new OutboxError("VALIDATION", `payload for topic "${topic.name}" is invalid: ${detail}`, { cause: result.issues });
  }
  return result.value as TopicOutput<T>;
}
