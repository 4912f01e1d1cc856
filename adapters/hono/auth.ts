/**
 * Credentials of the relay app: scoped bearer secrets and an optional QStash signature verifier given by the user
 * (so this module, and `edge-outbox/hono`, import no QStash code). Internal: `mod.ts` re-exports the public types.
 *
 * @module
 */
import * as v from "valibot";

/**
 * What a credential may do. `drain`: `POST /drain`. `metrics`: `GET /metrics`. `read`: the dashboard, `GET /health`,
 * `GET /stats`, `GET /metrics`, `GET /dead-letters`. `admin`: everything `read` may, plus replaying and purging dead
 * letters. A drain credential reads nothing, and a read credential changes nothing.
 */
export type RelayAppScope = "drain" | "metrics" | "read" | "admin";

/** What a QStash verifier is asked to check (the fields `Receiver.verify` of `@upstash/qstash` takes). */
export interface QstashVerifyRequest {
  /** The `Upstash-Signature` header. */
  readonly signature: string;
  /** The raw request body (at most `maxBodyBytes`). */
  readonly body: string;
  /** The URL QStash called: `publicUrl` plus the route path and query. */
  readonly url: string;
  /** Seconds of clock difference tolerated on `nbf` and `exp`. */
  readonly clockTolerance: number;
}

/**
 * A QStash signature verifier object: `new Receiver({ currentSigningKey, nextSigningKey })` from `@upstash/qstash`
 * fits (typed structurally, so this package never imports the SDK). `verify` resolves true for a valid signature;
 * false, a rejection or a throw all mean invalid.
 */
export interface QstashReceiver {
  /** Checks a signature against the body and URL. */
  verify(request: QstashVerifyRequest): Promise<boolean>;
}

/** A QStash signature verifier function, with the contract of {@link QstashReceiver.verify}. */
export type QstashVerify = (request: QstashVerifyRequest) => boolean | Promise<boolean>;

/** How QStash-signed requests are accepted. */
export interface RelayAppQstash {
  /** A `Receiver` from `@upstash/qstash`, or a function with the same contract. */
  verifier: QstashReceiver | QstashVerify;
  /**
   * What a valid signature may do. Anyone who can publish to your QStash account can sign, so keep this to what
   * schedules, nudges and follow-ups need. @default ["drain"]
   */
  scopes?: readonly RelayAppScope[] | undefined;
  /** Seconds of clock difference tolerated on the signature's `nbf` and `exp`. @default 0 */
  clockToleranceSeconds?: number | undefined;
}

/**
 * Bearer secrets: one secret, or several (rotation: accept the old and the new one for a while). Each secret must be
 * at least {@link MIN_SECRET_LENGTH} (16) characters — Vercel recommends at least 16 random characters for `CRON_SECRET`
 * — and may appear in one scope only.
 */
export type BearerSecrets = string | readonly string[];

/**
 * Who may call the relay app, per scope. At least one credential is required. A route group whose scope no
 * credential grants is not served (404).
 */
export interface RelayAppAuth {
  /** Bearer secrets for `POST /drain`, e.g. Vercel's `CRON_SECRET` (which Vercel Cron sends as `Authorization: Bearer`). @default none */
  drain?: BearerSecrets | undefined;
  /** Bearer secrets for `GET /metrics` only (a Prometheus scraper's token). @default none */
  metrics?: BearerSecrets | undefined;
  /** Bearer secrets for the read-only routes: dashboard, `/health`, `/stats`, `/metrics`, `GET /dead-letters`. @default none */
  read?: BearerSecrets | undefined;
  /** Bearer secrets for everything `read` may, plus dead-letter replay and purge. @default none */
  admin?: BearerSecrets | undefined;
  /** Accept QStash signatures (schedules, nudges, follow-ups), for the drain scope by default. Needs `publicUrl`. @default none */
  qstash?: RelayAppQstash | undefined;
}

/** The shortest bearer secret accepted, in characters. */
export const MIN_SECRET_LENGTH = 16;

