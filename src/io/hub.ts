/**
 * Resolves a model source to a local folder. The source is either a local folder (returned as is) or a Hugging Face
 * repo id "org/name", which is looked up in the local Hugging Face cache and downloaded from the hub when missing.
 *
 * The cache is the one huggingface_hub (Python) uses, so models downloaded by either tool are shared:
 *
 *   $HF_HOME/hub/models--{org}--{name}/
 *     refs/{revision}             the commit hash the revision (branch or tag) pointed to
 *     blobs/{etag}                file contents, named by their ETag (the sha256 for LFS files)
 *     snapshots/{commit}/{file}   symlinks to ../../blobs/{etag}
 *
 * A download writes each file to blobs/{etag}.incomplete, renames it when complete and only then links the snapshot,
 * so an interrupted download never leaves a partial file where a reader would look. The snapshot links are created
 * only once every chosen file is in blobs/, so a snapshot folder holds either a loadable model or nothing.
 *
 * Environment: HF_HOME (default ~/.cache/huggingface), HF_HUB_CACHE (default $HF_HOME/hub), HF_ENDPOINT (default
 * https://huggingface.co), HF_TOKEN (sent as a bearer token), HF_HUB_OFFLINE=1 (never touch the network).
 */
import { createHash, randomBytes } from "node:crypto";
import { existsSync, statSync } from "node:fs";
import * as fsp from "node:fs/promises";
import { homedir } from "node:os";
import * as path from "node:path";
import cliProgress from "cli-progress";
import { MambaError, check } from "../errors.ts";

export interface DownloadProgress {
  file: string;
  received: number;
  total: number | null;
}

export interface ResolveOptions {
  /** Called as bytes arrive (at least once per chunk, and once when a file is complete). */
  onProgress?: (p: DownloadProgress) => void;
  /** For tests; default globalThis.fetch. */
  fetch?: typeof fetch;
  /** Branch, tag or commit hash; default "main". */
  revision?: string;
}

const CONFIG_FILE = "config.json";
const SAFETENSORS_FILE = "model.safetensors";
const SAFETENSORS_INDEX_FILE = "model.safetensors.index.json";
const PYTORCH_FILE = "pytorch_model.bin";
/** Downloaded along with the model when the repo has them: tokenizer and generation defaults. */
const OPTIONAL_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"];

const MAX_REDIRECTS = 10;

// ---------------------------------------------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------------------------------------------

/**
 * True for "org/name" made of characters the hub allows (letters, digits, "-", "_", "."), that is not an existing
 * path. The hub also forbids "--" and ".." inside names, which keeps the cache folder name unambiguous.
 */
export function isRepoId(source: string): boolean {
  const m = /^([A-Za-z0-9][A-Za-z0-9_.-]*)\/([A-Za-z0-9][A-Za-z0-9_.-]*)$/.exec(source);
  if (!m) return false;
  if (m.slice(1).some((part) => part.includes("--") || part.includes("..") || part.length > 96)) return false;
  return !existsSync(source);
}

/**
 * A local folder path or .gguf file (returned as is after checking it exists), or a repo id "org/name".
 */
export async function resolveModelFolder(source: string, options: ResolveOptions = {}): Promise<string> {
  if (existsSync(source)) {
    // a GGUF file is a whole model in one file (./gguf.ts)
    if (source.toLowerCase().endsWith(".gguf") && statSync(source).isFile()) return source;
    check(statSync(source).isDirectory(), `model folder not found: ${source} (it is a file, not a folder)`);
    return source;
  }
  check(
    isRepoId(source),
    `model folder not found: ${source} (no such folder, and it is not a Hugging Face repo id like "org/name")`,
  );

  const env = hubEnv();
  const revision = options.revision ?? "main";
  check(isSafeRevision(revision), `invalid revision '${revision}' for model '${source}'`);
  const repoDir = path.join(env.cacheDir, `models--${source.replace("/", "--")}`);

  const cached = await cachedSnapshot(repoDir, revision);
  if (cached) return cached;
  check(
    !env.offline,
    `model '${source}' (revision '${revision}') is not in the local cache ${repoDir} and HF_HUB_OFFLINE is set; ` +
      `download it once with network access, or pass a local model folder`,
  );

  const hub: Hub = { ...env, repo: source, repoDir, fetch: options.fetch ?? globalThis.fetch, onProgress: options.onProgress };
  return downloadSnapshot(hub, revision);
}

