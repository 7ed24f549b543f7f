import { test } from "node:test";
import assert from "node:assert/strict";
import { byteLevelTokenizerJson, BYTE_EOS_ID } from "../src/byte-tokenizer.ts";
import { tokenizerFromJson } from "../src/tokenizer.ts";

test("byte-level tokenizer: ids are the UTF-8 bytes, decode inverts encode", () => {
  const tok = tokenizerFromJson(byteLevelTokenizerJson());
  for (const s of ["Hello, world!", "  naïve café — 日本語 🐍\n\ttabs", "", "\u0000\u007f"]) {
    assert.deepEqual(Array.from(tok.encode(s)), Array.from(Buffer.from(s, "utf8")));
    assert.equal(tok.decode(tok.encode(s)), s);
  }
  assert.equal(tok.vocabSize, BYTE_EOS_ID + 1);
  assert.deepEqual(Array.from(tok.encode("<|endoftext|>")), [BYTE_EOS_ID]);
  assert.equal(tok.decode([104, 105, BYTE_EOS_ID]), "hi");
});
