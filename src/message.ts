/**
 * The message model: what is stored in the outbox, what a transport receives, ids and payload encoding.
 *
 * @module
 */
import { OutboxError } from "./errors.ts";

/** Default largest encoded payload, in UTF-8 bytes (256 KiB). */
export const DEFAULT_MAX_PAYLOAD_BYTES = 262_144;
/** Largest accepted ordering key, in characters. */
export const MAX_KEY_LENGTH = 255;
/** Largest accepted delay: 365 days in milliseconds. */
export const MAX_DELAY_MS = 31_536_000_000;

/** A message as a transport receives it: decoded, with its id and delivery attempt. */
export interface OutboxMessage {
  /** UUIDv7, assigned at enqueue; never changes across retries (use it to deduplicate). */
  readonly id: string;
  /** The topic name the message was enqueued under. */
  readonly topic: string;
  /** Ordering key: messages of one key are delivered in commit order. `null` for unordered messages. */
  readonly key: string | null;
  /** The JSON payload, decoded. */
  readonly payload: unknown;
  /** The raw JSON text of the payload, exactly as stored (send it as-is to avoid re-encoding). */
  readonly body: string;
  /** String headers given at enqueue. */
  readonly headers: Readonly<Record<string, string>>;
  /** When the message was enqueued, epoch milliseconds by the database clock. */
  readonly createdAt: number;
  /** Which attempt this is, counting this one (1 on first delivery). */
  readonly attempts: number;
  /** The error of the previous failed attempt, if any. */
  readonly lastError: string | null;
}

/** A message as the core hands it to `OutboxStorage.enqueue`: validated, encoded, with its id. */
export interface NewMessage {
  /** UUIDv7 assigned by the core. */
  readonly id: string;
  /** Topic name (already validated). */
  readonly topic: string;
  /** Ordering key or null. */
  readonly key: string | null;
  /** JSON text of the payload (already validated and size-checked). */
  readonly payload: string;
  /** JSON text of the headers object. */
  readonly headers: string;
  /** Delay before the first delivery, ms; the storage adds it to the database clock. */
  readonly delayMs: number;
}

/** Options for one enqueued message. */
export interface EnqueueOptions {
  /** Ordering key: same-key messages are delivered one at a time, in commit order. @default null (unordered) */
  key?: string | null | undefined;
  /** Delay before the first delivery attempt, in ms (by the database clock). @default 0 */
  delayMs?: number | undefined;
  /** String headers, forwarded by transports. @default {} */
  headers?: Record<string, string> | undefined;
  /** Use this id instead of a fresh UUIDv7 (it must be a UUID). Lets a caller make enqueue idempotent. @default a new UUIDv7 */
  id?: string | undefined;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const HEADER_NAME_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$/;
const TOPIC_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._:/-]{0,254}$/;

/**
 * Whether `s` can be stored as text by every storage: no NUL (PostgreSQL text cannot hold it) and no lone UTF-16
 * surrogate (not valid Unicode: PostgreSQL refuses its JSON escape, and it has no UTF-8 encoding).
 */
function storable(s: string): boolean {
  return badChar(s) === null;
}

/** Describes the first character of `s` that {@link storable} refuses, or null. */
function badChar(s: string): string | null {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0) return `NUL at index ${i}`;
    if (c >= 0xd800 && c <= 0xdbff) {
      const d = i + 1 < s.length ? s.charCodeAt(i + 1) : 0;
      if (d >= 0xdc00 && d <= 0xdfff) {
        i++;
        continue;
      }
      return `a lone surrogate at index ${i}`;
    }
    if (c >= 0xdc00 && c <= 0xdfff) return `a lone surrogate at index ${i}`;
  }
  return null;
}

let lastMs = 0;
let seq = 0;

/**
 * Makes a UUIDv7 (RFC 9562): 48-bit millisecond timestamp, then randomness, with a 12-bit counter
 * in `rand_a` so ids made in the same millisecond by this process stay sorted.
 *
 * @param now epoch ms to embed @default Date.now()
 * @returns a lowercase UUID string, version 7
 * @example
 * ```ts
 * import { uuidv7 } from "edge-outbox";
 * const id = uuidv7(); // "0193b7e2-4c1a-7d3e-9f10-2b3c4d5e6f70"
 * ```
 */
