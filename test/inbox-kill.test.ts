// A consumer killed with SIGKILL between its effect and its answer: the redelivery is a no-op (or, when the kill came
// before the commit, the one and only application). 20 kills, alternating between the two windows (after the commit,
// before the answer; after the effect, before the commit); 0 double effects.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { signWebhook } from "../adapters/http/mod.ts";
import { bundleChild, type PgInboxFixture, postgresInboxFixture, spawnChild, type SpawnedChild } from "./inbox-fixtures.ts";
import { PG_URL } from "./postgres-fixtures.ts";

const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const KILLS = 20;
let dir: string;
let bundle: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "edge-outbox-kill-"));
  bundle = await bundleChild("inbox-child.ts", dir);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function startConsumer(f: PgInboxFixture): Promise<{ child: SpawnedChild; url: string }> {
  const child = spawnChild(bundle, { INBOX_PG_URL: PG_URL, INBOX_SCHEMA: f.schema, INBOX_SECRET: secret, INBOX_PAUSE_MS: "5000" });
  const line = await child.waitFor("listening ");
  return { child, url: line.slice("listening ".length) };
}

async function deliver(url: string, id: string, n: number, pauseAt: string | null = null): Promise<Response> {
  const body = JSON.stringify({ n });
  const ts = Math.floor(Date.now() / 1000);
  return await fetch(`${url}/hooks`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "webhook-id": id,
      "webhook-timestamp": String(ts),
      "webhook-signature": await signWebhook(secret, id, ts, body),
      "outbox-topic": "kill.event",
      ...(pauseAt ? { "x-test-pause": pauseAt } : {}),
    },
    body,
  });
}

describe("a consumer killed (SIGKILL) between its effect and its answer", () => {
  it(`${KILLS} kills: every redelivery is a no-op or the single application; 0 double effects`, async () => {
    const f = await postgresInboxFixture();
    let consumer = await startConsumer(f);
    let spare = startConsumer(f); // the next process starts while this one works (startup dominates otherwise)
    const outcomes = { killedAfterCommit: 0, killedBeforeCommit: 0, redeliveredDuplicate: 0, redeliveredProcessed: 0 };
    try {
      for (let k = 0; k < KILLS; k++) {
        const id = `00000000-0000-7000-8000-${String(k).padStart(12, "0")}`;
        const phase = k % 2 === 0 ? "committed" : "effect";
        const inFlight = deliver(consumer.url, id, k, phase).then(() => "answered", () => "connection lost");
        await consumer.child.waitFor(`${phase} ${id}`);
        await consumer.child.kill();
        expect(await inFlight).toBe("connection lost"); // the sender never got an answer: it redelivers
        if (phase === "committed") outcomes.killedAfterCommit++;
        else outcomes.killedBeforeCommit++;
        consumer = await spare;
        spare = startConsumer(f);
        const again = await deliver(consumer.url, id, k);
        expect(again.status).toBe(200);
        const { status } = await again.json() as { status: string };
        expect(status).toBe(phase === "committed" ? "duplicate" : "processed");
        if (status === "duplicate") outcomes.redeliveredDuplicate++;
        else outcomes.redeliveredProcessed++;
        expect(await f.effects(id)).toBe(1);
      }
      const effects = await f.allEffects();
      console.log(`[inbox-kill] ${JSON.stringify({ kills: KILLS, ...outcomes, effects: effects.length, distinct: new Set(effects).size })}`);
      expect(effects).toHaveLength(KILLS);
      expect(new Set(effects).size).toBe(KILLS);
    } finally {
      await consumer.child.kill();
      await (await spare).child.kill();
      await f.close();
    }
  }, 180_000);
});
