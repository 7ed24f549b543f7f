/**
 * A byte-level tokenizer.json: token id = byte value (0..255) plus `<|endoftext|>` = 256. It is the GPT-2
 * ByteLevel scheme with no merges, so any Hugging Face tokenizers implementation reads it; mamba-ts's own small
 * models (the embedded default, the text task) use it.
 */
export const BYTE_EOS_ID = 256;
export const BYTE_VOCAB_SIZE = 257;

/** GPT-2's reversible map from bytes to printable unicode characters. */
function bytesToUnicode(): string[] {
  const direct: number[] = [];
  for (let i = 33; i <= 126; i++) direct.push(i);
  for (let i = 161; i <= 172; i++) direct.push(i);
  for (let i = 174; i <= 255; i++) direct.push(i);
  const out = new Array<string>(256);
  for (const b of direct) out[b] = String.fromCodePoint(b);
  let n = 0;
  for (let b = 0; b < 256; b++) if (out[b] === undefined) out[b] = String.fromCodePoint(256 + n++);
  return out;
}

export function byteLevelTokenizerJson(): Record<string, unknown> {
  const chars = bytesToUnicode();
  const vocab: Record<string, number> = {};
  chars.forEach((c, b) => (vocab[c] = b));
  const byteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false };
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [{ id: BYTE_EOS_ID, content: "<|endoftext|>", single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }],
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: null,
    decoder: byteLevel,
    model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges: [] },
  };
}