export function uuidv7(now: number = Date.now()): string {
  if (now > lastMs) {
    lastMs = now;
    seq = 0;
  } else {
    seq++;
    if (seq > 0xfff) { // counter exhausted in this millisecond: borrow the next one
      lastMs++;
      seq = 0;
    }
  }
  const ms = lastMs;
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  b[0] = Math.floor(ms / 2 ** 40) & 0xff;
  b[1] = Math.floor(ms / 2 ** 32) & 0xff;
  b[2] = (ms >>> 24) & 0xff;
  b[3] = (ms >>> 16) & 0xff;
  b[4] = (ms >>> 8) & 0xff;
  b[5] = ms & 0xff;
  b[6] = 0x70 | ((seq >>> 8) & 0x0f);
  b[7] = seq & 0xff;
  b[8] = 0x80 | (b[8]! & 0x3f);
  let hex = "";
  for (const x of b) hex += x.toString(16).padStart(2, "0");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * Tells whether `id` is a UUID in canonical lowercase form.
 *
 * @param id the string to check
 * @returns true for a canonical UUID
 * @example
 * ```ts
 * import { isUuid } from "edge-outbox";
 * isUuid("not-an-id"); // false
 * ```
 */
export function isUuid(id: string): boolean {
  return UUID_RE.test(id);
}

/**
 * Validates a topic name: 1–255 characters of letters, digits and `. _ : / -`, starting with a letter or digit.
 *
 * @param name the topic name
 * @throws {OutboxError} VALIDATION when the name is not acceptable
 * @example
 * ```ts
 * import { assertTopicName } from "edge-outbox";
 * assertTopicName("order.created");
 * ```
 */
export function assertTopicName(name: unknown): asserts name is string {
  if (typeof name !== "string" || !TOPIC_NAME_RE.test(name)) {
    throw new OutboxError(
      "VALIDATION",
      `topic name ${JSON.stringify(String(name))} is invalid: use 1-255 characters of letters, digits and . _ : / -`,
    );
  }
}

/**
 * Encodes a payload as JSON, refusing anything JSON would silently change or cannot represent:
 * BigInt, functions, symbols, cycles, NaN and Infinity, `undefined` outside object properties, and objects
 * that are neither plain nor have `toJSON` (Map, Set, class instances would become `{}`).
 *
 * @param payload the value to encode
 * @param maxBytes the largest accepted encoded size in UTF-8 bytes
 * @returns the JSON text
 * @throws {OutboxError} VALIDATION naming the offending path, or the size
 * @example
 * ```ts
 * import { encodePayload } from "edge-outbox";
 * encodePayload({ id: "o1", total: 5 }, 1024); // '{"id":"o1","total":5}'
 * ```
 */
export function encodePayload(payload: unknown, maxBytes: number): string {
  checkJson(payload, "payload", new Set());
  const text = JSON.stringify(payload);
  const bytes = utf8Length(text);
  if (bytes > maxBytes) {
    throw new OutboxError("VALIDATION", `payload is ${bytes} bytes, larger than maxPayloadBytes (${maxBytes})`);
  }
  return text;
}

function checkJson(value: unknown, path: string, seen: Set<object>): void {
  switch (typeof value) {
    case "string":
    case "boolean":
      return;
    case "number":
      if (!Number.isFinite(value)) throw notJson(path, `${value} is not representable in JSON`);
      return;
    case "bigint":
      throw notJson(path, "a BigInt is not JSON-serialisable (encode it as a string)");
    case "function":
      throw notJson(path, "a function is not JSON-serialisable");
    case "symbol":
      throw notJson(path, "a symbol is not JSON-serialisable");
    case "undefined":
      throw notJson(path, "undefined is not JSON (use null)");
  }
  if (value === null) return;
  const obj = value as object;
  if (seen.has(obj)) throw notJson(path, "the value contains a cycle");
  if (typeof (obj as { toJSON?: unknown }).toJSON === "function") {
    seen.add(obj);
    checkJson((obj as { toJSON(): unknown }).toJSON(), path, seen);
    seen.delete(obj);
    return;
  }
  seen.add(obj);
  if (Array.isArray(obj)) {
    for (let i = 0; i < obj.length; i++) checkJson(obj[i], `${path}[${i}]`, seen);
  } else {
    const proto = Object.getPrototypeOf(obj);
    if (proto !== Object.prototype && proto !== null) {
      const kind = (proto as { constructor?: { name?: string } })?.constructor?.name ?? "object";
      throw notJson(path, `a ${kind} would be encoded as {} (convert it to a plain object or array)`);
    }
    for (const [k, v] of Object.entries(obj)) {
      if (v === undefined) continue; // dropped by JSON, as TypeScript optional fields expect
      checkJson(v, `${path}.${k}`, seen);
    }
  }
  seen.delete(obj);
}

function notJson(path: string, why: string): OutboxError {
  return new OutboxError("VALIDATION", `${path} is not JSON-serialisable: ${why}`);
}

/**
 * Counts the UTF-8 bytes of a string without allocating.
 *
 * @param s the string
 * @returns its UTF-8 length
 * @example
 * ```ts
 * import { utf8Length } from "edge-outbox";
 * utf8Length("é"); // 2
 * ```
 */
export function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n += 4;
        i++;
      } else n += 3;
    } else n += 3;
  }
  return n;
}

