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

/**
 * The keys of an options interface, for checkKeys: `optionKeys<CpuBackendOptions>({ threads: true, ... })`. The
 * record must name every key of the interface and nothing else (the compiler says which is missing or extra), so
 * an option added to the interface is added here in the same change.
 */
export function optionKeys<T extends object>(keys: { [K in keyof Required<T>]: true }): readonly (keyof T & string)[] {
  return Object.keys(keys) as (keyof T & string)[];
}

/**
 * Throws on a key of an options object that is not one of `known` (a misspelled option would otherwise be ignored
 * without a word), naming the closest known key where one is near. `prefix` names a nested object's keys
 * ("webgpu." gives "unknown option 'webgpu.poolBytez'"). Absent options (undefined) pass.
 */
export function checkKeys(what: string, options: unknown, known: readonly string[], prefix = ""): void {
  if (options === undefined) return;
  check(options !== null && typeof options === "object" && !Array.isArray(options),
    () => `${what}: ${prefix ? `${prefix.slice(0, -1)} ` : ""}options must be an object, got ${options === null ? "null" : Array.isArray(options) ? "an array" : typeof options}`);
  for (const key of Object.keys(options)) {
    if (known.includes(key)) continue;
    const near = closestKey(key, known);
    throw new MambaError(`${what}: unknown option '${prefix}${key}'${near === null ? "" : ` (did you mean '${prefix}${near}'?)`}`);
  }
}

/** The known key nearest to `key`: at most 2 edits apart (a letter added, dropped, changed, or two swapped),
 *  ignoring case, '_' and '-' (so max_new_tokens finds maxNewTokens); null when none is that near. */
function closestKey(key: string, known: readonly string[]): string | null {
  const plain = (s: string) => s.toLowerCase().replace(/[_-]/g, "");
  const k = plain(key);
  let best: string | null = null, bestDistance = 3;
  for (const name of known) {
    const d = editDistance(k, plain(name));
    if (d < bestDistance && d < Math.max(k.length, 1)) { best = name; bestDistance = d; }
  }
  return best;
}

/** Edits (insert, delete, substitute, swap two neighbours) that turn a into b. */
function editDistance(a: string, b: string): number {
  // d[i][j]: edits turning a[0, i) into b[0, j), kept as three rows
  let before = new Array<number>(b.length + 1).fill(0);
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = new Array<number>(b.length + 1);
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) row[j] = Math.min(row[j]!, before[j - 2]! + 1);
    }
    before = prev;
    prev = row;
  }
  return prev[b.length]!;
}
