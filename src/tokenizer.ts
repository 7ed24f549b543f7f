/**
 * Tokenizers (Node): loadTokenizer reads a folder's tokenizer.json. Building a tokenizer from parsed JSON and the
 * streaming decoder live in ./tokenizer-core.ts (usable in browsers) and are re-exported here.
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import { MambaError, check } from "./errors.ts";
import { type Tokenizer, tokenizerFromJson } from "./tokenizer-core.ts";
import { ggufInFolder, ggufTokenizerJson, isGgufPath, readGgufHeader } from "./io/gguf.ts";

export { TextStreamer, tokenizerFromJson } from "./tokenizer-core.ts";
export type { Tokenizer } from "./tokenizer-core.ts";

/**
 * A folder holding tokenizer.json, or the file itself; or a GGUF model file (its tokenizer metadata), or a folder
 * holding one GGUF file and no tokenizer.json.
 */
export async function loadTokenizer(source: string): Promise<Tokenizer> {
  const stat = await fs.stat(source).catch(() => null);
  check(stat, `tokenizer not found: ${source}`);
  const gguf = stat.isFile() && isGgufPath(source) ? source
    : stat.isDirectory() && !(await fs.stat(path.join(source, "tokenizer.json")).catch(() => null)) ? await ggufInFolder(source) : null;
  if (gguf !== null) {
    const header = await readGgufHeader(gguf);
    const json = ggufTokenizerJson(header, gguf);
    check(json !== null, `${gguf} holds no tokenizer (no tokenizer.ggml.* metadata)`);
    return tokenizerFromJson(json, `${gguf} (tokenizer metadata)`);
  }
  const file = stat.isDirectory() ? path.join(source, "tokenizer.json") : source;
  let text: string;
  try {
    text = await fs.readFile(file, "utf8");
  } catch {
    throw new MambaError(`no tokenizer.json in ${source}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new MambaError(`${file} is not valid JSON`);
  }
  return tokenizerFromJson(json, file);
}
