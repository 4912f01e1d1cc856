// Builds the transport `drain` and `serve` send through, from the command line and the environment.
import { pathToFileURL } from "node:url";
import { resolve } from "node:path";
import type { Transport } from "../mod.ts";
import { webhookTransport } from "../adapters/http/mod.ts";
import { qstashTransport } from "../adapters/qstash/mod.ts";
import { CliError, EXIT } from "./errors.ts";

/** The transport flags. Exactly one of them is needed. */
export interface TransportOptions {
  webhook?: string | undefined;
  qstash?: string | undefined;
  transport?: string | undefined;
}

function env(name: string): string | undefined {
  const value = process.env[name];
  return value === undefined || value === "" ? undefined : value;
}

/** Resolves `--webhook`, `--qstash` or `--transport` into a Transport. */
export async function resolveTransport(options: TransportOptions): Promise<Transport> {
  const given = [options.webhook, options.qstash, options.transport].filter((x) => x !== undefined);
  if (given.length !== 1) {
    throw new CliError(
      EXIT.USAGE,
      "choose one transport: --webhook <url> (secret in EDGE_OUTBOX_WEBHOOK_SECRET), --qstash <destination url> " +
        "(token in QSTASH_TOKEN) or --transport <module> (its default export is a Transport)",
    );
  }
  if (options.webhook !== undefined) {
    const secret = env("EDGE_OUTBOX_WEBHOOK_SECRET");
    if (!secret) throw new CliError(EXIT.USAGE, "--webhook needs EDGE_OUTBOX_WEBHOOK_SECRET (a whsec_… signing secret)");
    return webhookTransport({ url: options.webhook, secret });
  }
  if (options.qstash !== undefined) {
    const token = env("QSTASH_TOKEN");
    if (!token) throw new CliError(EXIT.USAGE, "--qstash needs QSTASH_TOKEN");
    let mod: { Client: new (o: object) => Parameters<typeof qstashTransport>[0] };
    try {
      mod = (await import("@upstash/qstash")) as typeof mod;
    } catch (e) {
      throw new CliError(EXIT.USAGE, "--qstash needs the @upstash/qstash package: npm install @upstash/qstash", { cause: e });
    }
    const baseUrl = env("QSTASH_URL");
    const client = new mod.Client({ token, retry: false, ...(baseUrl ? { baseUrl } : {}) });
    return qstashTransport(client, { destination: options.qstash });
  }
  const path = resolve(options.transport!);
  let mod: { default?: unknown };
  try {
    mod = (await import(pathToFileURL(path).href)) as { default?: unknown };
  } catch (e) {
    throw new CliError(EXIT.USAGE, `--transport ${path} could not be loaded: ${e instanceof Error ? e.message : String(e)}`, {
      cause: e,
    });
  }
  let value = mod.default;
  if (typeof value === "function") value = await (value as () => unknown)();
  if (!value || typeof (value as Transport).send !== "function") {
    throw new CliError(EXIT.USAGE, `--transport ${path}: its default export must be a Transport (an object with send()) or a function returning one`);
  }
  return value as Transport;
}
