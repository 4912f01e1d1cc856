// Bundle size of a bearer-only relay worker (core + hono relay app + a storage adapter + the webhook transport),
// bundled as a user's build does (esbuild, minified, the workerd conditions) and gzipped, against a bare Hono app
// bundled the same way in the same run. Run alone: `node --import tsx bench/bundle-size.ts`; in `npm run bench`
// through bundleSizeSection (integrated by bench/main.ts).
import { build, type Metafile } from "esbuild";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { gzipSync } from "node:zlib";
import { type BenchConfig, Results } from "./lib.ts";

const ROOT = resolve(import.meta.dirname, "..");

/** One measured bundle. */
export interface BundleFigure {
  readonly name: string;
  /** Minified bytes. */
  readonly minified: number;
  /** Minified + gzipped bytes (level 9). */
  readonly gzipped: number;
  /** The largest contributors to the minified output, `path: bytes`. */
  readonly top: readonly string[];
  /** Every input that put bytes into the output (repo-relative, or `node_modules/<package>/…`). */
  readonly inputs: readonly string[];
  /** Imports left in the output (e.g. `node:*`): a worker must have none. */
  readonly imports: readonly string[];
}

const worker = (storage: string, storageImport: string, driver = ""): string => `
  import { createOutbox, createRelay } from "@root/mod.ts";
  import { webhookTransport } from "@root/adapters/http/mod.ts";
  import { createRelayApp } from "@root/adapters/hono/mod.ts";
  ${storageImport}
  ${driver}
  export default {
    fetch(request, env) {
      const outbox = createOutbox({ storage: ${storage} });
      const relay = createRelay({ outbox, transport: webhookTransport({ url: env.WEBHOOK_URL, secret: env.WEBHOOK_SECRET }) });
      return createRelayApp({ relay, outbox, auth: { drain: env.CRON_SECRET } }).fetch(request);
    },
  };
`;

/** The bundles measured: a bare Hono app (baseline) and the bearer-only relay worker per storage. */
export function bundleCases(): Array<{ name: string; source: string }> {
  const cases = [
    { name: "bare Hono app (baseline)", source: `import { Hono } from "hono";\nexport default new Hono().get("/", (c) => c.text("ok"));` },
    {
      name: "relay worker: core + hono app + libSQL adapter + webhook",
      source: worker("libsqlStorage(env.CLIENT)", `import { libsqlStorage } from "@root/adapters/libsql/mod.ts";`),
    },
    {
      name: "relay worker: … + @libsql/client/web driver",
      source: worker("libsqlStorage(createClient({ url: env.TURSO_DATABASE_URL, authToken: env.TURSO_AUTH_TOKEN }))",
        `import { libsqlStorage } from "@root/adapters/libsql/mod.ts";`, `import { createClient } from "@libsql/client/web";`),
    },
  ];
  if (existsSync(join(ROOT, "adapters/d1/mod.ts"))) {
    cases.splice(1, 0, {
      name: "relay worker: core + hono app + D1 adapter + webhook",
      source: worker("d1Storage(env.DB)", `import { d1Storage } from "@root/adapters/d1/mod.ts";`),
    });
  }
  return cases;
}

/** A worker bundled as a user would (esbuild, workerd conditions): the output and the inputs that put bytes in it. */
export interface WorkerBundle {
  bytes: Uint8Array;
  text: string;
  metafile: Metafile;
  /** Metafile paths of the inputs with bytes in the output (a module tree-shaken away entirely puts none). */
  inputs: string[];
  /** The output's remaining imports (a worker bundle should have none). */
  imports: string[];
}

/** Bundles one worker source (`@root/` = the repository) in a temp dir that is removed afterwards. */
export async function bundleWorker(source: string, options: { minify: boolean }): Promise<WorkerBundle> {
  const dir = mkdtempSync(join(tmpdir(), "edge-outbox-bundle-"));
  try {
    const entry = join(dir, "worker.ts");
    writeFileSync(entry, source.replaceAll("@root/", `${ROOT}/`));
    const result = await build({
      entryPoints: [entry],
      bundle: true,
      write: false,
      format: "esm",
      platform: "neutral",
      target: "es2022",
      conditions: ["workerd", "worker", "browser"],
      mainFields: ["module", "main"],
      nodePaths: [join(ROOT, "node_modules")],
      minify: options.minify,
      metafile: true,
      logLevel: "silent",
    });
    const file = result.outputFiles[0]!;
    const output = Object.values(result.metafile.outputs)[0]!;
    return {
      bytes: file.contents,
      text: file.text,
      metafile: result.metafile,
      inputs: Object.entries(output.inputs).filter(([, i]) => i.bytesInOutput > 0).map(([path]) => path),
      imports: output.imports.map((i) => i.path),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Bundles one worker source (minified) and measures it. */
export async function measureBundle(name: string, source: string): Promise<BundleFigure> {
  const b = await bundleWorker(source, { minify: true });
  return {
    name,
    minified: b.bytes.length,
    gzipped: gzipSync(b.bytes, { level: 9 }).length,
    top: topInputs(b.metafile, 6),
    inputs: b.inputs.map((path) => resolve(path).replace(/^.*\/node_modules\//, "node_modules/").replace(`${ROOT}/`, "")),
    imports: b.imports,
  };
}

function topInputs(meta: Metafile, n: number): string[] {
  const output = Object.values(meta.outputs)[0]!;
  const byPackage = new Map<string, number>();
  for (const [path, info] of Object.entries(output.inputs)) {
    const abs = resolve(path);
    const m = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(abs);
    const key = m ? m[1]! : abs.startsWith(ROOT) ? relative(ROOT, abs) : "(the worker itself)";
    byPackage.set(key, (byPackage.get(key) ?? 0) + info.bytesInOutput);
  }
  return [...byPackage].sort((a, b) => b[1] - a[1]).slice(0, n).map(([k, b]) => `${k}: ${(b / 1024).toFixed(1)} kB`);
}

const kB = (bytes: number): number => Math.round(bytes / 102.4) / 10;

/** The bench section: one row per bundle, gzipped kB, as a ratio to the bare Hono app. */
export async function bundleSizeSection(_cfg: BenchConfig | null, results: Results): Promise<BundleFigure[]> {
  const figures: BundleFigure[] = [];
  for (const c of bundleCases()) figures.push(await measureBundle(c.name, c.source));
  const base = figures[0]!;
  for (const f of figures) {
    results.compare("bundle", `${f.name}, min+gz`, kB(f.gzipped), "kB", { name: "bare Hono app", value: kB(base.gzipped) }, undefined,
      `${kB(f.minified)} kB minified; ${f.top.slice(0, 4).join(", ")}`);
  }
  return figures;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const results = new Results();
  const figures = await bundleSizeSection(null, results);
  console.log("\n| bundle | minified | min+gz | largest parts |\n|---|---:|---:|---|");
  for (const f of figures) console.log(`| ${f.name} | ${kB(f.minified)} kB | ${kB(f.gzipped)} kB | ${f.top.join(", ")} |`);
}