/**
 * A terminal progress bar (cli-progress, on stderr) suitable as onProgress: one bar per file. When stderr is not a
 * terminal (a log file, CI) it draws nothing and prints one line per finished file instead.
 */
export function progressBarReporter(): { onProgress: (p: DownloadProgress) => void; stop(): void } {
  const tty = process.stderr.isTTY === true;
  const multibar = tty
    ? new cliProgress.MultiBar(
        {
          stream: process.stderr,
          format: " {bar} {percentage}% | {receivedText} / {totalText} | {file}",
          hideCursor: true,
          clearOnComplete: false,
        },
        cliProgress.Presets.shades_classic,
      )
    : null;
  const bars = new Map<string, cliProgress.SingleBar>();
  const finished = new Set<string>();

  const onProgress = (p: DownloadProgress): void => {
    if (finished.has(p.file)) return;
    // With an unknown size the bar can only show bytes so far; keep its end just ahead of the count.
    const total = p.total ?? Math.max(p.received, 1);
    const payload = { file: p.file, receivedText: formatBytes(p.received), totalText: p.total === null ? "?" : formatBytes(total) };
    if (multibar) {
      let bar = bars.get(p.file);
      if (!bar) {
        bar = multibar.create(total, 0, payload);
        bars.set(p.file, bar);
      }
      bar.setTotal(total);
      bar.update(p.received, payload);
    }
    if (p.total !== null && p.received >= p.total) {
      finished.add(p.file);
      if (!multibar) process.stderr.write(`downloaded ${p.file} (${formatBytes(p.received)})\n`);
    }
  };
  return { onProgress, stop: () => multibar?.stop() };
}

// ---------------------------------------------------------------------------------------------------------------
// Environment and cache lookup
// ---------------------------------------------------------------------------------------------------------------

interface HubEnv {
  endpoint: string;
  cacheDir: string;
  token: string | undefined;
  offline: boolean;
}

/** Everything a hub call needs, gathered once per resolve. */
interface Hub extends HubEnv {
  repo: string;
  repoDir: string;
  fetch: typeof fetch;
  onProgress: ((p: DownloadProgress) => void) | undefined;
}

/** Reads the environment on every call (not at import) so that callers and tests can change it. */
function hubEnv(): HubEnv {
  const e = process.env;
  const hfHome = expandHome(e.HF_HOME || path.join(homedir(), ".cache", "huggingface"));
  return {
    endpoint: (e.HF_ENDPOINT || "https://huggingface.co").replace(/\/+$/, ""),
    cacheDir: e.HF_HUB_CACHE ? expandHome(e.HF_HUB_CACHE) : path.join(hfHome, "hub"),
    token: e.HF_TOKEN || undefined,
    // the same spellings huggingface_hub accepts
    offline: ["1", "on", "yes", "true"].includes((e.HF_HUB_OFFLINE ?? "").trim().toLowerCase()),
  };
}

function expandHome(p: string): string {
  return p === "~" || p.startsWith("~/") ? path.join(homedir(), p.slice(1)) : p;
}

/** Revisions become paths under refs/ (e.g. "refs/pr/1"), so they must not climb out of it. */
function isSafeRevision(revision: string): boolean {
  return revision.length > 0 && !revision.startsWith("/") && !revision.split("/").some((s) => s === "" || s === "." || s === "..");
}

function isCommitHash(revision: string): boolean {
  return /^[0-9a-f]{40}$/.test(revision);
}

/** The cached snapshot folder for `revision` when it holds a loadable model, else null. Never touches the network. */
async function cachedSnapshot(repoDir: string, revision: string): Promise<string | null> {
  let commit = revision;
  if (!isCommitHash(revision)) {
    const ref = await fsp.readFile(path.join(repoDir, "refs", revision), "utf8").catch(() => null);
    if (ref === null) return null;
    commit = ref.trim();
    if (!isCommitHash(commit)) return null;
  }
  const snapshot = path.join(repoDir, "snapshots", commit);
  return (await isCompleteSnapshot(snapshot)) ? snapshot : null;
}

/** A folder is a loadable model when it has config.json and a full set of weights. */
async function isCompleteSnapshot(folder: string): Promise<boolean> {
  if (!(await isFile(path.join(folder, CONFIG_FILE)))) return false;
  if (await isFile(path.join(folder, SAFETENSORS_FILE))) return true;
  const index = path.join(folder, SAFETENSORS_INDEX_FILE);
  if (await isFile(index)) {
    const shards = await readShardNames(index).catch(() => null);
    if (!shards) return false;
    for (const shard of shards) if (!(await isFile(path.join(folder, shard)))) return false;
    return true;
  }
  return isFile(path.join(folder, PYTORCH_FILE));
}

