import { describe, expect, it } from "vitest";
import { storageConformance } from "../src/testing/mod.ts";
import { memoryFixture } from "./memory-fixtures.ts";

storageConformance({ describe, it, expect }, { name: "memory", create: memoryFixture, semantics: 2, deliveryPositions: true });
