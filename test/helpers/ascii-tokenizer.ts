/**
 * A byte-level tokenizer.json for the 96-token fixture models: `<|endoftext|>` = 0 (the fixtures' eos and bos),
 * then the printable ASCII bytes 32..126 as ids 1..95, in GPT-2's ByteLevel spelling (space is "Ġ"), no merges.
 * Text outside printable ASCII has no ids.
 */
export function asciiTokenizerJson(): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  for (let b = 32; b <= 126; b++) vocab[b === 32 ? "\u0120" : String.fromCharCode(b)] = b - 31;
  const byteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false };
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [{ id: 0, content: "<|endoftext|>", single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }],
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: null,
    decoder: byteLevel,
    model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges: [] },
  };
}
