/**
 * The tokenizer against the reference `tokenizers` library's output (fixtures/tokenizer/expected.json), the
 * streaming decoder (never half a character, pieces that add up to the whole decode), and loading errors.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { MambaError, TextStreamer, loadTokenizer } from "../src/index.ts";
import { fixture } from "./helpers/fixtures.ts";
import { TestRng } from "./helpers/random.ts";

const DIR = fixture("tokenizer");
const entries = JSON.parse(readFileSync(path.join(DIR, "expected.json"), "utf8")) as { text: string; ids: number[]; decoded: string }[];

const tmp = mkdtempSync(path.join(os.tmpdir(), "mamba-ts-tok-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

test("the fixture has the cases it promises (a multi-byte character split across tokens included)", () => {
  assert.ok(entries.length >= 5);
  assert.ok(entries.some((e) => /[^\x00-\x7f]/.test(e.text)));
});

test("encode and decode match the reference library on every entry (folder and file paths)", async () => {
  for (const source of [DIR, path.join(DIR, "tokenizer.json")]) {
    const tok = await loadTokenizer(source);
    assert.equal(tok.vocabSize, 400);
    for (const e of entries) {
      assert.deepEqual(Array.from(tok.encode(e.text)), e.ids, `encode ${JSON.stringify(e.text)}`);
      assert.equal(tok.decode(e.ids), e.decoded, `decode ${JSON.stringify(e.text)}`);
      assert.equal(tok.decode(Int32Array.from(e.ids)), e.decoded, "decode of an Int32Array");
    }
    assert.equal(tok.decode([]), "");
  }
});

/** Pushes ids one at a time; returns the pieces (flush last) and how many pushes returned "". */
function stream(tok: Awaited<ReturnType<typeof loadTokenizer>>, ids: readonly number[]) {
  const s = new TextStreamer(tok);
  const pieces = ids.map((id) => s.push(id));
  pieces.push(s.flush());
  return { pieces, held: pieces.slice(0, -1).filter((p) => p === "").length };
}

test("TextStreamer: no piece holds half a character; the pieces add up to decode(all ids)", async () => {
  const tok = await loadTokenizer(DIR);
  let heldSomewhere = false;
  for (const e of entries) {
    const { pieces, held } = stream(tok, e.ids);
    for (const p of pieces) assert.ok(!p.includes("\uFFFD"), `piece ${JSON.stringify(p)} of ${JSON.stringify(e.text)}`);
    assert.equal(pieces.join(""), e.decoded, `streamed ${JSON.stringify(e.text)}`);
    assert.equal(pieces.at(-1), "", "nothing is left for flush when the text ends on a whole character");
    if (/[^\x00-\x7f]/.test(e.text)) heldSomewhere ||= held > 0;
  }
  // the unicode entry really splits a character across tokens, so the test above exercised the holding back
  assert.ok(heldSomewhere, "no token ended mid-character: the fixture does not exercise the streamer");

  // each piece of the unicode entry is whole UTF-8: encoding the pieces one by one gives the same bytes as the whole
  const uni = entries.find((e) => e.text.includes("🐍"))!;
  const { pieces } = stream(tok, uni.ids);
  assert.deepEqual(Buffer.concat(pieces.map((p) => Buffer.from(p, "utf8"))), Buffer.from(uni.decoded, "utf8"));
});

test("TextStreamer on random id sequences: the pieces always add up to decode(all ids)", async () => {
  const tok = await loadTokenizer(DIR);
  const r = new TestRng(8);
  const uni = entries.find((e) => e.text.includes("🐍"))!;
  for (let trial = 0; trial < 200; trial++) {
    // random ids, with stretches of the multi-byte tokens of the unicode entry mixed in
    const ids = Array.from({ length: r.int(1, 25) }, () => (r.next() < 0.5 ? uni.ids[r.int(0, uni.ids.length - 1)]! : r.int(0, tok.vocabSize - 1)));
    const { pieces } = stream(tok, ids);
    assert.equal(pieces.join(""), tok.decode(ids), `ids ${JSON.stringify(ids)}`);
  }
  // a text cut in the middle of a character: the rest comes out of flush as U+FFFD, as decode gives it
  const cut = uni.ids.slice(0, -1);
  const { pieces } = stream(tok, cut);
  assert.equal(pieces.join(""), tok.decode(cut));
  assert.ok(tok.decode(cut).endsWith("\uFFFD"));
});

test("decode rejects ids outside the vocabulary; encode rejects non-strings", async () => {
  const tok = await loadTokenizer(DIR);
  for (const bad of [[400], [-1], [1, 2.5], [1e9]]) assert.throws(() => tok.decode(bad), MambaError, JSON.stringify(bad));
  assert.throws(() => tok.encode(42 as unknown as string), MambaError);
});

test("loadTokenizer errors: missing path, folder without tokenizer.json, bad JSON, not a tokenizer", async () => {
  const rejects = (source: string, ...patterns: RegExp[]) => assert.rejects(loadTokenizer(source), (err: unknown) => {
    assert.ok(err instanceof MambaError, `expected a MambaError, got ${String(err)}`);
    for (const p of patterns) assert.match(err.message, p);
    assert.ok(err.message.includes(source), `message does not name ${source}: ${err.message}`);
    return true;
  });
  await rejects(path.join(tmp, "nothing-here"), /not found/);
  const empty = path.join(tmp, "empty");
  mkdirSync(empty);
  await rejects(empty, /no tokenizer\.json/);
  const badJson = path.join(tmp, "bad");
  mkdirSync(badJson);
  writeFileSync(path.join(badJson, "tokenizer.json"), "{\"model\": {");
  await rejects(badJson, /not valid JSON/);
  const notTok = path.join(tmp, "not-tok.json");
  writeFileSync(notTok, JSON.stringify({ version: "1.0", vocab: { a: 0 } }));
  await rejects(notTok, /not a tokenizer\.json/);
});
