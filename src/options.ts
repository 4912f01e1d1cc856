/**
 * valibot schemas for every options object, and the parser that turns a failure into a CONFIG error naming the field.
 *
 * @module
 */
import * as v from "valibot";
import { OutboxError } from "./errors.ts";

/**
 * A synchronous valibot schema (any `v.object(…)`, `v.strictObject(…)`, …), as {@link parseOptions} takes it; typed
 * structurally so the public API names no valibot type.
 */
export interface OptionsSchema {
  /** valibot's marker of a schema. */
  readonly kind: "schema";
  /** Synchronous schemas only. */
  readonly async: false;
  /** valibot's phantom types (input and output). */
  readonly "~types"?: { readonly output: unknown } | undefined;
}
/** What {@link parseOptions} returns for a schema: its output type (defaults applied). */
export type OptionsOutput<S extends OptionsSchema> = NonNullable<S["~types"]>["output"];

/**
 * Parses `input` with a valibot schema; on failure throws CONFIG that says what to do: `unknown option backoff.base
 * (did you mean baseMs?)`, `transport is required`, or the field and the problem (`batchSize: Invalid type: …`).
 * The error's `cause` lists the issues as `{ path, message }` only: never the options object (it holds clients).
 *
 * @param what the options object's name, e.g. "createRelay options"
 * @param schema the valibot schema
 * @param input the caller's value
 * @returns the parsed output (defaults applied)
 * @throws {OutboxError} CONFIG `createRelay options: unknown option batchsize (did you mean batchSize?)`
 * @example
 * ```ts
 * import * as v from "valibot";
 * import { parseOptions } from "edge-outbox";
 * const opts = parseOptions("my options", v.object({ n: v.optional(v.number(), 1) }), {});
 * ```
 */
export function parseOptions<S extends OptionsSchema>(what: string, schema: S, input: unknown): OptionsOutput<S> {
  const result = v.safeParse(schema as unknown as v.GenericSchema, input);
  if (result.success) return result.output as OptionsOutput<S>;
  const issues = result.issues.map((i) => ({ path: issuePath(i), message: describeIssue(schema, i) }));
  const first = issues[0]!;
  throw new OutboxError("CONFIG", `${what}: ${first.message}`, { cause: issues });
}

/** The dotted path of an issue (`backoff.baseMs`), or "" at the top level. */
function issuePath(issue: v.BaseIssue<unknown>): string {
  return issue.path?.map((p) => String(p.key)).join(".") ?? "";
}

/** One issue as a sentence that names the option and what to do. */
function describeIssue(root: OptionsSchema, issue: v.BaseIssue<unknown>): string {
  const path = issuePath(issue);
  const last = issue.path?.[issue.path.length - 1];
  const keys = (issue.path ?? []).map((p) => String(p.key));
  if (last && issue.expected === "never" && last.origin === "key") {
    const known = knownKeys(root, keys.slice(0, -1));
    const hint = suggest(keys[keys.length - 1]!, known);
    return `unknown option ${path}${hint ? ` (did you mean ${hint}?)` : known.length > 0 ? ` (known: ${known.join(", ")})` : ""}`;
  }
  if (path && issue.received === "undefined" && issue.input === undefined) return `${path} is required`;
  if (!path && issue.received === "undefined") return "options are required";
  return path ? `${path}: ${issue.message}` : issue.message;
}

/** The keys an object schema at `path` (under `root`) declares; [] when it cannot tell. */
function knownKeys(root: OptionsSchema, path: readonly string[]): string[] {
  let node: unknown = root;
  for (let depth = 0; depth <= path.length; depth++) {
    // Unwrap optional/nullable/nullish wrappers (a pipe keeps its first schema's entries on itself).
    for (let i = 0; i < 8 && node && typeof node === "object" && "wrapped" in node; i++) node = (node as { wrapped: unknown }).wrapped;
    const entries = node && typeof node === "object" ? (node as { entries?: Record<string, unknown> }).entries : undefined;
    if (!entries || typeof entries !== "object") return [];
    if (depth === path.length) return Object.keys(entries);
    node = entries[path[depth]!];
  }
  return [];
}

/** The known key closest to `key` (case, a prefix, or at most a third of its letters differing), if any. */
function suggest(key: string, known: readonly string[]): string | null {
  const k = key.toLowerCase();
  let best: string | null = null;
  let bestScore = Infinity;
  for (const candidate of known) {
    const c = candidate.toLowerCase();
    const score = c === k ? 0 : (c.startsWith(k) || k.startsWith(c)) ? 1 : 1 + editDistance(k, c);
    const limit = Math.max(2, Math.floor(Math.max(k.length, c.length) / 3)) + 1;
    if (score <= limit && score < bestScore) {
      best = candidate;
      bestScore = score;
    }
  }
  return best;
}

/** Levenshtein distance. */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length]!;
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
