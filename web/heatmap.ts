/**
 * A heatmap on a canvas: rows (layers) × columns (tokens), a colour per value (viridis), row labels on the left,
 * token labels under the columns, a colour bar with the range above. NaN cells (no value yet) stay blank.
 */

export interface HeatmapData {
  rowLabels: string[];
  colLabels: string[];
  /** per row, one value per column */
  values: Float64Array[];
  /** map values through log10 before colouring (for Δ, which spans orders of magnitude) */
  log: boolean;
  /** how the colour bar names its ends */
  format: (v: number) => string;
  /** colour each row over its own range (named at its right end) rather than one range for all */
  perRow: boolean;
}

const VIRIDIS: [number, number, number][] = [
  [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37],
];

/** t in [0, 1] -> viridis colour */
export function viridis(t: number): [number, number, number] {
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const a = VIRIDIS[i]!, b = VIRIDIS[i + 1]!;
  return [0, 1, 2].map((k) => Math.round(a[k]! + (b[k]! - a[k]!) * f)) as [number, number, number];
}

export const BACKGROUND = "#ffffff";

/** Range of the finite values of some rows (after the log, when asked). */
function range(data: HeatmapData, rows: Float64Array[]): { lo: number; hi: number } {
  let lo = Infinity, hi = -Infinity;
  for (const row of rows) {
    for (const v0 of row) {
      const v = data.log ? Math.log10(v0) : v0;
      if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    }
  }
  if (lo === Infinity) return { lo: 0, hi: 1 };
  if (hi - lo < 1e-12) hi = lo + 1e-12;
  return { lo, hi };
}

/** Draws the heatmap; the canvas is sized to fit (wider than its container when there are many tokens). */
export function drawHeatmap(canvas: HTMLCanvasElement, data: HeatmapData, availableWidth: number): void {
  const ctx = canvas.getContext("2d")!;
  const rows = data.rowLabels.length, cols = data.colLabels.length;
  const left = 70, top = 30, labelBand = 50, right = data.perRow ? 110 : 10;
  const cell = Math.max(6, Math.min(26, Math.floor((availableWidth - left - right) / Math.max(1, cols))));
  const rowH = Math.max(8, Math.min(20, Math.floor(320 / Math.max(1, rows))));
  const width = Math.max(availableWidth, left + cols * cell + right);
  const height = top + rows * rowH + labelBand;
  const dpr = globalThis.devicePixelRatio || 1;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = BACKGROUND;
  ctx.fillRect(0, 0, width, height);

  const shared = range(data, data.values);
  const name = (v: number) => data.format(data.log ? 10 ** v : v);
  // colour bar: 160 px of gradient with its two ends named
  for (let i = 0; i < 160; i++) {
    const [r, g, b] = viridis(i / 159);
    ctx.fillStyle = `rgb(${r},${g},${b})`;
    ctx.fillRect(left + i, 8, 1, 12);
  }
  ctx.fillStyle = "#444";
  ctx.font = "11px system-ui, 'DejaVu Sans', sans-serif";
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  ctx.fillText(data.perRow ? "low" : name(shared.lo), left - 4, 14);
  ctx.textAlign = "left";
  ctx.fillText(data.perRow ? "high, within each row (its range at its right)" : name(shared.hi), left + 164, 14);

  for (let r = 0; r < rows; r++) {
    ctx.fillStyle = "#444";
    ctx.textAlign = "right";
    ctx.fillText(data.rowLabels[r]!, left - 6, top + r * rowH + rowH / 2);
    const row = data.values[r]!;
    const { lo, hi } = data.perRow ? range(data, [row]) : shared;
    if (data.perRow && Number.isFinite(lo)) {
      ctx.textAlign = "left";
      ctx.fillText(`${name(lo)}–${name(hi)}`, left + cols * cell + 6, top + r * rowH + rowH / 2);
    }
    for (let c = 0; c < cols; c++) {
      const v0 = row[c]!;
      const v = data.log ? Math.log10(v0) : v0;
      if (!Number.isFinite(v)) continue;
      const [cr, cg, cb] = viridis((v - lo) / (hi - lo));
      ctx.fillStyle = `rgb(${cr},${cg},${cb})`;
      ctx.fillRect(left + c * cell, top + r * rowH, cell - (cell > 8 ? 1 : 0), rowH - 1);
    }
  }
  // token labels, turned, when the columns are wide enough to tell them apart
  if (cell >= 9) {
    ctx.fillStyle = "#333";
    ctx.font = `${Math.min(12, cell)}px ui-monospace, 'DejaVu Sans Mono', monospace`;
    ctx.textAlign = "right";
    for (let c = 0; c < cols; c++) {
      ctx.save();
      ctx.translate(left + c * cell + cell / 2, top + rows * rowH + 4);
      ctx.rotate(-Math.PI / 3);
      ctx.fillText(data.colLabels[c]!.slice(0, 8), 0, 0);
      ctx.restore();
    }
  }
}

/** A token as a short visible label: whitespace and control characters shown as symbols. */
export function tokenLabel(text: string): string {
  return text.replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/ /g, "·").replace(/[\u0000-\u001f\u007f]/g, "�") || "∅";
}
