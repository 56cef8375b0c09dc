#!/usr/bin/env node
// Parses every Terraform file given with HCL's own parser and checks it is formatted as
// `terraform fmt` would write it (hclwrite.Format), without Terraform: both come from HashiCorp's
// Go HCL library compiled to WebAssembly (@cdktf/hcl2json, @cdktf/hcl-tools).
//
//   NODE_PATH=<dir with node_modules/@cdktf> node deploy/terraform/check-hcl.js [--write] FILE...
//
// Exits 1 naming each file that does not parse or is not formatted; --write formats in place.
"use strict";

const fs = require("fs");

let format;
let parse;
try {
  ({ format } = require("@cdktf/hcl-tools"));
  ({ parse } = require("@cdktf/hcl2json"));
} catch (e) {
  console.error("check-hcl: @cdktf/hcl-tools and @cdktf/hcl2json are needed (set NODE_PATH): " + e.message);
  process.exit(2);
}

(async () => {
  const write = process.argv.includes("--write");
  const files = process.argv.slice(2).filter((a) => !a.startsWith("--"));
  if (files.length === 0) {
    console.error("usage: check-hcl.js [--write] FILE...");
    process.exit(2);
  }
  let bad = 0;
  for (const file of files) {
    const source = fs.readFileSync(file, "utf8");
    try {
      await parse(file, source);
    } catch (e) {
      console.log(`${file}: does not parse: ${e.message || e}`);
      bad++;
      continue;
    }
    const formatted = await format(source);
    if (formatted !== source) {
      if (write) {
        fs.writeFileSync(file, formatted);
        console.log(`${file}: formatted`);
      } else {
        console.log(`${file}: not formatted (run with --write)`);
        bad++;
      }
    }
  }
  console.log(`check-hcl: ${files.length - bad} of ${files.length} files parse and are formatted`);
  process.exit(bad ? 1 : 0);
})();