const SCOPES = ["drain", "metrics", "read", "admin"] as const satisfies readonly RelayAppScope[];
/** The scopes each credential kind grants. */
const GRANTS: Record<RelayAppScope, readonly RelayAppScope[]> = {
  drain: ["drain"],
  metrics: ["metrics"],
  read: ["read", "metrics"],
  admin: ["admin", "read", "metrics"],
};

const secret = v.pipe(
  v.string(`must be a string of at least ${MIN_SECRET_LENGTH} characters`),
  v.minLength(MIN_SECRET_LENGTH, `must be at least ${MIN_SECRET_LENGTH} characters (use a random secret, e.g. openssl rand -hex 32)`),
);
const secrets = v.optional(v.union(
  [secret, v.pipe(v.array(secret), v.minLength(1, "must not be an empty list"))],
  `must be a secret of at least ${MIN_SECRET_LENGTH} characters, or a non-empty list of them`,
));

/** The valibot schema of {@link RelayAppAuth}. */
export const authSchema: v.GenericSchema<RelayAppAuth> = v.pipe(
  v.looseObject({
    drain: secrets,
    metrics: secrets,
    read: secrets,
    admin: secrets,
    qstash: v.optional(v.strictObject({
      verifier: v.custom<QstashReceiver | QstashVerify>(
        (x) => typeof x === "function" || (typeof x === "object" && x !== null && typeof (x as QstashReceiver).verify === "function"),
        "must be a Receiver from @upstash/qstash or a verify function ({ signature, body, url }) => boolean",
      ),
      scopes: v.optional(v.pipe(v.array(v.picklist(SCOPES, `must be one of ${SCOPES.join(", ")}`)), v.minLength(1, "must not be empty"))),
      clockToleranceSeconds: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(3_600))),
    })),
  }),
  v.check((a) => unknownKeys(a).length === 0, (issue) => {
    const unknown = unknownKeys(issue.input as object);
    return `unknown option ${unknown.map((k) => `auth.${k}`).join(", ")}: the credentials are auth.drain, auth.metrics, ` +
      `auth.read, auth.admin (bearer secrets per scope) and auth.qstash${unknown.includes("bearer") ? " (auth.bearer is now auth.drain)" : ""}`;
  }),
  v.check(
    (a) => SCOPES.some((s) => a[s] !== undefined) || a.qstash !== undefined,
    "configure at least one credential: auth.drain, auth.metrics, auth.read, auth.admin (bearer secrets) or auth.qstash",
  ),
  v.check((a) => {
    const seen = new Set<string>();
    for (const s of SCOPES) {
      for (const x of list(a[s])) {
        if (seen.has(x)) return false;
        seen.add(x);
      }
    }
    return true;
  }, "a bearer secret may appear in one scope only (a shared secret would defeat the scoping)"),
);

function unknownKeys(a: object): string[] {
  return Object.keys(a).filter((k) => k !== "qstash" && !(SCOPES as readonly string[]).includes(k));
}

function list(s: BearerSecrets | undefined): readonly string[] {
  return s === undefined ? [] : typeof s === "string" ? [s] : s;
}

/** The outcome of looking at a request's headers, before its body is read. */
export type HeaderCheck =
  /** A bearer secret granting the route's scope. */
  | { readonly kind: "granted" }
  /** A valid bearer secret of another scope. */
  | { readonly kind: "forbidden" }
  /** A well-formed QStash signature that may grant the scope: verify it against the body. */
  | { readonly kind: "signature"; readonly signature: string }
  /** Nothing that can grant the scope. */
  | { readonly kind: "unauthorized" };

/** Checks credentials, bearer first (headers only), then QStash signatures (body needed). */
export interface Credentials {
  /** The scopes some credential grants (route groups of other scopes are not served). */
  readonly granted: ReadonlySet<RelayAppScope>;
  /** Looks at the headers only: never reads the body. `url` is the URL QStash would have signed. */
  check(headers: { authorization?: string | undefined; signature?: string | undefined }, scope: RelayAppScope, url: string): Promise<HeaderCheck>;
  /** Verifies a signature that {@link Credentials.check} let through, against the body. */
  verify(signature: string, body: string, url: string): Promise<boolean>;
}

