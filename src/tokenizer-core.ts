/**
 * Tokenizers from a parsed tokenizer.json (the Hugging Face format Mamba checkpoints ship, GPT-NeoX BPE for the
 * released models) run by @huggingface/tokenizers, and an incremental decoder for streaming text. No file system:
 * usable in browsers. Loading a tokenizer.json from a folder: ./tokenizer.ts (Node).
 */
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { MambaError, check } from "./errors.ts";

export interface Tokenizer {
  encode(text: string): Int32Array;
  /** special tokens (end of text, padding) are left out */
  decode(ids: ArrayLike<number>): string;
  readonly vocabSize: number;
}

class JsonTokenizer implements Tokenizer {
  constructor(private readonly tok: HfTokenizer, readonly vocabSize: number) {}
  encode(text: string): Int32Array {
    check(typeof text === "string", "encode: text must be a string");
    return Int32Array.from(this.tok.encode(text, { add_special_tokens: false }).ids);
  }
  decode(ids: ArrayLike<number>): string {
    const list = Array.from(ids);
    for (const id of list) check(Number.isInteger(id) && id >= 0 && id < this.vocabSize, `decode: token id ${id} is outside the vocabulary (${this.vocabSize})`);
    if (list.length === 0) return "";
    return this.tok.decode(list, { skip_special_tokens: true });
  }
}

/** Builds a tokenizer from the parsed content of a tokenizer.json. */
export function tokenizerFromJson(json: unknown, where = "tokenizer.json"): Tokenizer {
  const j = json as { model?: { vocab?: Record<string, number> }; added_tokens?: { id: number }[] };
  check(j && typeof j === "object" && j.model && typeof j.model === "object", `${where}: not a tokenizer.json (no 'model')`);
  let size = 0;
  for (const id of Object.values(j.model.vocab ?? {})) if (typeof id === "number" && id + 1 > size) size = id + 1;
  for (const t of j.added_tokens ?? []) if (typeof t?.id === "number" && t.id + 1 > size) size = t.id + 1;
  try {
    return new JsonTokenizer(new HfTokenizer(j, {}), size);
  } catch (err) {
    throw new MambaError(`${where}: cannot build the tokenizer: ${(err as Error).message}`);
  }
}

/**
 * Turns a stream of ids into text pieces, never emitting half a character: a byte-level BPE token may end in
 * the middle of a UTF-8 sequence, which decodes to U+FFFD until the next token completes it.
 */
export class TextStreamer {
  // ids[0 .. read) are already emitted; decoding starts at a window that begins one emitted token back, so that
  // each push costs the length of the window, not of the whole text (a token's text can depend on its neighbour)
  private ids: number[] = [];
  private read = 0;
  constructor(private readonly tokenizer: Tokenizer) {}

  /** Adds one id; returns the text that is now complete (possibly ""). */
  push(id: number): string {
    this.ids.push(id);
    const before = this.tokenizer.decode(this.ids.slice(0, this.read));
    const text = this.tokenizer.decode(this.ids);
    if (text.endsWith("\uFFFD") || text.length <= before.length) return "";
    const piece = text.slice(before.length);
    // keep the last emitted id as context for the next window
    this.ids = this.ids.slice(this.ids.length - 1);
    this.read = 1;
    return piece;
  }

  /** Whatever remains (a trailing incomplete character comes out as U+FFFD). */
  flush(): string {
    const before = this.tokenizer.decode(this.ids.slice(0, this.read));
    const text = this.tokenizer.decode(this.ids);
    this.ids = [];
    this.read = 0;
    return text.slice(before.length);
  }
}
