/**
 * `GET /metrics`: the outbox's database counters in the Prometheus text exposition format (version 0.0.4). Every
 * value comes from `outbox.stats()` (counts, ages and per-window counters kept in the database), never from memory
 * in this process, so a scrape is right even when every call runs in a new serverless process.
 *
 * Hand-written on purpose: the client libraries (prom-client, and `@hono/prometheus` on top of it) keep counters in
 * process memory, which is exactly what a serverless relay cannot do, and they need Node; the format itself is a
 * few lines of text per metric. Internal: served by `createRelayApp`.
 *
 * @module
 */
import type { OutboxStats } from "../../src/storage.ts";

/** The `Content-Type` of the Prometheus text format. */
export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

interface Metric {
  readonly name: string;
  readonly help: string;
  readonly samples: ReadonlyArray<readonly [labels: string, value: number]>;
}

/** Formats a sample value: integers as is, others with up to millisecond precision; NaN for an unknown value. */
function value(n: number | null): string {
  if (n === null || !Number.isFinite(n)) return "NaN";
  return Number.isInteger(n) ? String(n) : String(Math.round(n * 1_000) / 1_000);
}

const seconds = (ms: number | null): number | null => (ms === null ? null : ms / 1_000);

/**
 * Renders the metrics of one stats read per window (the first one gives the gauges). Names follow Prometheus'
 * conventions: `edge_outbox_` prefix, base units (seconds), `_total` only on counters (the windowed counts here are
 * gauges: the number of events in the last `window_seconds`, from the database's per-minute buckets).
 *
 * @param windows one `outbox.stats({ windowMs })` per window, at least one
 * @returns the exposition text, ending with a newline
 */
export function renderMetrics(windows: readonly OutboxStats[]): string {
  const first = windows[0];
  if (!first) throw new RangeError("renderMetrics needs at least one stats read");
  const perWindow = (pick: (s: OutboxStats) => number | null): Array<readonly [string, number]> =>
    windows.map((s) => [`{window_seconds="${value(s.window.windowMs / 1_000)}"}`, pick(s) ?? Number.NaN] as const);
  const metrics: Metric[] = [
    { name: "edge_outbox_pending", help: "Messages waiting for delivery: due, delayed, leased or backing off.", samples: [["", first.pending]] },
    { name: "edge_outbox_due", help: "Pending messages due now (claimable unless blocked by their key).", samples: [["", first.due]] },
    { name: "edge_outbox_leased", help: "Pending messages held by an unexpired lease (being sent).", samples: [["", first.leased]] },
    { name: "edge_outbox_dead", help: "Dead letters waiting for replay or purge.", samples: [["", first.dead]] },
    {
      name: "edge_outbox_oldest_pending_age_seconds",
      help: "Age of the oldest pending message since its enqueue, by the database clock (0 when none is pending).",
      samples: [["", seconds(first.oldestPendingAgeMs) ?? 0]],
    },
    // Optional for third-party storages: left out when the storage does not report it, rather than a made-up 0.
    ...(first.oldestDueAgeMs === undefined ? [] : [{
      name: "edge_outbox_oldest_due_age_seconds",
      help: "How long the longest-waiting due message has been due, by the database clock (0 when none is due).",
      samples: [["", seconds(first.oldestDueAgeMs) ?? 0] as const],
    }]),
    { name: "edge_outbox_window_delivered", help: "Messages delivered in the last window_seconds.", samples: perWindow((s) => s.window.delivered) },
    { name: "edge_outbox_window_retried", help: "Failed attempts scheduled for retry in the last window_seconds.", samples: perWindow((s) => s.window.retried) },
    { name: "edge_outbox_window_dead", help: "Messages dead-lettered in the last window_seconds.", samples: perWindow((s) => s.window.dead) },
    {
      name: "edge_outbox_window_delivery_latency_avg_seconds",
      help: "Mean enqueue-to-delivery latency of the messages delivered in the last window_seconds (NaN when none).",
      samples: perWindow((s) => seconds(s.window.avgLatencyMs)),
    },
    {
      name: "edge_outbox_window_delivery_latency_max_seconds",
      help: "Largest enqueue-to-delivery latency in the last window_seconds (NaN when none).",
      samples: perWindow((s) => seconds(s.window.maxLatencyMs)),
    },
    { name: "edge_outbox_database_time_seconds", help: "The database clock when these values were read, Unix time.", samples: [["", first.now / 1_000]] },
  ];
  let out = "";
  for (const m of metrics) {
    out += `# HELP ${m.name} ${m.help}\n# TYPE ${m.name} gauge\n`;
    for (const [labels, v] of m.samples) out += `${m.name}${labels} ${value(v)}\n`;
  }
  return out;
}
