/**
 * The targets' table a bench prints at its end: each measure it ran that has a target in the issues' tables, with
 * the official figure (or, for the training step's, the f32 step's), ours, their ratio and the ratio aimed at:
 * whether it is met, and how much faster it must get where it is not. A bench adds a row where it prints the
 * figure (targetRow) and prints the table once it is done (printTargets).
 */

export interface TargetRow {
  /** what was measured (shapes, dtype, precision) */
  measure: string;
  /** our figure and the one it is held against, in `unit` (null: a target of its own, `target` in `unit`) */
  ours: number;
  official: number | null;
  unit: "ms" | "tok/s" | "TFLOP/s";
  /** the ratio aimed at: ours over official for speeds (tok/s, TFLOP/s), official over ours for times (ms); without
   *  an official figure, the figure aimed at */
  target: number;
}

const rows: TargetRow[] = [];

/** Adds a measure to the table; one without a figure to hold it against (no anchor, a smoke run) or whose run
 *  failed (NaN) is left out. */
export function targetRow(row: Omit<TargetRow, "official"> & { official: number | null | undefined }): void {
  const { official } = row;
  if (official !== null && official !== undefined && official > 0 && Number.isFinite(row.ours)) rows.push({ ...row, official });
}

/** Adds a measure whose target is a figure of its own (a speed to reach), not a ratio to an official one. */
export function targetFigure(row: { measure: string; ours: number; unit: "TFLOP/s" | "tok/s"; target: number }): void {
  if (Number.isFinite(row.ours)) rows.push({ ...row, official: null });
}

const fig = (v: number, unit: TargetRow["unit"]) =>
  `${unit === "ms" ? v.toFixed(v < 10 ? 3 : 1) : v.toFixed(unit === "TFLOP/s" ? 1 : 0)} ${unit}`;

/** The table of the rows added so far (then cleared), under `title`; nothing where no row was added. */
export function printTargets(title: string): void {
  if (rows.length === 0) return;
  console.log(`\n${title}\n`);
  console.log("| measure | against | ours | ratio | target | |");
  console.log("|---|---|---|---|---|---|");
  for (const r of rows) {
    // above 1: faster than the official figure (or than the target's figure)
    const ratio = r.official === null ? r.ours / r.target : r.unit === "ms" ? r.official / r.ours : r.ours / r.official;
    const aim = r.official === null ? 1 : r.target;
    const left = ratio >= aim ? "met" : `short: ${((aim / ratio) * 100 - 100).toFixed(0)}% faster to go`;
    console.log(`| ${r.measure} | ${r.official === null ? "—" : fig(r.official, r.unit)} | ${fig(r.ours, r.unit)} | ` +
      `${r.official === null ? "—" : `${ratio.toFixed(2)}x`} | ≥ ${r.official === null ? fig(r.target, r.unit) : `${r.target.toFixed(2)}x`} | ${left} |`);
  }
  rows.length = 0;
}
