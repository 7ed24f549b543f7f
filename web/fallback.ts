/** The model the page runs when it is given no model folder: small, untrained, with the byte-level tokenizer. */
import { BYTE_EOS_ID, BYTE_VOCAB_SIZE, type ModelSizes } from "../src/browser.ts";

export const FALLBACK_SIZES: ModelSizes = { vocabSize: BYTE_VOCAB_SIZE, hiddenSize: 64, numLayers: 4, eosTokenId: BYTE_EOS_ID };
export const FALLBACK_SEED = 0;
