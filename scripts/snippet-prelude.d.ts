// Free variables of the README and @example snippets (see scripts/snippets.ts). A global script: a snippet that
// declares one of these names itself shadows it.
declare const placeholder: unknown;
