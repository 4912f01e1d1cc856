// A consumer process for the SIGKILL test (test/inbox-kill.test.ts): a webhookReceiver on a Postgres inbox, served on
// 127.0.0.1. It announces each phase of a delivery on stdout and pauses there, so the parent can kill it with
// SIGKILL exactly between the effect and the commit ("effect <id>"), or between the commit and the HTTP answer
// ("committed <id>"). Configured by environment: INBOX_PG_URL, INBOX_SCHEMA, INBOX_SECRET, INBOX_PAUSE_MS. Only a delivery with `x-test-pause: effect|committed` pauses, there.
import postgres from "postgres";
import * as v from "valibot";
import { createInbox, defineTopic } from "../mod.ts";
import { webhookReceiver } from "../adapters/http/mod.ts";
import { postgresInbox } from "../adapters/postgres/mod.ts";
import { serveFetch } from "./fixtures/fetch-server.ts";

const env = (name: string): string => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
};
const schema = env("INBOX_SCHEMA");
const pauseMs = Number(process.env["INBOX_PAUSE_MS"] ?? "400");
const sql = postgres(env("INBOX_PG_URL"), { max: 2, onnotice: () => {} });
const pause = (): Promise<void> => new Promise((r) => setTimeout(r, pauseMs));
const say = (line: string): void => void process.stdout.write(`${line}\n`);

const base = postgresInbox(sql, { schema });
// The storage's transaction, instrumented: after the commit, announce it and pause before the HTTP answer goes out.
const storage = {
  ...base,
  async transaction<T>(fn: Parameters<typeof base.transaction<T>>[0]): Promise<T> {
    let id = "";
    current = "";
    pausing = null;
    const result = await base.transaction(async (tx) => {
      const r = await fn(tx);
      id = current;
      return r;
    });
    if (id) {
      say(`committed ${id}`);
      if (pausing === "committed") await pause();
    }
    return result;
  },
};
let current = "";
let pausing: string | null = null;
const event = defineTopic("kill.event", v.object({ n: v.number() }));
const inbox = createInbox({ storage, consumer: "killable" });
const receiver = webhookReceiver({
  secret: env("INBOX_SECRET"),
  inbox,
  topics: [event],
  handler: async (m, { tx }) => {
    await tx.unsafe(`INSERT INTO "${schema}".effects (message_id) VALUES ($1)`, [m.id]);
    current = m.id;
    pausing = m.headers.get("x-test-pause"); // only the delivery the parent means to kill waits, at the phase it names
    say(`effect ${m.id}`);
    if (pausing === "effect") await pause(); // the effect is written, not committed
  },
});
const server = await serveFetch((r) => receiver.fetch(r));
server.server.ref(); // keep this process alive
say(`listening ${server.url}`);
