/**
 * The demo's web server (Node): serves the bundled page (index.html, style.css, main.js), demo.json (which model
 * the page should load, or why there is none) and the files of one model folder under /model/. Loopback only,
 * GET and HEAD only; model files are served by plain names from the folder itself, never from a subfolder.
 *
 * Every response carries the cross-origin isolation headers (COOP same-origin, COEP require-corp, CORP
 * same-origin): an isolated page gets SharedArrayBuffer, which a CPU engine with worker threads needs.
 */
import { createReadStream, promises as fs } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { MambaError, checkKeys, optionKeys } from "../errors.ts";

export interface DemoServerOptions {
  /** 0 = any free port */
  port: number;
  host?: string;
  /** the page: file name -> contents */
  page: Map<string, Uint8Array>;
  /** the model folder to serve, or null */
  modelFolder: string | null;
  /** a name for the model, shown on the page */
  modelName?: string;
  /** why there is no model (shown on the page) */
  noModelMessage?: string;
}
const DEMO_SERVER_OPTION_KEYS = optionKeys<DemoServerOptions>({ port: true, host: true, page: true, modelFolder: true, modelName: true, noModelMessage: true });

export interface DemoServer {
  url: string;
  port: number;
  close(): Promise<void>;
}

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".map": "application/json; charset=utf-8",
  ".json": "application/json; charset=utf-8",
};
/** sent with every response: they make the page cross-origin isolated (crossOriginIsolated, SharedArrayBuffer) */
export const ISOLATION_HEADERS: Readonly<Record<string, string>> = {
  "cross-origin-opener-policy": "same-origin",
  "cross-origin-embedder-policy": "require-corp",
  "cross-origin-resource-policy": "same-origin",
};

/** the files a model folder may hold that the page may ask for */
const MODEL_FILE = /^[A-Za-z0-9_][A-Za-z0-9_.-]*\.(json|safetensors|bin)$/;

function send(res: http.ServerResponse, status: number, body: string | Uint8Array, type = "text/plain; charset=utf-8", head = false): void {
  const bytes = typeof body === "string" ? Buffer.from(body) : body;
  res.writeHead(status, { ...ISOLATION_HEADERS, "content-type": type, "content-length": bytes.length, "cache-control": "no-store" });
  res.end(head ? undefined : bytes);
}

export async function startDemoServer(o: DemoServerOptions): Promise<DemoServer> {
  checkKeys("startDemoServer", o, DEMO_SERVER_OPTION_KEYS);
  const host = o.host ?? "127.0.0.1";
  const info = JSON.stringify(o.modelFolder
    ? { model: { url: "model/", name: o.modelName ?? path.basename(o.modelFolder) } }
    : { model: null, message: o.noModelMessage ?? "The demo server has no model folder." });

  const server = http.createServer((req, res) => {
    const head = req.method === "HEAD";
    if (req.method !== "GET" && !head) return send(res, 405, "only GET and HEAD\n");
    let pathname: string;
    try {
      pathname = decodeURIComponent(new URL(req.url ?? "/", "http://localhost").pathname);
    } catch {
      return send(res, 400, "bad path\n");
    }
    if (pathname === "/") pathname = "/index.html";
    if (pathname === "/demo.json") return send(res, 200, info, TYPES[".json"], head);
    const name = pathname.slice(1);
    const pageFile = o.page.get(name);
    if (pageFile) return send(res, 200, pageFile, TYPES[path.extname(name)] ?? "application/octet-stream", head);
    if (name.startsWith("model/") && o.modelFolder) {
      const file = name.slice("model/".length);
      if (MODEL_FILE.test(file)) return void serveFile(res, path.join(o.modelFolder, file), head);
    }
    send(res, 404, "not found\n");
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(o.port, host, () => {
      server.off("error", reject);
      resolve();
    });
  }).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "EADDRINUSE") throw new MambaError(`port ${o.port} is in use on ${host}`);
    if (err.code === "EACCES") throw new MambaError(`not allowed to listen on port ${o.port} (ports below 1024 need privileges)`);
    throw new MambaError(`cannot listen on ${host}:${o.port}: ${err.message}`);
  });
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://${host}:${port}/`,
    port,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}

async function serveFile(res: http.ServerResponse, file: string, head: boolean): Promise<void> {
  const stat = await fs.stat(file).catch(() => null);
  if (!stat?.isFile()) return send(res, 404, "not found\n");
  res.writeHead(200, {
    ...ISOLATION_HEADERS,
    "content-type": TYPES[path.extname(file)] ?? "application/octet-stream",
    "content-length": stat.size,
    "cache-control": "no-store",
  });
  if (head) return void res.end();
  const stream = createReadStream(file);
  stream.on("error", () => res.destroy());
  stream.pipe(res);
}