/** stat follows symlinks, so a link to a missing blob counts as missing. */
async function isFile(p: string): Promise<boolean> {
  const st = await fsp.stat(p).catch(() => null);
  return st !== null && st.isFile();
}

/** The distinct shard file names in a safetensors index's weight_map. */
async function readShardNames(indexPath: string): Promise<string[]> {
  let index: unknown;
  try {
    index = JSON.parse(await fsp.readFile(indexPath, "utf8"));
  } catch (e) {
    throw new MambaError(`cannot read ${indexPath}: ${(e as Error).message}`);
  }
  const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
  check(weightMap && typeof weightMap === "object", `${indexPath} has no weight_map`);
  const shards = [...new Set(Object.values(weightMap as Record<string, unknown>))];
  for (const s of shards) check(typeof s === "string" && isSafeRepoPath(s), `${indexPath} names a bad shard file: ${String(s)}`);
  return shards as string[];
}

/** File names come from the network; refuse any that would land outside the snapshot folder. */
function isSafeRepoPath(file: string): boolean {
  return file.length > 0 && !file.startsWith("/") && !file.includes("\\") && !file.split("/").some((s) => s === "" || s === "." || s === "..");
}

// ---------------------------------------------------------------------------------------------------------------
// Download
// ---------------------------------------------------------------------------------------------------------------

/** Downloads the files a model needs into the cache and returns the snapshot folder. */
async function downloadSnapshot(hub: Hub, revision: string): Promise<string> {
  const info = await fetchRevisionInfo(hub, revision);
  const blobs = new Map<string, string>(); // repo file name -> blob path

  const fetchBlob = async (file: string) => blobs.set(file, await downloadBlob(hub, info.sha, file));
  const { required, optional } = chooseFiles(hub.repo, info.files);
  for (const file of required) await fetchBlob(file);
  // Which shards a sharded checkpoint needs is written in its index, which we only now have.
  const index = blobs.get(SAFETENSORS_INDEX_FILE);
  if (index) {
    for (const shard of await readShardNames(index)) {
      check(info.files.has(shard), `model '${hub.repo}' names shard ${shard} in its index, but the repo has no such file`);
      if (!blobs.has(shard)) await fetchBlob(shard);
    }
  }
  for (const file of optional) await fetchBlob(file);

  const snapshot = path.join(hub.repoDir, "snapshots", info.sha);
  for (const [file, blob] of blobs) await linkIntoSnapshot(snapshot, file, blob);
  // A commit hash needs no ref: it names its snapshot folder directly (as in huggingface_hub).
  if (revision !== info.sha) await writeFileAtomic(path.join(hub.repoDir, "refs", revision), info.sha);
  check(await isCompleteSnapshot(snapshot), `download of model '${hub.repo}' did not produce a loadable folder: ${snapshot}`);
  return snapshot;
}

interface RevisionInfo {
  sha: string;
  files: Set<string>;
}

/** GET /api/models/{repo}/revision/{revision}: the commit hash and the list of files. */
async function fetchRevisionInfo(hub: Hub, revision: string): Promise<RevisionInfo> {
  const url = `${hub.endpoint}/api/models/${hub.repo}/revision/${encodeURIComponent(revision)}`;
  const res = await hubFetch(hub, url, { headers: authHeaders(hub) });
  await checkStatus(hub, res, `model '${hub.repo}'`);
  let body: { sha?: unknown; siblings?: unknown };
  try {
    body = (await res.json()) as typeof body;
  } catch (e) {
    throw new MambaError(`the hub at ${hub.endpoint} sent an unreadable answer for model '${hub.repo}': ${(e as Error).message}`);
  }
  check(typeof body?.sha === "string" && isCommitHash(body.sha), `the hub at ${hub.endpoint} sent no commit hash for model '${hub.repo}'`);
  check(Array.isArray(body.siblings), `the hub at ${hub.endpoint} sent no file list for model '${hub.repo}'`);
  const files = new Set<string>();
  for (const s of body.siblings as { rfilename?: unknown }[]) {
    if (typeof s?.rfilename === "string" && isSafeRepoPath(s.rfilename)) files.add(s.rfilename);
  }
  return { sha: body.sha, files };
}

