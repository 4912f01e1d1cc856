import { describe, expect, it } from "vitest";
import {
  backoffDelay,
  encodePayload,
  isOutboxError,
  isUuid,
  OutboxError,
  parseRetryAfter,
  quoteIdentifier,
  toOutboxError,
  utf8Length,
  uuidv7,
} from "../mod.ts";
import { memoryLock } from "../adapters/memory/mod.ts";
import { sleep } from "./helpers.ts";

describe("uuidv7", () => {
  it("has version 7, the RFC variant, the timestamp, and sorts in creation order", () => {
    const t = Date.UTC(2026, 10, 23, 1, 2, 3, 4);
    const id = uuidv7(t + 1_000_000); // ahead of any id made so far in this process
    expect(isUuid(id)).toBe(true);
    expect(id[14]).toBe("7");
    expect(["8", "9", "a", "b"]).toContain(id[19]);
    expect(parseInt(id.slice(0, 8) + id.slice(9, 13), 16)).toBe(t + 1_000_000);
    const ids = Array.from({ length: 20_000 }, () => uuidv7(t + 1_000_000));
    expect(new Set(ids).size).toBe(ids.length);
    expect([...ids].sort()).toEqual(ids);
  });
});

describe("backoff", () => {
  it("full jitter within [minMs, min(maxMs, baseMs * 2^(attempt-1))]", () => {
    const o = { baseMs: 100, maxMs: 1_000, minMs: 10 };
    expect(backoffDelay(1, o, undefined, () => 0)).toBe(10);
    expect(backoffDelay(1, o, undefined, () => 0.999999)).toBe(99);
    expect(backoffDelay(3, o, undefined, () => 0.5)).toBe(200);
    expect(backoffDelay(30, o, undefined, () => 0.999999)).toBe(999);
    const samples = Array.from({ length: 2_000 }, () => backoffDelay(4, o));
    expect(Math.min(...samples)).toBeGreaterThanOrEqual(10);
    expect(Math.max(...samples)).toBeLessThanOrEqual(800);
    expect(new Set(samples).size).toBeGreaterThan(100); // jittered, not constant
  });

  it("honours retryAfterMs, even above maxMs", () => {
    expect(backoffDelay(1, { maxMs: 1_000 }, 30_000, () => 0.5)).toBe(30_000);
    expect(backoffDelay(1, { baseMs: 1_000 }, 5, () => 0.5)).toBe(500);
  });

  it("parses Retry-After seconds and dates", () => {
    expect(parseRetryAfter("120")).toBe(120_000);
    expect(parseRetryAfter("1.5")).toBe(1_500);
    expect(parseRetryAfter("Wed, 21 Oct 2015 07:28:10 GMT", Date.parse("Wed, 21 Oct 2015 07:28:00 GMT"))).toBe(10_000);
    expect(parseRetryAfter("soon")).toBe(undefined);
    expect(parseRetryAfter(null)).toBe(undefined);
  });
});

describe("errors", () => {
  it("isOutboxError recognises errors from another copy of the library by shape", () => {
    const e = new OutboxError("STORAGE", "x", { retryable: true, cause: new Error("y") });
    expect(isOutboxError(e, "STORAGE")).toBe(true);
    expect(isOutboxError(e, "CONFIG")).toBe(false);
    expect(e.retryable).toBe(true);
    const foreign = Object.assign(new Error("z"), { name: "OutboxError", code: "LOCK", retryable: false });
    expect(isOutboxError(foreign, "LOCK")).toBe(true);
    expect(isOutboxError(new Error("plain"))).toBe(false);
    expect(isOutboxError(null)).toBe(false);
  });

  it("toOutboxError wraps foreign errors with the cause and keeps OutboxErrors", () => {
    const cause = new Error("ECONNRESET");
    const w = toOutboxError("STORAGE", "[edge-outbox:test] claim failed", cause, true);
    expect(w.message).toBe("[edge-outbox:test] claim failed: ECONNRESET");
    expect(w.cause).toBe(cause);
    expect(w.retryable).toBe(true);
    const o = new OutboxError("LEASE_LOST", "gone");
    expect(toOutboxError("STORAGE", "p", o)).toBe(o);
  });
});

describe("identifiers and encoding", () => {
  it("quoteIdentifier accepts plain identifiers and refuses everything else", () => {
    expect(quoteIdentifier("outbox")).toBe('"outbox"');
    expect(quoteIdentifier("_Outbox_2")).toBe('"_Outbox_2"');
    for (const bad of ["outbox; drop table x", 'out"box', "1outbox", "", "a".repeat(64), "out box", "outbox--", "é", null, 5]) {
      let e: unknown;
      try {
        quoteIdentifier(bad);
      } catch (x) {
        e = x;
      }
      expect(isOutboxError(e, "CONFIG")).toBe(true);
    }
  });

  it("utf8Length counts UTF-8 bytes, surrogate pairs included", () => {
    for (const s of ["", "abc", "é", "€", "🚀", "a🚀é€\u0000", "\ud800"]) {
      expect(utf8Length(s)).toBe(new TextEncoder().encode(s).length);
    }
  });

  it("encodePayload drops undefined object properties like JSON does and uses toJSON", () => {
    expect(encodePayload({ a: 1, b: undefined }, 100)).toBe('{"a":1}');
    expect(encodePayload({ d: new Date(0) }, 100)).toBe('{"d":"1970-01-01T00:00:00.000Z"}');
    expect(encodePayload(Object.create(null), 100)).toBe("{}");
  });
});

describe("memoryLock", () => {
  it("is exclusive, expires (firing its signal), extends and releases", async () => {
    const lock = memoryLock();
    const a = await lock.acquire("k", 100);
    expect(a).not.toBeNull();
    expect(await lock.acquire("k", 100)).toBeNull();
    expect(await lock.acquire("other", 100)).not.toBeNull();
    expect(await a!.extend(250)).toBe(true);
    await sleep(150);
    expect(a!.signal.aborted).toBe(false);
    expect(await lock.acquire("k", 100)).toBeNull();
    await sleep(150);
    expect(a!.signal.aborted).toBe(true);
    expect(await a!.extend(100)).toBe(false);
    const b = await lock.acquire("k", 1_000);
    expect(b).not.toBeNull();
    await a!.release(); // a lost lease's release must not free b's lock
    expect(lock.isHeld("k")).toBe(true);
    await b!.release();
    expect(lock.isHeld("k")).toBe(false);
  });
});
