/**
 * Internal plumbing shared by the QStash features (not exported by mod.ts): one bounded publish, abandoning a call
 * when a signal fires, and mapping QStash's errors to outcomes and OutboxErrors.
 *
 * @module
 */
import { isOutboxError, OutboxError } from "../../src/errors.ts";
import type { DeliveryOutcome } from "../../src/transport.ts";
import type { QstashPublishClient, QstashPublishRequest, QstashPublishResponse } from "./client.ts";

export const ABANDONED: unique symbol = Symbol("abandoned");

/** Resolves with `p`, or with ABANDONED as soon as `signal` aborts (`p` keeps running; its rejection is swallowed). */
export function raceSignal<T>(p: Promise<T>, signal: AbortSignal): Promise<T | typeof ABANDONED> {
  p.catch(() => {});
  if (signal.aborted) return Promise.resolve(ABANDONED);
  return new Promise((resolve, reject) => {
    const onAbort = (): void => resolve(ABANDONED);
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

export async function publishOnce(
  client: QstashPublishClient,
  request: QstashPublishRequest,
  timeoutMs: number,
  what: string,
): Promise<QstashPublishResponse> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  let result: Awaited<ReturnType<QstashPublishClient["publish"]>> | typeof ABANDONED;
  try {
    result = await raceSignal(client.publish(request), controller.signal);
  } catch (e) {
    throw transportError(`${what}: publishing to ${request.url ?? request.urlGroup} failed`, e);
  } finally {
    clearTimeout(timer);
  }
  if (result === ABANDONED) {
    throw new OutboxError("TRANSPORT", `[edge-outbox:qstash] ${what}: QStash did not answer within ${timeoutMs} ms`, { retryable: true });
  }
  const first = Array.isArray(result) ? result[0] : result;
  return { messageId: String((first as QstashPublishResponse | undefined)?.messageId ?? ""), deduplicated: (first as QstashPublishResponse | undefined)?.deduplicated === true };
}

/** Maps a failed QStash call to an outcome: 429 → retry after the reset; 401/403/408 → retry; other 4xx → dead; else retry. */
export function classify(e: unknown): DeliveryOutcome {
  const status = statusOf(e);
  const error = `qstash: ${status !== undefined ? `HTTP ${status}: ` : ""}${errorMessage(e)}`.slice(0, 2_000);
  if (status === 429) {
    const retryAfterMs = resetToMs(e);
    return retryAfterMs === undefined ? { status: "retry", error } : { status: "retry", error, retryAfterMs };
  }
  if (status === 401 || status === 403 || status === 408) return { status: "retry", error };
  if (status !== undefined && status >= 400 && status < 500) return { status: "dead", error };
  return { status: "retry", error };
}

export function statusOf(e: unknown): number | undefined {
  const s = (e as { status?: unknown } | null)?.status;
  return typeof s === "number" && Number.isInteger(s) ? s : undefined;
}

/**
 * The wait a QStash rate-limit error asks for, ms. QStash sends the reset as a unix timestamp (seconds; treated as
 * ms when it is that large, and as a delay in seconds when it is small).
 */
export function resetToMs(e: unknown, now: number = Date.now()): number | undefined {
  const err = e as { reset?: unknown; resetRequests?: unknown } | null;
  const raw = err?.reset ?? err?.resetRequests;
  if (raw === null || raw === undefined || raw === "") return undefined;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0) return undefined;
  let ms: number;
  if (n > 1e12) ms = n - now;
  else if (n > 1e9) ms = n * 1_000 - now;
  else ms = n * 1_000;
  return Math.min(Math.max(0, Math.ceil(ms)), 86_400_000);
}

export function transportError(what: string, e: unknown): OutboxError {
  if (isOutboxError(e)) return e;
  const status = statusOf(e);
  const retryable = status === undefined || status === 429 || status >= 500;
  return new OutboxError("TRANSPORT", `[edge-outbox:qstash] ${what}: ${status !== undefined ? `HTTP ${status}: ` : ""}${errorMessage(e)}`, { cause: e, retryable });
}

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export function isHttpUrl(u: string): boolean {
  try {
    const url = new URL(u);
    return url.protocol === "https:" || url.protocol === "http:";
  } catch {
    return false;
  }
}

/** First 16 hex characters of SHA-256. */
export async function shortHash(s: string): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(s)));
  return [...digest.slice(0, 8)].map((b) => b.toString(16).padStart(2, "0")).join("");
}
