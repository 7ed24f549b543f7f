/**
 * Crash-safe training checkpoints. A run folder DIR holds:
 *   DIR/checkpoint-<step>/   a Hugging Face model folder (config.json, model.safetensors) that loadModel reads,
 *                            plus optimizer.safetensors (AdamW moments) and trainer.json (step, options, RNG streams)
 *   DIR/latest               one line: the name of the newest complete checkpoint folder
 * Writing: every file of a new checkpoint goes into DIR/checkpoint-<step>.tmp/ and is fsynced, the folder is
 * fsynced and renamed to checkpoint-<step>, DIR is fsynced, then `latest` is replaced atomically (temp file,
 * fsync, rename, fsync DIR), and only then are older checkpoints and leftovers deleted. A process killed at any
 * moment leaves `latest` naming a complete checkpoint (or no `latest` at all before the first one).
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import { MambaError, check } from "../errors.ts";
import { writeFileAtomic } from "../io/safetensors.ts";

const NAME = /^checkpoint-(\d+)(\.tmp)?$/;

async function writeSynced(file: string, data: Uint8Array | string): Promise<void> {
  const fh = await fs.open(file, "w");
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function syncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Writes checkpoint-<step> with the given files and makes it the latest; keeps the `keep` newest. Returns its path. */
export async function writeCheckpoint(dir: string, step: number, files: Map<string, Uint8Array | string>, keep = 1): Promise<string> {
  await fs.mkdir(dir, { recursive: true });
  const name = `checkpoint-${step}`;
  const tmp = path.join(dir, `${name}.tmp`);
  const final = path.join(dir, name);
  await fs.rm(tmp, { recursive: true, force: true });
  await fs.mkdir(tmp);
  for (const [file, data] of files) await writeSynced(path.join(tmp, file), data);
  await syncDir(tmp);
  // a folder of the same name can only be a complete checkpoint that `latest` does not name yet (the previous
  // process died between the rename and the pointer update); it is replaced
  if ((await readLatestName(dir)) !== name) await fs.rm(final, { recursive: true, force: true });
  await fs.rename(tmp, final);
  await syncDir(dir);
  await writeFileAtomic(path.join(dir, "latest"), `${name}\n`);
  await syncDir(dir);
  await prune(dir, keep);
  return final;
}

async function readLatestName(dir: string): Promise<string | null> {
  let text: string;
  try {
    text = await fs.readFile(path.join(dir, "latest"), "utf8");
  } catch {
    return null;
  }
  const name = text.trim();
  check(NAME.test(name) && !name.endsWith(".tmp"), `${path.join(dir, "latest")} does not name a checkpoint folder: ${JSON.stringify(name)}`);
  return name;
}

/** The folder of the latest complete checkpoint of a run folder, or null when it has none. */
export async function latestCheckpoint(dir: string): Promise<string | null> {
  const name = await readLatestName(dir);
  if (name === null) return null;
  const folder = path.join(dir, name);
  const ok = await fs.stat(folder).then((s) => s.isDirectory(), () => false);
  if (!ok) throw new MambaError(`${path.join(dir, "latest")} names ${name}, which is missing`);
  return folder;
}

/** Deletes all but the `keep` newest complete checkpoints (never the latest), unfinished ones and stale temp files. */
async function prune(dir: string, keep: number): Promise<void> {
  const latest = await readLatestName(dir);
  const entries = await fs.readdir(dir);
  const done = entries.filter((e) => NAME.test(e) && !e.endsWith(".tmp"))
    .sort((a, c) => Number(NAME.exec(c)![1]) - Number(NAME.exec(a)![1]));
  const keepSet = new Set(done.slice(0, Math.max(1, keep)));
  if (latest) keepSet.add(latest);
  for (const e of entries) {
    const stale = (NAME.test(e) && !keepSet.has(e)) || /^latest\..*\.tmp$/.test(e);
    if (stale) await fs.rm(path.join(dir, e), { recursive: true, force: true });
  }
}
