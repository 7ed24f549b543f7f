/**
 * Bad requests over raw HTTP: each gets its 4xx status and an OpenAI-style error object naming the problem, and
 * none of them stops the server (a good request answers right after every one). Also the serve command itself:
 * it prints its URL when ready, answers, and on SIGTERM lets a running request end and exits 0.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { MODEL_NAME, type Served, alone, raw, serveDefault } from "./helpers.ts";
import { cliArgs, killAfter } from "../helpers/cli.ts";

const good = { model: MODEL_NAME, prompt: "The cat", max_tokens: 4, temperature: 0 };

describe("bad requests", { timeout: 120_000 }, () => {
  let s: Served;
  let want: string;
  before(async () => {
    s = await serveDefault({ maxPromptTokens: 64, maxTokensCap: 32, maxBodyBytes: 4096 });
    want = (await alone(s, "The cat", 4)).text;
  });
  after(async () => { await s?.close(); });

  const cases: [string, string, string, string | Buffer | undefined, number, RegExp, string | null][] = [
    ["invalid JSON", "POST", "/v1/completions", "{\"model\": ", 400, /not valid JSON/, null],
    ["a JSON array body", "POST", "/v1/completions", "[1, 2]", 400, /JSON object/, null],
    ["no model", "POST", "/v1/completions", JSON.stringify({ prompt: "x" }), 400, /'model' is required/, "model"],
    ["an unknown model", "POST", "/v1/completions", JSON.stringify({ ...good, model: "gpt-4" }), 404, /'gpt-4' does not exist/, "model"],
    ["model of the wrong type", "POST", "/v1/completions", JSON.stringify({ ...good, model: 3 }), 400, /'model' must be a string/, "model"],
    ["no prompt", "POST", "/v1/completions", JSON.stringify({ model: MODEL_NAME }), 400, /'prompt' is required/, "prompt"],
    ["a prompt of the wrong type", "POST", "/v1/completions", JSON.stringify({ ...good, prompt: { a: 1 } }), 400, /'prompt' must be/, "prompt"],
    ["a token id out of range", "POST", "/v1/completions", JSON.stringify({ ...good, prompt: [1, 2, 257] }), 400, /token id 257 at position 2/, "prompt"],
    ["a negative token id", "POST", "/v1/completions", JSON.stringify({ ...good, prompt: [-1] }), 400, /token id -1/, "prompt"],
    ["a fractional token id", "POST", "/v1/completions", JSON.stringify({ ...good, prompt: [1.5] }), 400, /item 0 is 1.5/, "prompt"],
    ["several prompts", "POST", "/v1/completions", JSON.stringify({ ...good, prompt: ["a", "b"] }), 400, /one prompt per request/, "prompt"],
    ["a prompt over the limit", "POST", "/v1/completions", JSON.stringify({ ...good, prompt: "x".repeat(65) }), 400, /65 tokens.*at most 64/, "prompt"],
    ["max_tokens over the cap", "POST", "/v1/completions", JSON.stringify({ ...good, max_tokens: 33 }), 400, /between 1 and 32/, "max_tokens"],
    ["max_tokens 0", "POST", "/v1/completions", JSON.stringify({ ...good, max_tokens: 0 }), 400, /max_tokens/, "max_tokens"],
    ["max_tokens a string", "POST", "/v1/completions", JSON.stringify({ ...good, max_tokens: "4" }), 400, /must be an integer/, "max_tokens"],
    ["temperature out of range", "POST", "/v1/completions", JSON.stringify({ ...good, temperature: -1 }), 400, /temperature/, "temperature"],
    ["top_p 0", "POST", "/v1/completions", JSON.stringify({ ...good, top_p: 0 }), 400, /top_p/, "top_p"],
    ["top_k fractional", "POST", "/v1/completions", JSON.stringify({ ...good, top_k: 2.5 }), 400, /top_k/, "top_k"],
    ["min_p 1", "POST", "/v1/completions", JSON.stringify({ ...good, min_p: 1 }), 400, /min_p/, "min_p"],
    ["repetition_penalty 0", "POST", "/v1/completions", JSON.stringify({ ...good, repetition_penalty: 0 }), 400, /repetition_penalty/, "repetition_penalty"],
    ["a fractional seed", "POST", "/v1/completions", JSON.stringify({ ...good, seed: 0.5 }), 400, /seed/, "seed"],
    ["stop of the wrong type", "POST", "/v1/completions", JSON.stringify({ ...good, stop: [1] }), 400, /'stop'/, "stop"],
    ["stream not a boolean", "POST", "/v1/completions", JSON.stringify({ ...good, stream: "yes" }), 400, /'stream' must be true or false/, "stream"],
    ["n = 2", "POST", "/v1/completions", JSON.stringify({ ...good, n: 2 }), 400, /'n' must be 1/, "n"],
    ["echo true", "POST", "/v1/completions", JSON.stringify({ ...good, echo: true }), 400, /'echo' must be false/, "echo"],
    ["logprobs", "POST", "/v1/completions", JSON.stringify({ ...good, logprobs: 3 }), 400, /logprobs/, "logprobs"],
    ["a body over the size limit", "POST", "/v1/completions", JSON.stringify({ ...good, prompt: "y".repeat(5000) }), 413, /exceeds 4096 bytes/, null],
    ["chat without messages", "POST", "/v1/chat/completions", JSON.stringify({ model: MODEL_NAME }), 400, /no chat template/, null],
    ["an unknown route", "GET", "/v1/engines", undefined, 404, /no route GET \/v1\/engines/, null],
    ["GET on a POST route", "GET", "/v1/completions", undefined, 405, /takes POST/, null],
    ["POST on /v1/models", "POST", "/v1/models", "{}", 405, /takes GET/, null],
    ["an unknown model by id", "GET", "/v1/models/nope", undefined, 404, /'nope' does not exist/, "model"],
  ];
  for (const [name, method, path, body, status, pattern, param] of cases) {
    test(`${name}: ${status}, then a good request still answers`, async () => {
      const r = await raw(s.server.url, method, path, body);
      assert.equal(r.status, status, r.text);
      const e = r.json().error;
      assert.equal(typeof e.message, "string");
      assert.match(e.message, pattern);
      assert.equal(e.type, "invalid_request_error");
      assert.equal(e.param, param);
      assert.ok("code" in e);
      const ok = await raw(s.server.url, "POST", "/v1/completions", JSON.stringify(good));
      assert.equal(ok.status, 200);
      assert.equal(ok.json().choices[0].text, want);
    });
  }

  test("a malformed HTTP request line gets 400; the server goes on", async () => {
    const net = await import("node:net");
    const url = new URL(s.server.url);
    const answer = await new Promise<string>((resolve, reject) => {
      const sock = net.connect(Number(url.port), url.hostname, () => sock.write("NOT HTTP AT ALL\r\n\r\n"));
      let data = "";
      sock.setTimeout(10_000, () => { sock.destroy(); reject(new Error("no answer")); });
      sock.on("data", (d) => { data += d.toString(); });
      sock.on("close", () => resolve(data));
      sock.on("error", reject);
    });
    assert.match(answer, /^HTTP\/1.1 400/);
    assert.equal((await raw(s.server.url, "POST", "/v1/completions", JSON.stringify(good))).json().choices[0].text, want);
  });
});

describe("mamba-ts serve", { timeout: 120_000 }, () => {
  test("prints its URL when ready, answers; SIGTERM lets the running request end, then exits 0", async () => {
    const child = spawn(process.execPath, cliArgs(["serve", "--port", "0", "--backend", "cpu", "--max-batch", "4"]), { stdio: ["ignore", "pipe", "pipe"] });
    killAfter(child, 100_000, () => {});
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => { stdout += d; });
    child.stderr.on("data", (d) => { stderr += d; });
    const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
    const start = Date.now();
    while (!/^http:\/\/127\.0\.0\.1:\d+\n/.test(stdout)) {
      assert.ok(Date.now() - start < 60_000, `no URL printed: ${stderr}`);
      assert.equal(child.exitCode, null, `exited early: ${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const url = stdout.trim();
    const models = await raw(url, "GET", "/v1/models");
    assert.equal(models.json().data[0].id, MODEL_NAME);
    // a request of 60 tokens is running when the signal comes: it ends whole
    const running = raw(url, "POST", "/v1/completions", JSON.stringify({ ...good, max_tokens: 60 }));
    await new Promise((r) => setTimeout(r, 150));
    child.kill("SIGTERM");
    const r = await running;
    assert.equal(r.status, 200);
    const finish = r.json().choices[0].finish_reason;
    assert.ok(finish === "stop" || (finish === "length" && r.json().usage.completion_tokens === 60), JSON.stringify(r.json()));
    assert.equal(await exited, 0, stderr);
    assert.match(stderr, /shutting down/);
    // and no longer listening
    await assert.rejects(raw(url, "GET", "/health", undefined, {}, 5000));
  });

  test("bad options are usage errors (exit 2)", async () => {
    for (const args of [["--port", "70000"], ["--max-batch", "0"], ["--prefix-cache-mb", "-1"], ["--backend", "tpu"]]) {
      const child = spawn(process.execPath, cliArgs(["serve", ...args]), { stdio: ["ignore", "pipe", "pipe"] });
      killAfter(child, 60_000, () => {});
      let stderr = "";
      child.stderr.on("data", (d) => { stderr += d; });
      const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
      assert.equal(code, 2, `${args.join(" ")}: ${stderr}`);
      assert.match(stderr, /^mamba-ts: error: /);
    }
  });
});
