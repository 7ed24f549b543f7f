// The WebAssembly module's entry: every kernel file's exports. Built by scripts/build-wasm.mjs.
export * from "./matmul";
export * from "./scan";
export * from "./conv";
export * from "./norm";
export { expF32, softplusF32, siluF32 } from "./math"; // its vector helpers are inline, not exports
export * from "./quant";
export * from "./ssd";
export * from "./ssd-backward";
