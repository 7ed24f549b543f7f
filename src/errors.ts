/**
 * The one error type that mamba-ts raises for bad input: damaged files, wrong shapes, out-of-range ids, bad
 * options. Its message says what is wrong and where; the CLI prints just that message (no stack trace).
 */
export class MambaError extends Error {
  override name = "MambaError";
}

/** Throws a MambaError with `message` unless `cond` holds. */
export function check(cond: unknown, message: string | (() => string)): asserts cond {
  if (!cond) throw new MambaError(typeof message === "string" ? message : message());
}
