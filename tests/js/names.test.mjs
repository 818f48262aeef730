// static/js/names.js against tests/vectors/names.json, which securechat/names produced.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import { confusable, nameKeys, scriptProblem, skeleton } from "../../static/js/names.js";

const vectors = JSON.parse(readFileSync(new URL("../vectors/names.json", import.meta.url), "utf8"));

test("keys, skeletons and script rules equal the Python vectors", () => {
  for (const v of vectors.names) {
    assert.deepEqual(nameKeys(v.name), v.keys, v.name);
    assert.equal(skeleton(v.name), v.skeleton, v.name);
    assert.equal(scriptProblem(v.name), v.problem, v.name);
  }
});

test("confusable pairs agree with Python both ways round", () => {
  for (const p of vectors.pairs) {
    assert.equal(confusable(p.a, p.b), p.confusable, `${p.a} ~ ${p.b}`);
    assert.equal(confusable(p.b, p.a), p.confusable, `${p.b} ~ ${p.a}`);
  }
});
