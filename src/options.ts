/**
 * valibot schemas for every options object, and the parser that turns a failure into a CONFIG error naming the field.
 *
 * @module
 */
import * as v from "valibot";
import { OutboxError } from "./errors.ts";

/**
 * Parses `input` with a valibot schema; on failure throws CONFIG naming the first bad field.
 *
 * @param what the options object's name, e.g. "createRelay options"
 * @param schema the valibot schema
 * @param input the caller's value
 * @returns the parsed output (defaults applied)
 * @throws {OutboxError} CONFIG `createRelay options: batchSize: …`
 * @example
 * ```ts
 * import * as v from "valibot";
 * import { parseOptions } from "edge-outbox";
 * const opts = parseOptions("my options", v.object({ n: v.optional(v.number(), 1) }), {});
 * ```
 */
export function parseOptions<S extends v.GenericSchema>(what: string, schema: S, input: unknown): v.InferOutput<S> {
  const result = v.safeParse(schema, input);
  if (result.success) return result.output;
  const issue = result.issues[0];
  const path = issue.path?.map((p) => String(p.key)).join(".") ?? "";
  throw new OutboxError("CONFIG", `${what}: ${path ? `${path}: ` : ""}${issue.message}`, { cause: result.issues });
}

const IDENTIFIER_RE = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

/**
 * Validates a table or schema name and returns it double-quoted for SQL. Nothing else ever reaches SQL text.
 *
 * @param name the identifier
 * @param field the option name for the error message @default "table"
 * @returns `"name"`
 * @throws {OutboxError} CONFIG for anything but a plain identifier (`outbox; drop table x` is refused)
 * @example
 * ```ts
 * import { quoteIdentifier } from "edge-outbox";
 * quoteIdentifier("outbox"); // "\"outbox\""
 * ```
 */
export function quoteIdentifier(name: unknown, field = "table"): string {
  if (typeof name !== "string" || !IDENTIFIER_RE.test(name)) {
    throw new OutboxError(
      "CONFIG",
      `${field} ${JSON.stringify(String(name))} is not a valid identifier: use a letter or _, then letters, digits or _ (at most 63 characters)`,
    );
  }
  return `"${name}"`;
}