/** config.json, one set of weights (safetensors first: it needs no unpickling), and the small optional files. */
function chooseFiles(repo: string, files: Set<string>): { required: string[]; optional: string[] } {
  check(files.has(CONFIG_FILE), `model '${repo}' has no ${CONFIG_FILE}; is it a transformers model?`);
  const weights = [SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE, PYTORCH_FILE].find((f) => files.has(f));
  check(weights, `model '${repo}' has no weights (${SAFETENSORS_FILE}, ${SAFETENSORS_INDEX_FILE} or ${PYTORCH_FILE})`);
  return { required: [CONFIG_FILE, weights], optional: OPTIONAL_FILES.filter((f) => files.has(f)) };
}

/**
 * Downloads one repo file into blobs/ and returns the blob path. The blob is named by X-Linked-Etag (set on the
 * hub's redirect for LFS files: the sha256 of the content), else ETag, else the sha256 we compute while streaming.
 * A blob already in the cache (another revision, an earlier interrupted run) is reused without reading the body.
 */
async function downloadBlob(hub: Hub, commit: string, file: string): Promise<string> {
  const blobsDir = path.join(hub.repoDir, "blobs");
  await fsp.mkdir(blobsDir, { recursive: true });
  const url = `${hub.endpoint}/${hub.repo}/resolve/${commit}/${file.split("/").map(encodeURIComponent).join("/")}`;
  const what = `file ${file} of model '${hub.repo}'`;

  const existingBlob = async (etag: string | null) => {
    const blob = etag && path.join(blobsDir, etag);
    return blob && (await isFile(blob)) ? blob : null;
  };
  const reuse = async (blob: string) => {
    const size = (await fsp.stat(blob)).size;
    hub.onProgress?.({ file, received: size, total: size });
    return blob;
  };
  const { res, etag } = await fetchFollowingRedirects(hub, url, existingBlob);
  // the redirect's X-Linked-Etag named a blob we already have
  if (res === null) return reuse(path.join(blobsDir, etag!));
  await checkStatus(hub, res, what);
  const existing = await existingBlob(etag);
  if (existing) {
    await res.body?.cancel();
    return reuse(existing);
  }

  const incomplete = path.join(blobsDir, `${etag ?? `download-${randomBytes(8).toString("hex")}`}.incomplete`);
  try {
    const sha256 = await streamToFile(hub, res, incomplete, file, what, etag === null);
    const blob = path.join(blobsDir, etag ?? sha256!);
    await fsp.rename(incomplete, blob);
    return blob;
  } catch (e) {
    await fsp.rm(incomplete, { force: true });
    throw e;
  }
}

/**
 * GETs `url`, following redirects by hand: the hub puts X-Linked-Etag on its redirect to the CDN, and fetch's own
 * redirect following would hide that response. Returns res = null without following further when a redirect's
 * etag names a blob that `existing` finds, since the content is then already here.
 */
async function fetchFollowingRedirects(
  hub: Hub,
  url: string,
  existing: (etag: string | null) => Promise<string | null>,
): Promise<{ res: Response | null; etag: string | null }> {
  const origin = new URL(url).origin;
  let linkedEtag: string | null = null;
  for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
    // The token is for the hub only; a CDN on another host gets a signed URL instead.
    const headers: Record<string, string> = { "accept-encoding": "identity" };
    if (new URL(url).origin === origin) Object.assign(headers, authHeaders(hub));
    const res = await hubFetch(hub, url, { headers, redirect: "manual" });
    const location = res.headers.get("location");
    if (res.status >= 300 && res.status < 400 && location) {
      linkedEtag = blobName(res.headers.get("x-linked-etag")) ?? linkedEtag;
      await res.body?.cancel();
      if (await existing(linkedEtag)) return { res: null, etag: linkedEtag };
      url = new URL(location, url).toString();
      continue;
    }
    const etag = linkedEtag ?? blobName(res.headers.get("x-linked-etag")) ?? blobName(res.headers.get("etag"));
    return { res, etag };
  }
  throw new MambaError(`too many redirects while downloading from ${hub.endpoint} for model '${hub.repo}'`);
}

/**
 * Streams a response body into `dest`, reporting progress per chunk, and checks the byte count against
 * Content-Length. Returns the sha256 of the content when asked (for blobs the server gave no etag for).
 */
