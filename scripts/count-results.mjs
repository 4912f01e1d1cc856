#!/usr/bin/env node
// Sums the real test-case totals of one `npm test` run and prints ONE line: `N passed, N failed[, N skipped]`.
//
// Usage: node scripts/count-results.mjs [results-dir]   (default: test-results)
//
// Inputs, all in the results dir (written by scripts/test.sh):
//   steps.tsv    one line per step: `<name>\t<exit code>\t<kind>\t<report file or ->`
//                kind "case": the step itself is one test case (type-check, publish dry-run)
//                kind "vitest-json" | "junit" | "deno-junit": a runner whose report holds the cases
//   vitest.json  vitest's JSON reporter (Jest-compatible): per-file `assertionResults[].status`
//   bun.xml      bun test JUnit: nested <testsuite>s, every <testcase> is a real test
//   deno.xml     deno test JUnit: flat, and every `describe` is a <testcase> too (steps appear as "a > b > c");
//                only leaf cases count (a case whose name is a prefix "<name> > " of another case is a group)
//
// A runner that exited non-zero but whose report shows no failure (load error, type error, crash) counts one
// failed case; a runner that produced no report counts one failed case. Exit code: 0 only if nothing failed.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

const dir = process.argv[2] ?? "test-results";
const verbose = process.env.COUNT_VERBOSE === "1";
const totals = { passed: 0, failed: 0, skipped: 0 };
const notes = [];

