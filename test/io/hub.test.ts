/**
 * Tests for src/io/hub.ts against a local node:http server that imitates the Hugging Face hub: the revision API,
 * /resolve/ with ETag / X-Linked-Etag, a 302 to a "CDN" path for large files, 404 for unknown repos, and a repo
 * whose weights download is cut off mid-file. No real network is used; HF_HOME points to a temporary folder.
 */
import { after, before, beforeEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { MambaError } from "../../src/errors.ts";
import { isRepoId, progressBarReporter, resolveModelFolder, type DownloadProgress } from "../../src/io/hub.ts";
import { fixture } from "../helpers/fixtures.ts";

const FIXTURES = fixture("hf-mamba");

/** How the fake hub serves a repo. */
interface FakeRepo {
  sha: string;
  dir: string;
  /** Files the API lists; all exist in `dir`. */
  siblings: string[];
  /** Served through a 302 to /cdn/ with X-Linked-Etag on the redirect (as the hub does for LFS files). */
  lfs: string[];
  /** Sent with full Content-Length, then the connection is destroyed halfway. */
  cut?: string;
  /** Send neither ETag nor X-Linked-Etag, so the client must name blobs by sha256. */
  noEtag?: boolean;
}

const sha1 = (s: string | Buffer) => createHash("sha1").update(s).digest("hex");
const sha256 = (s: string | Buffer) => createHash("sha256").update(s).digest("hex");

const TINY_FILES = ["config.json", "model.safetensors", "generation_config.json"];
const SHARDED_FILES = [
  "config.json",
  "generation_config.json",
  "model.safetensors.index.json",
  "model-00001-of-00002.safetensors",
  "model-00002-of-00002.safetensors",
];
const SHARDS = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];

const REPOS: Record<string, FakeRepo> = {
  "test-org/tiny": {
    sha: sha1("tiny"),
    dir: `${FIXTURES}/tiny`,
    // extra files in the repo that a model load does not need and must not be downloaded
    siblings: [...TINY_FILES, "grads.safetensors", "meta.json", "expected.safetensors"],
    lfs: ["model.safetensors", "grads.safetensors", "expected.safetensors"],
  },
  "test-org/tiny-sharded": {
    sha: sha1("tiny-sharded"),
    dir: `${FIXTURES}/tiny-bf16-sharded`,
    siblings: [...SHARDED_FILES, "expected.safetensors"],
    lfs: [...SHARDS, "expected.safetensors"],
  },
  "test-org/broken": {
    sha: sha1("broken"),
    dir: `${FIXTURES}/tiny`,
    siblings: TINY_FILES,
    lfs: [],
    cut: "model.safetensors",
  },
  // the API lists files that the server then does not have
  "test-org/missing-files": {
    sha: sha1("missing-files"),
    dir: `${FIXTURES}/no-such-folder`,
    siblings: TINY_FILES,
    lfs: ["model.safetensors"],
  },
  "test-org/no-etag": {
    sha: sha1("no-etag"),
    dir: `${FIXTURES}/tiny`,
    siblings: TINY_FILES,
    lfs: ["model.safetensors"],
    noEtag: true,
  },
};

interface Logged {
  url: string;
  authorization: string | undefined;
}

/** the longest the fake hub takes over one response before it gives up on it */
const RESPONSE_MS = 10_000;

/**
 * The fake hub; `requests` logs every request so tests can count network access. Every request gets an answer
 * within RESPONSE_MS: a file missing from the fixtures is a 404, anything unknown is a 404, a handler that throws is
 * a 500, and a response still open after RESPONSE_MS is a 504 (or, once its headers are out, a cut connection).
 */