async function streamToFile(
  hub: Hub,
  res: Response,
  dest: string,
  file: string,
  what: string,
  wantSha256: boolean,
): Promise<string | null> {
  const total = contentLength(res);
  const hash = wantSha256 ? createHash("sha256") : null;
  let received = 0;
  const out = await fsp.open(dest, "w");
  try {
    check(res.body, `the hub sent no content for ${what}`);
    const reader = res.body.getReader();
    for (;;) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch (e) {
        throw new MambaError(`download of ${what} was interrupted after ${received} bytes: ${describeError(e)}`);
      }
      if (chunk.done) break;
      await out.write(chunk.value);
      hash?.update(chunk.value);
      received += chunk.value.byteLength;
      hub.onProgress?.({ file, received, total });
    }
  } finally {
    await out.close();
  }
  check(total === null || received === total, `download of ${what} is incomplete: got ${received} of ${total} bytes`);
  hub.onProgress?.({ file, received, total: received });
  return hash ? hash.digest("hex") : null;
}

/** Content-Length, unless the body is compressed (fetch then hands us more bytes than the header counts). */
function contentLength(res: Response): number | null {
  const encoding = res.headers.get("content-encoding");
  if (encoding && encoding !== "identity") return null;
  const n = Number(res.headers.get("content-length") ?? NaN);
  return Number.isSafeInteger(n) && n >= 0 ? n : null;
}

/** An ETag as a file name: quotes and a weak-validator "W/" stripped; null when absent or not a safe name. */
function blobName(header: string | null): string | null {
  if (!header) return null;
  const name = header.trim().replace(/^W\//, "").replace(/^"(.*)"$/, "$1");
  return /^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(name) && !name.endsWith(".incomplete") ? name : null;
}

function authHeaders(hub: Hub): Record<string, string> {
  return hub.token ? { authorization: `Bearer ${hub.token}` } : {};
}

/** fetch, turning a network failure into a MambaError that says what to try instead. */
async function hubFetch(hub: Hub, url: string, init: RequestInit): Promise<Response> {
  try {
    return await hub.fetch(url, init);
  } catch (e) {
    throw new MambaError(
      `could not reach the Hugging Face hub at ${hub.endpoint} for model '${hub.repo}' (${describeError(e)}); ` +
        `check the network, set HF_ENDPOINT to a reachable mirror, or pass a local model folder`,
    );
  }
}

/** Turns a failed HTTP answer into a MambaError; 401/403/404 mean "no such (visible) repo or file". */
async function checkStatus(hub: Hub, res: Response, what: string): Promise<void> {
  if (res.ok) return;
  await res.body?.cancel();
  if (res.status === 401 || res.status === 403 || res.status === 404) {
    // The hub answers 401 rather than 404 for repos it will not show to this caller, so mention the token.
    const hint = hub.token ? "" : "; if it is private or gated, set HF_TOKEN";
    throw new MambaError(`${what} not found on ${hub.endpoint} (HTTP ${res.status})${hint}`);
  }
  throw new MambaError(`the Hugging Face hub at ${hub.endpoint} failed for ${what} (HTTP ${res.status} ${res.statusText})`);
}

function describeError(e: unknown): string {
  const err = e as { message?: string; cause?: { message?: string; code?: string } };
  const cause = err?.cause?.code ?? err?.cause?.message;
  return [err?.message ?? String(e), cause].filter(Boolean).join(": ");
}

// ---------------------------------------------------------------------------------------------------------------
// Cache writes
// ---------------------------------------------------------------------------------------------------------------

/** snapshots/{commit}/{file} -> relative path to the blob, replacing any older link (atomically, via rename). */
async function linkIntoSnapshot(snapshot: string, file: string, blob: string): Promise<void> {
  const link = path.join(snapshot, file);
  await fsp.mkdir(path.dirname(link), { recursive: true });
  const tmp = `${link}.${randomBytes(6).toString("hex")}.tmp`;
  try {
    await fsp.symlink(path.relative(path.dirname(link), blob), tmp);
  } catch (e) {
    // Windows without symlink rights: fall back to a copy, as huggingface_hub does.
    if ((e as NodeJS.ErrnoException).code !== "EPERM") throw e;
    await fsp.copyFile(blob, tmp);
  }
  await fsp.rename(tmp, link);
}

/** Writes via a temp file and rename, so a reader sees the old content or the new, never a partial one. */
async function writeFileAtomic(file: string, content: string): Promise<void> {
  await fsp.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.${randomBytes(6).toString("hex")}.tmp`;
  await fsp.writeFile(tmp, content);
  await fsp.rename(tmp, file);
}

function formatBytes(n: number): string {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}
