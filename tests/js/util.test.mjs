// plainText: previews shown without Markdown marks (the server strips them too).

import { test } from "node:test";
import assert from "node:assert/strict";

import { plainText } from "../../static/js/util.js";

test("Markdown marks are taken out of a preview", () => {
  assert.equal(plainText("# Why does `ls` show *hidden* files?"), "Why does ls show hidden files?");
  assert.equal(plainText("```sh\nls -a\n```\nand **bold**, __strong__, ~~gone~~"), "ls -a and bold, strong, gone");
  assert.equal(plainText("see [the docs](http://x.test) and ![a chart](c.png)"), "see the docs and a chart");
  assert.equal(plainText("> quoted\n- one\n2. two"), "quoted one two");
});

test("text that only looks like Markdown is left alone", () => {
  assert.equal(plainText("snake_case_name and 2 * 3 * 4"), "snake_case_name and 2 * 3 * 4");
  assert.equal(plainText(""), "");
  assert.equal(plainText(null), "");
});