class FakeHub {
  requests: Logged[] = [];
  private server = http.createServer((req, res) => {
    const timer = setTimeout(() => {
      if (res.headersSent) res.destroy();
      else this.fail(res, 504, `the fake hub did not answer ${req.url} within ${RESPONSE_MS / 1000} s`);
    }, RESPONSE_MS);
    res.on("close", () => clearTimeout(timer));
    this.handle(req, res).catch((err: NodeJS.ErrnoException) => {
      if (res.headersSent) return void res.destroy();
      if (err.code === "ENOENT") return this.notFound(res);
      this.fail(res, 500, `the fake hub failed on ${req.url}: ${err.message}`);
    });
  });

  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let url: string;
    try {
      url = decodeURIComponent(req.url ?? "");
    } catch {
      return this.fail(res, 400, `bad path ${req.url}`);
    }
    this.requests.push({ url, authorization: req.headers.authorization });
    let m: RegExpExecArray | null;
    if ((m = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url))) return this.api(res, m[1], m[2]);
    if ((m = /^\/([^/]+\/[^/]+)\/resolve\/([0-9a-f]{40})\/(.+)$/.exec(url))) return this.resolve(res, m[1], m[2], m[3]);
    if ((m = /^\/cdn\/([^/]+\/[^/]+)\/(.+)$/.exec(url))) return this.cdn(res, m[1], m[2]);
    this.notFound(res);
  }

  private api(res: http.ServerResponse, repoId: string, revision: string): void {
    const repo = REPOS[repoId];
    if (!repo || revision !== "main") return this.notFound(res);
    const body = JSON.stringify({ id: repoId, sha: repo.sha, siblings: repo.siblings.map((rfilename) => ({ rfilename })) });
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
    res.end(body);
  }

  private async resolve(res: http.ServerResponse, repoId: string, sha: string, file: string): Promise<void> {
    const repo = REPOS[repoId];
    if (!repo || sha !== repo.sha || !repo.siblings.includes(file)) return this.notFound(res);
    const data = fs.readFileSync(path.join(repo.dir, file));
    if (repo.lfs.includes(file)) {
      // like the hub: the redirect carries the sha256 as X-Linked-Etag; the CDN's own ETag differs
      const headers: http.OutgoingHttpHeaders = { location: `/cdn/${repoId}/${file}`, "x-linked-size": data.length };
      if (!repo.noEtag) headers["x-linked-etag"] = `"${sha256(data)}"`;
      res.writeHead(302, headers);
      return void res.end();
    }
    const headers: http.OutgoingHttpHeaders = { "content-length": data.length };
    // generation_config.json gets a weak validator, to check that "W/" is stripped
    if (!repo.noEtag) headers.etag = file === "generation_config.json" ? `W/"${sha1(data)}"` : `"${sha1(data)}"`;
    res.writeHead(200, headers);
    if (file === repo.cut) {
      res.write(data.subarray(0, data.length >> 1));
      await new Promise((r) => setTimeout(r, 20));
      return void res.destroy();
    }
    await writeInPieces(res, data);
  }

  private async cdn(res: http.ServerResponse, repoId: string, file: string): Promise<void> {
    const repo = REPOS[repoId];
    if (!repo) return this.notFound(res);
    const data = fs.readFileSync(path.join(repo.dir, file));
    const headers: http.OutgoingHttpHeaders = { "content-length": data.length };
    if (!repo.noEtag) headers.etag = `"cdn-${sha1(data).slice(0, 16)}"`;
    res.writeHead(200, headers);
    await writeInPieces(res, data);
  }

  private notFound(res: http.ServerResponse): void {
    res.writeHead(404, { "content-type": "application/json" });
    res.end(JSON.stringify({ error: "Repository not found" }));
  }

  private fail(res: http.ServerResponse, status: number, message: string): void {
    const body = JSON.stringify({ error: message });
    res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
    res.end(body);
  }
}

/** Several writes with pauses, so that the client sees several chunks (and several progress calls). */
async function writeInPieces(res: http.ServerResponse, data: Buffer): Promise<void> {
  const piece = 16 * 1024;
  for (let i = 0; i < data.length; i += piece) {
    res.write(data.subarray(i, i + piece));
    await new Promise((r) => setTimeout(r, 2));
  }
  res.end();
}

const ENV_KEYS = ["HF_HOME", "HF_HUB_CACHE", "HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE"] as const;

function repoCacheDir(home: string, repoId: string): string {
  return path.join(home, "hub", `models--${repoId.replace("/", "--")}`);
}

async function listFiles(dir: string): Promise<string[]> {
  if (!fs.existsSync(dir)) return [];
  const entries = await fsp.readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => !e.isDirectory()).map((e) => e.name);
}

async function assertFilesMatch(folder: string, fixtureDir: string, files: string[]): Promise<void> {
  for (const f of files) {
    const got = await fsp.readFile(path.join(folder, f));
    const want = await fsp.readFile(path.join(fixtureDir, f));
    assert.ok(got.equals(want), `${f} differs from the fixture`);
  }
}

