// `edge-outbox serve`: the relay app (edge-outbox/hono) on @hono/node-server. Secrets come from the environment,
// never from flags (flags show up in `ps`).
import { createRelay } from "../mod.ts";
import { createRelayApp, relayDashboard } from "../adapters/hono/mod.ts";
import { CliError, EXIT } from "./errors.ts";
import { contact, type DbOptions, openDb } from "./db.ts";
import { createOutbox } from "../mod.ts";
import { resolveTransport, type TransportOptions } from "./transport.ts";

function env(name: string): string | undefined {
  const value = process.env[name];
  return value === undefined || value === "" ? undefined : value;
}

/** Serves until SIGINT/SIGTERM. */
export async function serve(o: DbOptions & TransportOptions & { port: number; host: string; budget: number }): Promise<void> {
  // One secret per scope; a scope without a secret has its routes turned off (404).
  const drain = env("EDGE_OUTBOX_DRAIN_SECRET") ?? env("CRON_SECRET");
  const read = env("EDGE_OUTBOX_READ_SECRET");
  const admin = env("EDGE_OUTBOX_ADMIN_SECRET");
  const metrics = env("EDGE_OUTBOX_METRICS_SECRET");
  if (!drain && !read && !admin && !metrics) {
    throw new CliError(
      EXIT.USAGE,
      "serve needs at least one secret (16+ characters): EDGE_OUTBOX_DRAIN_SECRET (or CRON_SECRET) for POST /drain, " +
        "EDGE_OUTBOX_READ_SECRET for the dashboard, /health, /stats and /metrics, EDGE_OUTBOX_ADMIN_SECRET for dead-letter actions",
    );
  }
  const transport = await resolveTransport(o);
  let nodeServer: { serve(o: { fetch: (r: Request) => Response | Promise<Response>; port: number; hostname: string }, cb?: (i: { port: number }) => void): { close(cb?: () => void): void } };
  try {
    nodeServer = (await import("@hono/node-server")) as typeof nodeServer;
  } catch (e) {
    throw new CliError(EXIT.USAGE, "serve needs the @hono/node-server and hono packages: npm install hono @hono/node-server", { cause: e });
  }
  const db = await openDb(o);
  try {
    await contact(db, o.connectTimeout);
  } catch (e) {
    await db.close({ force: true }).catch(() => {});
    throw e;
  }
  const outbox = createOutbox({ storage: db.storage });
  const relay = createRelay({ outbox, transport });
  const auth = {
    ...(drain ? { drain } : {}),
    ...(read ? { read } : {}),
    ...(admin ? { admin } : {}),
    ...(metrics ? { metrics } : {}),
  };
  // The dashboard page (GET /) comes with the read routes: a read or admin secret opens it.
  const dashboard = read || admin ? relayDashboard() : undefined;
  const app = createRelayApp({ relay, outbox, auth, budgetMs: o.budget, ...(dashboard ? { dashboard } : {}) });
  await new Promise<void>((resolveServe) => {
    const server = nodeServer.serve({ fetch: app.fetch, port: o.port, hostname: o.host }, (info) => {
      const page = dashboard ? `, dashboard at http://${o.host}:${info.port}/` : "";
      process.stderr.write(`edge-outbox: relay app on http://${o.host}:${info.port} (database ${db.display}${page})\n`);
    });
    const stop = () => server.close(() => resolveServe());
    process.once("SIGINT", stop);
    process.once("SIGTERM", stop);
  });
  await db.close().catch(() => {});
}