/** Decodes the five XML entities and numeric references. */
function unescapeXml(s) {
  return s
    .replace(/&#x([0-9a-f]+);/gi, (_, h) => String.fromCodePoint(parseInt(h, 16)))
    .replace(/&#(\d+);/g, (_, d) => String.fromCodePoint(Number(d)))
    .replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&quot;/g, '"').replace(/&apos;/g, "'")
    .replace(/&amp;/g, "&");
}

/** Reads the attributes of one start tag. */
function attributes(tag) {
  const out = {};
  for (const m of tag.matchAll(/([\w:.-]+)\s*=\s*("([^"]*)"|'([^']*)')/g)) out[m[1]] = unescapeXml(m[3] ?? m[4] ?? "");
  return out;
}

/**
 * Every <testcase> of a JUnit file with its status: "failed" when it holds <failure> or <error>, "skipped" when it
 * holds <skipped>, else "passed". Text and CDATA never hold a raw "<" tag, so a tag scan is enough.
 */
function junitCases(xml) {
  const text = xml.replace(/<!\[CDATA\[[\s\S]*?\]\]>/g, "").replace(/<!--[\s\S]*?-->/g, "");
  const cases = [];
  let current = null;
  for (const m of text.matchAll(/<(\/?)([\w:-]+)((?:[^>"']|"[^"]*"|'[^']*')*?)(\/?)>/g)) {
    const [, closing, name, attrs, selfClosing] = m;
    if (name === "testcase") {
      if (closing) {
        if (current) cases.push(current);
        current = null;
      } else {
        const c = { ...attributes(attrs), status: "passed" };
        if (selfClosing) cases.push(c);
        else current = c;
      }
    } else if (current && !closing) {
      if (name === "failure" || name === "error") current.status = "failed";
      else if (name === "skipped" && current.status !== "failed") current.status = "skipped";
    }
  }
  return cases;
}

/** Deno: keeps leaf cases; a failed group none of whose descendants failed counts as one failed case. */
function denoLeaves(cases) {
  const leaves = [];
  for (const c of cases) {
    const prefix = `${c.name} > `;
    const children = cases.filter((o) => o !== c && (o.name ?? "").startsWith(prefix));
    if (children.length === 0) leaves.push(c);
    else if (c.status === "failed" && !children.some((o) => o.status === "failed")) {
      leaves.push({ ...c, name: `${c.name} (group)` });
    }
  }
  if (verbose) console.error(`deno: ${cases.length} <testcase> elements, ${leaves.length} leaf cases`);
  return leaves;
}

/**
 * vitest's unhandled errors (scripts/vitest-unhandled-reporter.mjs): each one a failed case named by its message and
 * the test vitest attributes it to, its first stack lines printed with the failures.
 */
function unhandledCases(step) {
  const path = join(dir, "vitest-unhandled.json");
  if (!existsSync(path)) return [];
  let errors;
  try {
    errors = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    return [{ name: `${step}: unreadable ${path}: ${e.message}`, status: "failed" }];
  }
  return errors.map((e) => {
    const where = [e.testPath, e.testName].filter(Boolean).join(" > ") || "no test attributed";
    const teardown = e.afterTeardown ? ", after the environment was torn down" : "";
    return { name: `${step}: unhandled ${e.name}: ${e.message.split("\n")[0]} (in ${where}${teardown})\n${e.stack}`, status: "failed" };
  });
}

/** vitest JSON: per-assertion statuses; a file that failed with no failed test (load error) counts one failure. */
function vitestCases(json) {
  const cases = [];
  for (const file of json.testResults ?? []) {
    let fileFailures = 0;
    for (const a of file.assertionResults ?? []) {
      const status = a.status === "passed" ? "passed" : a.status === "failed" ? "failed" : "skipped";
      if (status === "failed") fileFailures++;
      cases.push({ name: a.fullName ?? a.title, status });
    }
    if (file.status === "failed" && fileFailures === 0) {
      cases.push({ name: `${file.name}: ${String(file.message ?? "failed to run").split("\n")[0]}`, status: "failed" });
    }
  }
  // Cross-check with the Jest-compatible summary counter.
  const perAssertion = (json.testResults ?? []).reduce((n, f) => n + (f.assertionResults?.length ?? 0), 0);
  if (typeof json.numTotalTests === "number" && json.numTotalTests !== perAssertion) {
    console.error(`count-results: vitest numTotalTests=${json.numTotalTests} but ${perAssertion} per-test results`);
  }
  return cases;
}

function add(step, cases) {
  for (const c of cases) {
    totals[c.status]++;
    if (c.status === "failed") {
      const where = c.classname && !String(c.name).includes(" > ") && !c.classname.includes("/") ? ` (${c.classname})` : "";
      notes.push(`FAILED [${step}] ${c.name ?? "?"}${where}`);
    }
  }
}

const stepsFile = join(dir, "steps.tsv");
if (!existsSync(stepsFile)) {
  console.error(`count-results: ${stepsFile} is missing (did scripts/test.sh run?)`);
  console.log("0 passed, 1 failed");
  process.exit(1);
}

for (const line of readFileSync(stepsFile, "utf8").split("\n")) {
  if (!line.trim()) continue;
  const [step, codeText, kind, report] = line.split("\t");
  const code = Number(codeText);
  if (kind === "case") {
    add(step, [{ name: step, status: code === 0 ? "passed" : "failed" }]);
    continue;
  }
  const path = report && report !== "-" ? join(dir, report) : "";
  if (!path || !existsSync(path)) {
    add(step, [{ name: `${step}: no report (exit ${code})`, status: "failed" }]);
    continue;
  }
  let cases;
  try {
    const raw = readFileSync(path, "utf8");
    if (kind === "vitest-json") cases = vitestCases(JSON.parse(raw));
    else if (kind === "deno-junit") cases = denoLeaves(junitCases(raw));
    else cases = junitCases(raw);
  } catch (e) {
    add(step, [{ name: `${step}: unreadable report ${path}: ${e.message}`, status: "failed" }]);
    continue;
  }
  if (cases.length === 0) cases.push({ name: `${step}: the report holds no test case (exit ${code})`, status: "failed" });
  if (kind === "vitest-json") cases.push(...unhandledCases(step));
  if (code !== 0 && !cases.some((c) => c.status === "failed")) {
    cases.push({ name: `${step}: exited ${code} although its report shows no failure`, status: "failed" });
  }
  if (verbose) {
    const f = cases.filter((c) => c.status === "failed").length;
    const s = cases.filter((c) => c.status === "skipped").length;
    console.error(`${step}: ${cases.length - f - s} passed, ${f} failed, ${s} skipped (exit ${code})`);
  }
  add(step, cases);
}

for (const n of notes.slice(0, 50)) console.error(n);
if (notes.length > 50) console.error(`… and ${notes.length - 50} more failures`);
const skipped = totals.skipped ? `, ${totals.skipped} skipped` : "";
console.log(`${totals.passed} passed, ${totals.failed} failed${skipped}`);
process.exit(totals.failed > 0 ? 1 : 0);