describe("hub", { timeout: 120_000 }, () => {
  const hub = new FakeHub();
  const savedEnv: Record<string, string | undefined> = {};
  let endpoint: string;
  let home: string;

  before(async () => {
    endpoint = await hub.start();
    for (const k of ENV_KEYS) savedEnv[k] = process.env[k];
    home = await fsp.mkdtemp(path.join(os.tmpdir(), "mamba-ts-hub-"));
  });

  after(async () => {
    await hub.stop();
    for (const k of ENV_KEYS) {
      if (savedEnv[k] === undefined) delete process.env[k];
      else process.env[k] = savedEnv[k];
    }
    await fsp.rm(home, { recursive: true, force: true });
  });

  beforeEach(() => {
    process.env.HF_HOME = home;
    process.env.HF_ENDPOINT = endpoint;
    process.env.HF_TOKEN = "test-token";
    delete process.env.HF_HUB_CACHE;
    delete process.env.HF_HUB_OFFLINE;
    hub.requests = [];
  });

  test("downloads a repo into the cache layout huggingface_hub uses", async () => {
    const progress: DownloadProgress[] = [];
    const folder = await resolveModelFolder("test-org/tiny", { onProgress: (p) => progress.push({ ...p }) });

    const repoDir = repoCacheDir(home, "test-org/tiny");
    const sha = REPOS["test-org/tiny"].sha;
    assert.equal(folder, path.join(repoDir, "snapshots", sha));
    await assertFilesMatch(folder, `${FIXTURES}/tiny`, TINY_FILES);
    assert.deepEqual((await fsp.readdir(folder)).sort(), [...TINY_FILES].sort(), "only the needed files");
    assert.equal(await fsp.readFile(path.join(repoDir, "refs", "main"), "utf8"), sha);

    // snapshot entries are relative symlinks into blobs/, named by X-Linked-Etag, else ETag (quotes and W/ stripped)
    const weights = await fsp.readFile(`${FIXTURES}/tiny/model.safetensors`);
    const config = await fsp.readFile(`${FIXTURES}/tiny/config.json`);
    const generation = await fsp.readFile(`${FIXTURES}/tiny/generation_config.json`);
    assert.equal(await fsp.readlink(path.join(folder, "model.safetensors")), `../../blobs/${sha256(weights)}`);
    assert.equal(await fsp.readlink(path.join(folder, "config.json")), `../../blobs/${sha1(config)}`);
    assert.equal(await fsp.readlink(path.join(folder, "generation_config.json")), `../../blobs/${sha1(generation)}`);
    assert.deepEqual(
      (await fsp.readdir(path.join(repoDir, "blobs"))).sort(),
      [sha256(weights), sha1(config), sha1(generation)].sort(),
    );

    // the token went to the hub; unneeded files were never requested
    assert.ok(hub.requests.length > 0);
    for (const r of hub.requests.filter((r) => !r.url.startsWith("/cdn/"))) assert.equal(r.authorization, "Bearer test-token");
    assert.ok(!hub.requests.some((r) => /grads|meta\.json|expected/.test(r.url)));

    // progress: received grows per chunk and ends at the total
    const weightsProgress = progress.filter((p) => p.file === "model.safetensors");
    assert.ok(weightsProgress.length >= 2, "several progress calls for the weights");
    for (let i = 1; i < weightsProgress.length; i++) assert.ok(weightsProgress[i].received >= weightsProgress[i - 1].received);
    const last = weightsProgress.at(-1)!;
    assert.equal(last.received, weights.length);
    assert.equal(last.total, weights.length);
  });

  test("a second resolve is served from the cache without any request", async () => {
    await resolveModelFolder("test-org/tiny");
    hub.requests = [];
    const folder = await resolveModelFolder("test-org/tiny");
    assert.equal(hub.requests.length, 0);
    await assertFilesMatch(folder, `${FIXTURES}/tiny`, TINY_FILES);
  });

  test("downloads a sharded checkpoint with every shard its index names", async () => {
    const folder = await resolveModelFolder("test-org/tiny-sharded");
    await assertFilesMatch(folder, `${FIXTURES}/tiny-bf16-sharded`, SHARDED_FILES);
    assert.deepEqual((await fsp.readdir(folder)).sort(), [...SHARDED_FILES].sort());
    hub.requests = [];
    assert.equal(await resolveModelFolder("test-org/tiny-sharded"), folder);
    assert.equal(hub.requests.length, 0);
  });

  test("a file the API lists but the server does not have: a MambaError naming it, not a wait", async () => {
    await assert.rejects(resolveModelFolder("test-org/missing-files"), (e: unknown) => {
      assert.ok(e instanceof MambaError, String(e));
      assert.match(e.message, /404|not found/i);
      return true;
    });
  });

  test("names blobs by sha256 when the server sends no etag", async () => {
    const folder = await resolveModelFolder("test-org/no-etag");
    await assertFilesMatch(folder, `${FIXTURES}/tiny`, TINY_FILES);
    for (const f of TINY_FILES) {
      const data = await fsp.readFile(`${FIXTURES}/tiny/${f}`);
      assert.equal(await fsp.readlink(path.join(folder, f)), `../../blobs/${sha256(data)}`);
    }
  });

  test("HF_HUB_OFFLINE resolves from the cache and errors clearly when not cached", async () => {
    await resolveModelFolder("test-org/tiny");
    hub.requests = [];
    process.env.HF_HUB_OFFLINE = "1";
    const noNetwork = (() => {
      throw new Error("network used while offline");
    }) as unknown as typeof fetch;
    const folder = await resolveModelFolder("test-org/tiny", { fetch: noNetwork });
    await assertFilesMatch(folder, `${FIXTURES}/tiny`, TINY_FILES);
    await assert.rejects(resolveModelFolder("test-org/not-cached", { fetch: noNetwork }), (e: unknown) => {
      assert.ok(e instanceof MambaError);
      assert.match(e.message, /not in the local cache.*HF_HUB_OFFLINE/);
      return true;
    });
    assert.equal(hub.requests.length, 0);
  });

  test("an unknown repo is a MambaError naming the endpoint and HTTP status", async () => {
    await assert.rejects(resolveModelFolder("test-org/missing"), (e: unknown) => {
      assert.ok(e instanceof MambaError);
      assert.match(e.message, /model 'test-org\/missing' not found on http:\/\/127\.0\.0\.1:\d+ \(HTTP 404\)/);
      return true;
    });
  });

  test("a download cut off mid-file leaves no partial file in snapshots/ or blobs/", async () => {
    await assert.rejects(resolveModelFolder("test-org/broken"), (e: unknown) => {
      assert.ok(e instanceof MambaError);
      assert.match(e.message, /model\.safetensors/);
      return true;
    });
    const repoDir = repoCacheDir(home, "test-org/broken");
    assert.deepEqual(await listFiles(path.join(repoDir, "snapshots")), []);
    assert.deepEqual((await listFiles(path.join(repoDir, "blobs"))).filter((f) => f.endsWith(".incomplete")), []);
    assert.ok(!fs.existsSync(path.join(repoDir, "refs", "main")));
  });

  test("an unreachable hub is a MambaError suggesting HF_ENDPOINT or a local folder", async () => {
    const closed = new FakeHub();
    process.env.HF_ENDPOINT = await closed.start();
    await closed.stop();
    await assert.rejects(resolveModelFolder("test-org/tiny-unreachable"), (e: unknown) => {
      assert.ok(e instanceof MambaError);
      assert.match(e.message, /could not reach.*HF_ENDPOINT.*local model folder/);
      return true;
    });
  });

  test("a local folder is returned as is; a missing one or a file is a MambaError", async () => {
    assert.equal(await resolveModelFolder(`${FIXTURES}/tiny`), `${FIXTURES}/tiny`);
    await assert.rejects(resolveModelFolder(path.join(home, "no-such-model")), (e: unknown) => {
      assert.ok(e instanceof MambaError);
      assert.match(e.message, /model folder not found: .*no-such-model/);
      return true;
    });
    await assert.rejects(resolveModelFolder(`${FIXTURES}/tiny/config.json`), /model folder not found/);
    assert.equal(hub.requests.length, 0);
  });

  test("isRepoId accepts org/name and rejects paths", () => {
    assert.ok(isRepoId("state-spaces/mamba-130m-hf"));
    assert.ok(isRepoId("org_1/model.v2"));
    for (const s of ["mamba", "/abs/path", "./rel/path", "a/b/c", "org/na--me", "org/..", "org/", "", "org/na me"]) {
      assert.ok(!isRepoId(s), s);
    }
    // an existing relative path is a path, even when it reads like a repo id
    const cwd = process.cwd();
    try {
      process.chdir(FIXTURES);
      assert.ok(!isRepoId("tiny/config.json"));
    } finally {
      process.chdir(cwd);
    }
  });

  test("progressBarReporter prints one line per finished file when stderr is not a terminal", () => {
    const lines: string[] = [];
    const write = process.stderr.write;
    const isTTY = process.stderr.isTTY;
    process.stderr.isTTY = false;
    process.stderr.write = ((chunk: string) => (lines.push(chunk), true)) as typeof process.stderr.write;
    try {
      const reporter = progressBarReporter();
      reporter.onProgress({ file: "a.bin", received: 10, total: 100 });
      reporter.onProgress({ file: "a.bin", received: 100, total: 100 });
      reporter.onProgress({ file: "a.bin", received: 100, total: 100 });
      reporter.onProgress({ file: "b.json", received: 5, total: null });
      reporter.onProgress({ file: "b.json", received: 7, total: 7 });
      reporter.stop();
    } finally {
      process.stderr.write = write;
      process.stderr.isTTY = isTTY;
    }
    assert.deepEqual(lines, ["downloaded a.bin (100 B)\n", "downloaded b.json (7 B)\n"]);
  });
});
