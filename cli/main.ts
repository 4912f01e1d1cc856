#!/usr/bin/env node
// The `edge-outbox` command: migrate, stats, drain, dead-letter tools and serve, on a libSQL/SQLite/Turso or
// PostgreSQL database. Runs under Node (the package's `bin`), Bun (`bunx --bun edge-outbox`) and Deno
// (`deno run -A npm:edge-outbox`). Exit codes: see cli/errors.ts (EXIT) and the README's CLI section.
import { Command, CommanderError, Option } from "commander";
import { createOutbox, createRelay, type DeadLetterPage, type DrainReport, type Outbox } from "../mod.ts";
import { CliError, EXIT, toCliError } from "./errors.ts";
import { CONNECT_TIMEOUT_MS, contact, type DbOptions, type OpenedDb, openDb } from "./db.ts";
import { emptyTotals, ProgressLine, renderProgress, type Totals } from "./progress.ts";
import { resolveTransport, type TransportOptions } from "./transport.ts";

const out = (s: string) => process.stdout.write(s.endsWith("\n") ? s : `${s}\n`);

function withDb(cmd: Command): Command {
  return cmd
    .option("--db <url>", "database: file:app.db, libsql://… or http(s)://… (Turso/sqld), postgres://… (default $EDGE_OUTBOX_DB, $DATABASE_URL)")
    .option("--auth-token <token>", "libSQL/Turso auth token (default $LIBSQL_AUTH_TOKEN or $TURSO_AUTH_TOKEN)")
    .option("--table <name>", "outbox table name (default outbox)")
    .option("--schema <name>", "PostgreSQL schema (default public)")
    .addOption(
      new Option("--connect-timeout <ms>", "how long the first contact with the database may take before it counts as unreachable (exit 3)")
        .default(CONNECT_TIMEOUT_MS)
        .argParser(positiveInt("--connect-timeout")),
    );
}

function withTransport(cmd: Command): Command {
  return cmd
    .option("--webhook <url>", "send as signed Standard Webhooks POSTs to this URL (secret in $EDGE_OUTBOX_WEBHOOK_SECRET)")
    .option("--qstash <url>", "publish through QStash to this destination (token in $QSTASH_TOKEN, optional $QSTASH_URL)")
    .option("--transport <module>", "a JS/TS module whose default export is a Transport (or returns one)");
}

function positiveInt(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n <= 0) throw new CliError(EXIT.USAGE, `${name} must be a positive whole number, got ${JSON.stringify(value)}`);
    return n;
  };
}

/** Opens the database, checks it answers, runs `fn`, closes it, and maps failures to exit codes. */
async function withOutbox<T>(options: DbOptions, fn: (outbox: Outbox<unknown, unknown>, db: OpenedDb) => Promise<T>): Promise<T> {
  const db = await openDb(options);
  let force = false;
  try {
    try {
      await contact(db, options.connectTimeout);
    } catch (e) {
      force = true; // nothing to wait for: a connection still being attempted is dropped
      throw e;
    }
    const outbox = createOutbox({ storage: db.storage }) as Outbox<unknown, unknown>;
    try {
      return await fn(outbox, db);
    } catch (e) {
      throw toCliError(e, db.display);
    }
  } finally {
    await db.close({ force }).catch(() => {});
  }
}

function formatAge(ms: number | null | undefined): string {
  if (ms === null || ms === undefined) return "-";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 120_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 7_200_000) return `${(ms / 60_000).toFixed(1)} min`;
  return `${(ms / 3_600_000).toFixed(1)} h`;
}

