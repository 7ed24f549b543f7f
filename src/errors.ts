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

/** Throws unless an option that was given is one of its choices (absent: the caller's default applies). */
export function checkChoice(name: string, given: unknown, choices: readonly unknown[]): void {
  check(given === undefined || choices.includes(given), () => `${name} must be one of ${choices.join(", ")}, got ${String(given)}`);
}

/** Throws unless an option that was given is true or false (absent: the caller's default applies). */
export function checkFlag(name: string, given: unknown): void {
  check(given === undefined || typeof given === "boolean", () => `${name} must be true or false, got ${String(given)}`);
}

/** Throws unless an option that was given is a whole number of at least `least` (absent: the caller's default applies). */
export function checkCount(name: string, given: unknown, least: number): void {
  check(given === undefined || (Number.isInteger(given) && (given as number) >= least),
    () => `${name} must be a whole number >= ${least}, got ${String(given)}`);
}
