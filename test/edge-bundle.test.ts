// The bearer-only relay worker (bench/bundle-size.ts) stays lean: nothing a worker does not need gets bundled.
import { describe, expect, it } from "vitest";
import { bundleCases, measureBundle } from "../bench/bundle-size.ts";

describe("bearer-only relay worker bundle", () => {
  it("core + hono app + libSQL adapter + webhook: no node:*, no driver, no QStash, no inbox/dashboard/otel; under 45 kB min+gz", async () => {
    const c = bundleCases().find((x) => x.name.includes("libSQL adapter + webhook"))!;
    const f = await measureBundle(c.name, c.source);
    expect(f.imports).toEqual([]);
    const unwanted = f.inputs.filter((p) =>
      /node_modules\/(@libsql|postgres|@upstash|jose|uplot|@opentelemetry)\//.test(p) ||
      /^(src\/inbox|src\/testing|adapters\/(postgres|qstash|upstash|otel|memory)\/|adapters\/hono\/(dashboard|uplot)\.ts)/.test(p)
    );
    expect(unwanted).toEqual([]);
    expect(f.inputs).toContain("src/relay.ts"); // the measurement did bundle the relay
    expect(f.inputs.some((p) => p.startsWith("node_modules/hono/"))).toBe(true);
    console.log(`[edge-bundle] ${c.name}: ${(f.minified / 1024).toFixed(1)} kB minified, ${(f.gzipped / 1024).toFixed(1)} kB min+gz`);
    expect(f.gzipped).toBeLessThan(45 * 1024);
  }, 60_000);
});
