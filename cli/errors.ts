// Exit codes and the mapping from failures to what the user should do. Documented in the README's CLI section.
import { isOutboxError } from "../mod.ts";

/** The CLI's exit codes. */
export const EXIT = {
  /** Success. */
  OK: 0,
  /** An unexpected failure (a bug, or a database error that is none of the below). */
  FAILURE: 1,
  /** Bad usage: unknown command or option, a bad value, a missing --db or transport. */
  USAGE: 2,
  /** The database cannot be reached or opened (refused, unknown host, no answer within --connect-timeout, bad credentials, a file that cannot be opened). */
  UNREACHABLE: 3,
  /** The outbox table does not exist: run `edge-outbox migrate`. */
  NO_SCHEMA: 4,
  /** The thing asked for does not exist (e.g. `dead show <id>` of an unknown id). */
  NOT_FOUND: 5,
  /** `drain` ran but could not finish: the database failed mid-drain, or `--until-empty` stopped at --max-drains. */
  INCOMPLETE: 6,
} as const;

/** A failure with the exit code it maps to and a message that says what to do. */
export class CliError extends Error {
  readonly exitCode: number;
  constructor(exitCode: number, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "CliError";
    this.exitCode = exitCode;
  }
}

const MISSING_TABLE = /no such table|does not exist|relation .* does not exist/i;

/** Whether `e` says the outbox table is missing (the storages' CONFIG hint, or the raw driver text). */
export function isMissingTable(e: unknown): boolean {
  for (let cur: unknown = e, depth = 0; cur && depth < 5; depth++) {
    const message = cur instanceof Error ? cur.message : String(cur);
    if (MISSING_TABLE.test(message)) return true;
    cur = cur instanceof Error ? cur.cause : undefined;
  }
  return false;
}

/** Maps anything thrown by a command to a CliError. */
export function toCliError(e: unknown, db: string | undefined): CliError {
  if (e instanceof CliError) return e;
  if (isMissingTable(e)) {
    return new CliError(EXIT.NO_SCHEMA, `the outbox table does not exist in ${db ?? "the database"}: run \`edge-outbox migrate\` first`, {
      cause: e,
    });
  }
  if (isOutboxError(e, "CONFIG") || isOutboxError(e, "VALIDATION")) return new CliError(EXIT.USAGE, e.message, { cause: e });
  const message = e instanceof Error ? e.message : String(e);
  return new CliError(EXIT.FAILURE, message, { cause: e });
}

/** Wraps a failed first contact with the database. */
export function unreachable(e: unknown, db: string): CliError {
  const detail = describe(e);
  return new CliError(EXIT.UNREACHABLE, `cannot reach the database ${db}: ${detail}`, { cause: e });
}

function describe(e: unknown): string {
  const parts: string[] = [];
  for (let cur: unknown = e, depth = 0; cur && depth < 4; depth++) {
    const text = cur instanceof Error ? cur.message : String(cur);
    const code = (cur as { code?: unknown }).code;
    const item = typeof code === "string" && !text.includes(code) ? `${text} (${code})` : text;
    if (item && !parts.includes(item)) parts.push(item);
    cur = cur instanceof Error ? cur.cause : undefined;
  }
  return parts.join(": ") || "unknown error";
}
