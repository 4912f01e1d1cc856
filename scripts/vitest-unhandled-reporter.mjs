// A vitest reporter that writes the run's *unhandled* errors (an error thrown outside any test: a rejected promise
// nobody awaited, a timer that threw after its test ended) to `$RESULTS_DIR/vitest-unhandled.json`. vitest exits 1
// for them while its JSON report shows every test passed; scripts/count-results.mjs reads this file and names each
// one (message, first stack lines, the test file and test vitest attributes it to) as a failed case, so the cause is
// in the last lines of the CI log instead of somewhere in the middle.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export default class UnhandledErrorsReporter {
  onTestRunEnd(_modules, unhandledErrors) {
    const dir = process.env.RESULTS_DIR || "test-results";
    const errors = (unhandledErrors ?? []).map((e) => ({
      name: String(e?.name ?? "Error"),
      message: String(e?.message ?? e).slice(0, 500),
      stack: String(e?.stack ?? "").split("\n").slice(0, 8).join("\n"),
      testPath: e?.VITEST_TEST_PATH ?? null,
      testName: e?.VITEST_TEST_NAME ?? null,
      afterTeardown: e?.VITEST_AFTER_ENV_TEARDOWN === true,
    }));
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "vitest-unhandled.json"), JSON.stringify(errors, null, 2));
  }
}
