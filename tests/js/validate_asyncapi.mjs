// Validates an AsyncAPI document with the AsyncAPI project's own parser (@asyncapi/parser).
// Usage: node tests/js/validate_asyncapi.mjs DOCUMENT.json
// Prints every diagnostic as one JSON line {severity, code, message, path}; exits 1 when any has
// severity error (0) or the document could not be parsed, 0 otherwise, 2 on a usage error.
import { readFile } from "node:fs/promises";
import { Parser } from "@asyncapi/parser";

const SEVERITY = ["error", "warning", "information", "hint"];

const [path] = process.argv.slice(2);
if (!path) {
  console.error("usage: node validate_asyncapi.mjs DOCUMENT.json");
  process.exit(2);
}
const parser = new Parser();
const { document, diagnostics } = await parser.parse(await readFile(path, "utf8"));
let failed = !document;
for (const diagnostic of diagnostics) {
  const severity = SEVERITY[diagnostic.severity] ?? String(diagnostic.severity);
  failed ||= diagnostic.severity === 0;
  console.log(JSON.stringify({ severity, code: diagnostic.code, message: diagnostic.message,
                               path: (diagnostic.path ?? []).join(".") }));
}
process.exit(failed ? 1 : 0);