/** Builds the credential checker from parsed auth options. */
export function credentials(auth: RelayAppAuth): Credentials {
  const bearers: Array<{ secret: string; scopes: readonly RelayAppScope[] }> = [];
  const granted = new Set<RelayAppScope>();
  for (const kind of SCOPES) {
    for (const s of list(auth[kind])) {
      bearers.push({ secret: s, scopes: GRANTS[kind] });
      for (const g of GRANTS[kind]) granted.add(g);
    }
  }
  const qstash = auth.qstash;
  const qstashScopes = new Set<RelayAppScope>();
  for (const kind of qstash ? qstash.scopes ?? ["drain"] : []) for (const g of GRANTS[kind]) qstashScopes.add(g);
  for (const g of qstashScopes) granted.add(g);
  const tolerance = qstash?.clockToleranceSeconds ?? 0;
  let digests: Promise<Uint8Array[]> | undefined;

  return {
    granted,
    async check(headers, scope, url) {
      const bearer = headers.authorization === undefined ? null : /^Bearer\s+(\S.*)$/i.exec(headers.authorization)?.[1]?.trim();
      if (bearer && bearers.length > 0) {
        digests ??= Promise.all(bearers.map((b) => sha256(b.secret)));
        const [given, known] = await Promise.all([sha256(bearer), digests]);
        let match = -1;
        for (let i = 0; i < known.length; i++) if (constantTimeEqual(given, known[i]!) && match < 0) match = i; // no early exit
        if (match >= 0) return bearers[match]!.scopes.includes(scope) ? { kind: "granted" } : { kind: "forbidden" };
      }
      const signature = headers.signature;
      if (signature !== undefined && qstashScopes.has(scope) && plausibleSignature(signature, url, tolerance)) {
        return { kind: "signature", signature };
      }
      return { kind: "unauthorized" };
    },
    async verify(signature, body, url) {
      if (!qstash) return false;
      const request: QstashVerifyRequest = { signature, body, url, clockTolerance: tolerance };
      try {
        const verifier = qstash.verifier;
        return (await (typeof verifier === "function" ? verifier(request) : verifier.verify(request))) === true;
      } catch {
        return false;
      }
    },
  };
}

const B64URL_RE = /^[A-Za-z0-9_-]+$/;

/**
 * Checks, without the body and without the key, that a signature can be a valid QStash signature for `url`: a JWT
 * (three base64url parts) with an HS256 header and the claims QStash puts in it (`iss: "Upstash"`, `sub`: the URL
 * it called, `exp`/`nbf` around now, `body`: the body's hash). Anything else is refused before the body is read;
 * what passes is still verified by the user's verifier (the key and the body hash are checked there).
 */
export function plausibleSignature(signature: string, url: string, toleranceS: number, nowMs: number = Date.now()): boolean {
  if (signature.length > 4_096) return false;
  const parts = signature.split(".");
  if (parts.length !== 3 || !parts.every((p) => B64URL_RE.test(p))) return false;
  const header = decodeJson(parts[0]!);
  const claims = decodeJson(parts[1]!);
  if (header?.alg !== "HS256" || !claims) return false;
  const now = Math.floor(nowMs / 1000);
  const { iss, sub, exp, nbf, body } = claims;
  if (iss !== "Upstash" || sub !== url || typeof body !== "string") return false;
  if (typeof exp !== "number" || exp <= now - toleranceS) return false;
  if (nbf !== undefined && (typeof nbf !== "number" || nbf > now + toleranceS)) return false;
  return true;
}

function decodeJson(part: string): Record<string, unknown> | null {
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0));
    const value: unknown = JSON.parse(new TextDecoder().decode(bytes));
    return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** SHA-256 of a string. */
export async function sha256(s: string): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(s)));
}

function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}
