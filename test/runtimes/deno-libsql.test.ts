// The storage conformance suite on a libSQL file under `deno test` (run by scripts/test.sh, not vitest).
import { storageConformance } from "../../src/testing/mod.ts";
import { libsqlFileFixture } from "../libsql-fixtures.ts";
import { harness } from "./deno-harness.ts";

storageConformance(harness, { name: "libsql file (deno)", create: () => libsqlFileFixture(), semantics: 2, deliveryPositions: true });