/**
 * Validates enqueue options and turns them into the stored form (everything but the payload).
 *
 * @param opts the caller's options
 * @returns the id, key, headers JSON and delay
 * @throws {OutboxError} VALIDATION naming the bad field
 * @example
 * ```ts
 * import { normalizeEnqueueOptions } from "edge-outbox";
 * normalizeEnqueueOptions({ key: "customer-7", delayMs: 1000 });
 * ```
 */
export function normalizeEnqueueOptions(
  opts: EnqueueOptions | undefined,
): { id: string; key: string | null; headers: string; delayMs: number } {
  const o = opts ?? {};
  if (typeof o !== "object") throw new OutboxError("VALIDATION", "enqueue options must be an object");
  const key = o.key ?? null;
  if (key !== null && (typeof key !== "string" || key.length === 0 || key.length > MAX_KEY_LENGTH)) {
    throw new OutboxError("VALIDATION", `key must be a non-empty string of at most ${MAX_KEY_LENGTH} characters`);
  }
  if (key !== null && !storable(key)) {
    throw new OutboxError("VALIDATION", `key ${JSON.stringify(key)} contains ${badChar(key)}: keys must be well-formed text without NUL`);
  }
  const delayMs = o.delayMs ?? 0;
  if (typeof delayMs !== "number" || !Number.isInteger(delayMs) || delayMs < 0 || delayMs > MAX_DELAY_MS) {
    throw new OutboxError("VALIDATION", `delayMs must be an integer between 0 and ${MAX_DELAY_MS}`);
  }
  const headers = o.headers ?? {};
  if (typeof headers !== "object" || headers === null || Array.isArray(headers)) {
    throw new OutboxError("VALIDATION", "headers must be an object of string values");
  }
  for (const [name, value] of Object.entries(headers)) {
    if (!HEADER_NAME_RE.test(name)) throw new OutboxError("VALIDATION", `header name ${JSON.stringify(name)} is not a valid HTTP token`);
    if (typeof value !== "string" || /[\r\n\0]/.test(value) || !storable(value)) {
      throw new OutboxError("VALIDATION", `header ${name} must be a string without CR, LF, NUL or lone surrogates`);
    }
  }
  const id = o.id ?? uuidv7();
  if (typeof id !== "string" || !isUuid(id)) throw new OutboxError("VALIDATION", `id ${JSON.stringify(id)} is not a lowercase UUID`);
  return { id, key, headers: JSON.stringify(headers), delayMs };
}
