// The storage conformance suite on a libSQL file under `deno test` (run by scripts/test.sh, not vitest).
//
// Each fixture's close waits 25 ms after closing its clients. Without the pause Deno 2.9 segfaulted at exit in 7 of
// 18 runs (0 of 38 with it), after every case had passed and before the JUnit report was written: gdb shows the
// SIGSEGV on a tokio worker thread inside @libsql's native module (index.node), i.e. the module's own threads were
// still busy with closed connections when the next case or the process teardown ran.
import { storageConformance } from "../../src/testing/mod.ts";
import { libsqlFileFixture } from "../libsql-fixtures.ts";
import { harness } from "./deno-harness.ts";

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

storageConformance(harness, {
  name: "libsql file (deno)",
  create: async () => {
    const f = await libsqlFileFixture();
    return {
      ...f,
      close: async () => {
        await f.close();
        await sleep(25);
      },
    };
  },
  semantics: 2,
  deliveryPositions: true,
});