function table(rows: ReadonlyArray<readonly [string, string]>): string {
  const width = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`).join("\n");
}

export function program(): Command {
  const root = new Command("edge-outbox")
    .description("Operate an edge-outbox table: migrate, inspect, drain, manage dead letters, serve the relay app.")
    .version("0.1.0")
    .showHelpAfterError("(run with --help for usage)")
    .exitOverride();

  withDb(root.command("migrate").description("create or upgrade the outbox tables (idempotent)")).action(
    async (o: DbOptions) => {
      await withOutbox(o, async (_outbox, db) => {
        await db.storage.migrate();
        out(`migrated ${db.display}`);
      });
    },
  );

  withDb(root.command("stats").description("counts, windowed counters and latency"))
    .option("--json", "print the stats as JSON")
    .addOption(new Option("--window <ms>", "counter window in ms").default(300_000).argParser(positiveInt("--window")))
    .action(async (o: DbOptions & { json?: boolean; window: number }) => {
      await withOutbox(o, async (outbox) => {
        const s = await outbox.stats({ windowMs: o.window });
        if (o.json) return out(JSON.stringify(s, null, 2));
        const w = s.window;
        out(table([
          ["pending", String(s.pending)],
          ["due", String(s.due)],
          ["leased", String(s.leased)],
          ["dead", String(s.dead)],
          ["oldest pending", formatAge(s.oldestPendingAgeMs)],
          ["oldest due", formatAge(s.oldestDueAgeMs)],
          [`last ${formatAge(w.windowMs)}`, `delivered ${w.delivered}, retried ${w.retried}, dead ${w.dead}`],
          ["latency", w.avgLatencyMs === null ? "-" : `avg ${formatAge(w.avgLatencyMs)}, max ${formatAge(w.maxLatencyMs)}`],
        ]));
      });
    });

  withTransport(withDb(root.command("drain").description("deliver due messages through a transport")))
    .addOption(new Option("--budget <ms>", "time budget of each drain call, ms").default(10_000).argParser(positiveInt("--budget")))
    .option("--until-empty", "drain again and again until nothing is due (a progress bar shows delivered/retried/dead and the rate)")
    .addOption(new Option("--max-drains <n>", "with --until-empty: stop after this many drain calls").argParser(positiveInt("--max-drains")))
    .addOption(new Option("--batch-size <n>", "rows per claim").default(100).argParser(positiveInt("--batch-size")))
    .addOption(new Option("--concurrency <n>", "sends in flight").default(8).argParser(positiveInt("--concurrency")))
    .addOption(new Option("--max-attempts <n>", "attempts before dead-lettering").default(10).argParser(positiveInt("--max-attempts")))
    .option("--json", "print the final totals as JSON (no progress bar)")
    .option("--no-progress", "no progress bar")
    .action(
      async (o: DbOptions & TransportOptions & {
        budget: number;
        untilEmpty?: boolean;
        maxDrains?: number;
        batchSize: number;
        concurrency: number;
        maxAttempts: number;
        json?: boolean;
        progress: boolean;
      }) => {
        const transport = await resolveTransport(o);
        await withOutbox(o, async (outbox) => {
          const relay = createRelay({
            outbox,
            transport,
            batchSize: o.batchSize,
            concurrency: o.concurrency,
            maxAttempts: o.maxAttempts,
          });
          const backlog = (await outbox.stats()).pending;
          const progress = new ProgressLine(process.stderr, o.progress && !o.json);
          const totals: Totals = emptyTotals();
          const started = Date.now();
          const add = (r: DrainReport) => {
            totals.drains++;
            totals.claimed += r.claimed;
            totals.delivered += r.delivered;
            totals.retried += r.retried;
            totals.dead += r.dead;
            totals.released += r.released;
            totals.leaseLost += r.leaseLost;
          };
          let stoppedAtMax = false;
          for (;;) {
            // One drain call; with --until-empty, short calls (≤ 1 s) so the bar moves.
            const budgetMs = o.untilEmpty ? Math.min(o.budget, 1_000) : o.budget;
            let report: DrainReport;
            try {
              report = await relay.drain({ budgetMs });
            } catch (e) {
              progress.update(renderProgress(totals, backlog, Date.now() - started), true);
              const err = toCliError(e, undefined);
              if (err.exitCode === EXIT.FAILURE) throw new CliError(EXIT.INCOMPLETE, `drain failed: ${err.message}`, { cause: e });
              throw err;
            }
            add(report);
            progress.update(renderProgress(totals, backlog, Date.now() - started));
            if (!o.untilEmpty) break;
            if (report.claimed === 0 && !report.more) break;
            if (o.maxDrains !== undefined && totals.drains >= o.maxDrains) {
              stoppedAtMax = true;
              break;
            }
          }
          const elapsedMs = Date.now() - started;
          progress.update(renderProgress(totals, backlog, elapsedMs), true);
          const left = await outbox.stats();
          if (o.json) {
            out(JSON.stringify({ ...totals, elapsedMs, pending: left.pending, due: left.due, dead: left.dead }));
          } else {
            out(
              `drained in ${totals.drains} call(s), ${formatAge(elapsedMs)}: delivered ${totals.delivered}, retried ${totals.retried}, ` +
                `dead ${totals.dead}, released ${totals.released}; left pending ${left.pending} (due ${left.due}), dead letters ${left.dead}`,
            );
          }
          if (stoppedAtMax) throw new CliError(EXIT.INCOMPLETE, `stopped after --max-drains ${o.maxDrains} with ${left.due} due`);
        });
      },
    );

  const dead = root.command("dead").description("dead letters: list, show, replay, purge");
  withDb(dead.command("list").description("list dead letters, oldest first"))
    .addOption(new Option("--limit <n>", "how many").default(50).argParser(positiveInt("--limit")))
    .option("--cursor <cursor>", "the cursor printed by the previous page")
    .option("--json", "print JSON")
    .action(async (o: DbOptions & { limit: number; cursor?: string; json?: boolean }) => {
      await withOutbox(o, async (outbox) => {
        const page = await outbox.deadLetters.list({ limit: o.limit, cursor: o.cursor ?? null });
        if (o.json) return out(JSON.stringify(page, null, 2));
        if (page.items.length === 0) return out("no dead letters");
        for (const d of page.items) {
          out(`${d.id}  ${d.topic}  key=${d.key ?? "-"}  attempts=${d.attempts}  dead ${new Date(d.deadAt).toISOString()}  ${d.lastError ?? ""}`);
        }
        if (page.cursor) out(`next page: --cursor ${page.cursor}`);
      });
    });
  withDb(dead.command("show").description("show one dead letter with its payload").argument("<id>", "message id"))
    .action(async (id: string, o: DbOptions) => {
      await withOutbox(o, async (outbox) => {
        for (let cursor: string | null = null;;) {
          const page: DeadLetterPage = await outbox.deadLetters.list({ limit: 500, cursor });
          const found = page.items.find((d) => d.id === id);
          if (found) return out(JSON.stringify(found, null, 2));
          if (!page.cursor) throw new CliError(EXIT.NOT_FOUND, `no dead letter with id ${id}`);
          cursor = page.cursor;
        }
      });
    });
  withDb(dead.command("replay").description("make dead letters pending again (attempts reset)").argument("<ids...>", "message ids"))
    .action(async (ids: string[], o: DbOptions) => {
      await withOutbox(o, async (outbox) => {
        const missing: string[] = [];
        for (const id of ids) {
          if (await outbox.deadLetters.replay(id)) out(`replayed ${id}`);
          else missing.push(id);
        }
        if (missing.length) throw new CliError(EXIT.NOT_FOUND, `no dead letter with id ${missing.join(", ")}`);
      });
    });
  withDb(dead.command("purge").description("delete dead letters older than a duration, in bounded chunks"))
    .requiredOption("--older-than <duration>", "e.g. 7d, 12h, 30m, 0s (everything)", parseDuration)
    .addOption(new Option("--limit <n>", "rows per chunk").default(1000).argParser(positiveInt("--limit")))
    .action(async (o: DbOptions & { olderThan: number; limit: number }) => {
      await withOutbox(o, async (outbox) => {
        let total = 0;
        for (;;) {
          const n = await outbox.deadLetters.purge({ olderThan: Date.now() - o.olderThan, limit: o.limit });
          total += n;
          if (n < o.limit) break;
        }
        out(`purged ${total} dead letter(s)`);
      });
    });

  withTransport(withDb(root.command("serve").description("serve the relay app (POST /drain, /health, /stats, …) over HTTP")))
    .addOption(new Option("--port <n>", "port (0: any free port)").default(8787).argParser((v: string) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 0 || n > 65535) throw new CliError(EXIT.USAGE, `--port must be 0–65535, got ${JSON.stringify(v)}`);
      return n;
    }))
    .option("--host <host>", "interface to listen on", "127.0.0.1")
    .addOption(new Option("--budget <ms>", "budget of each /drain call, ms").default(8_000).argParser(positiveInt("--budget")))
    .action(async (o: DbOptions & TransportOptions & { port: number; host: string; budget: number }) => {
      const { serve } = await import("./serve.ts");
      await serve(o);
    });

  return root;
}

function parseDuration(value: string): number {
  const m = /^(\d+)(ms|s|m|h|d)$/.exec(value.trim());
  if (!m) throw new CliError(EXIT.USAGE, `--older-than must look like 7d, 12h, 30m, 10s or 500ms, got ${JSON.stringify(value)}`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as "ms" | "s" | "m" | "h" | "d"];
  return Number(m[1]) * unit;
}

/** Runs the CLI with `argv` (without the runtime and script) and resolves the exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  try {
    await program().parseAsync([...argv], { from: "user" });
    return EXIT.OK;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === "commander.helpDisplayed" || e.code === "commander.version" || e.exitCode === 0) return EXIT.OK;
      // An option parser's CliError surfaces wrapped by commander in some versions; keep its code.
      return EXIT.USAGE;
    }
    if (e instanceof CliError) {
      process.stderr.write(`edge-outbox: ${e.message}\n`);
      return e.exitCode;
    }
    process.stderr.write(`edge-outbox: ${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
    return EXIT.FAILURE;
  }
}

const code = await main(process.argv.slice(2));
process.exitCode = code;
