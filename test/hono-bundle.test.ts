// A bearer-only relay worker, bundled as a user would (esbuild, the workerd conditions): importing
// edge-outbox/hono must pull in no QStash SDK and no JWT library. The QStash verifier is the user's object.
import { describe, expect, it } from "vitest";
import { bundleWorker } from "../bench/bundle-size.ts";

const bundle = (source: string): Promise<{ text: string; inputs: string[] }> => bundleWorker(source, { minify: false });

/** Strings only the QStash SDK or jose contain (class names, error codes), never edge-outbox itself. */
const QSTASH_MARKERS = [/SignatureError/, /JWSSignatureVerificationFailed/, /jwtVerify/, /QstashError/, /ERR_JWS_INVALID/];

describe("edge-outbox/hono pulls in no QStash code", () => {
  it("a bearer-only worker bundles without @upstash/qstash or jose", async () => {
    const { text, inputs } = await bundle(`
      import { createOutbox, createRelay } from "@root/mod.ts";
      import { memoryStorage, recordingTransport } from "@root/adapters/memory/mod.ts";
      import { createRelayApp } from "@root/adapters/hono/mod.ts";
      const outbox = createOutbox({ storage: memoryStorage(), topics: [] });
      const relay = createRelay({ outbox, transport: recordingTransport() });
      export default createRelayApp({ relay, outbox, auth: { drain: "cron-secret-0123456789abcdef", read: "read-secret-0123456789abcdef" } });
    `);
    const foreign = inputs.filter((p) => /node_modules\/(@upstash\/qstash|jose|neverthrow|uncrypto)\//.test(p));
    expect(foreign, "bundled inputs from the QStash SDK or its dependencies").toEqual([]);
    for (const marker of QSTASH_MARKERS) expect(text, String(marker)).not.toMatch(marker);
    expect(inputs.some((p) => p.includes("node_modules/hono/"))).toBe(true); // the bundle did resolve packages
    // and no dashboard: uPlot is carried only by apps that pass relayDashboard()
    expect(inputs.filter((p) => /adapters\/hono\/(dashboard|uplot)\.ts$/.test(p))).toEqual([]);
    expect(text).not.toMatch(/leeoniya\/uPlot/);
    console.log(`[hono-bundle] bearer-only worker: ${(text.length / 1024).toFixed(1)} kB unminified, ${inputs.length} inputs`);
  });

  it("a worker with the dashboard carries uPlot (the check above can fail)", async () => {
    const { text, inputs } = await bundle(`
      import { createOutbox, createRelay } from "@root/mod.ts";
      import { memoryStorage, recordingTransport } from "@root/adapters/memory/mod.ts";
      import { createRelayApp, relayDashboard } from "@root/adapters/hono/mod.ts";
      const outbox = createOutbox({ storage: memoryStorage(), topics: [] });
      const relay = createRelay({ outbox, transport: recordingTransport() });
      export default createRelayApp({ relay, outbox, auth: { read: "read-secret-0123456789abcdef" }, dashboard: relayDashboard() });
    `);
    expect(text).toMatch(/leeoniya\/uPlot/);
    expect(inputs.filter((p) => /adapters\/hono\/(dashboard|uplot)\.ts$/.test(p))).toHaveLength(2);
    console.log(`[hono-bundle] with the dashboard: ${(text.length / 1024).toFixed(1)} kB unminified`);
  });

  it("the markers are real: a worker that builds its own Receiver does carry QStash code", async () => {
    const { text, inputs } = await bundle(`
      import { Receiver } from "@upstash/qstash";
      import { createOutbox, createRelay } from "@root/mod.ts";
      import { memoryStorage, recordingTransport } from "@root/adapters/memory/mod.ts";
      import { createRelayApp } from "@root/adapters/hono/mod.ts";
      const outbox = createOutbox({ storage: memoryStorage(), topics: [] });
      const relay = createRelay({ outbox, transport: recordingTransport() });
      const verifier = new Receiver({ currentSigningKey: "a", nextSigningKey: "b" });
      export default createRelayApp({ relay, auth: { qstash: { verifier } }, publicUrl: "https://app.example" });
    `);
    expect(inputs.some((p) => /node_modules\/@upstash\/qstash\//.test(p))).toBe(true);
    expect(QSTASH_MARKERS.some((m) => m.test(text))).toBe(true);
  });
});
