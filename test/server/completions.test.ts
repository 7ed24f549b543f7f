/**
 * The server through the official `openai` client: completions (whole and streamed) equal model.generate's answer
 * for the same prompt (greedy and seeded sampling), with usage and finish_reason; stop strings cut the text (and a
 * stream never shows them); token-id prompts; /v1/models; chat completions rendered through a chat template, and
 * refused with 400 for a model without one.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import OpenAI from "openai";
import { defaultModelFolder } from "../../src/cli/default-model.ts";
import { loadChatTemplate } from "../../src/server/chat.ts";
import { MODEL_NAME, type Served, alone, serveDefault } from "./helpers.ts";

describe("completions through the openai client", { timeout: 120_000 }, () => {
  let s: Served;
  before(async () => { s = await serveDefault(); });
  after(async () => { await s?.close(); });

  test("/v1/models lists the model", async () => {
    const list = await s.client.models.list();
    assert.deepEqual(list.data.map((m) => m.id), [MODEL_NAME]);
    assert.equal((await s.client.models.retrieve(MODEL_NAME)).id, MODEL_NAME);
  });

  test("a greedy completion == model.generate of the prompt alone; usage and finish_reason length", async () => {
    const prompt = "The little robot walked";
    const want = await alone(s, prompt, 12);
    const r = await s.client.completions.create({ model: MODEL_NAME, prompt, max_tokens: 12, temperature: 0 });
    assert.equal(r.object, "text_completion");
    assert.equal(r.choices.length, 1);
    assert.equal(r.choices[0]!.text, want.text);
    assert.equal(r.choices[0]!.finish_reason, "length");
    assert.deepEqual(r.usage, { prompt_tokens: s.tokenizer.encode(prompt).length, completion_tokens: 12, total_tokens: s.tokenizer.encode(prompt).length + 12 });
  });

  test("a streamed completion yields the same text in pieces, then finish_reason and [DONE]", async () => {
    const prompt = "Once upon a time";
    const whole = await s.client.completions.create({ model: MODEL_NAME, prompt, max_tokens: 10, temperature: 0 });
    const stream = await s.client.completions.create({ model: MODEL_NAME, prompt, max_tokens: 10, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let text = "";
    let finish: string | null = null;
    let pieces = 0;
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      for (const c of chunk.choices) {
        text += c.text;
        if (c.text) pieces++;
        if (c.finish_reason) finish = c.finish_reason;
      }
    }
    assert.equal(text, whole.choices[0]!.text);
    assert.equal(text, (await alone(s, prompt, 10)).text);
    assert.ok(pieces >= 2, `${pieces} pieces`);
    assert.equal(finish, "length");
    assert.equal(usage?.completion_tokens, 10);
  });

  test("seeded sampling == model.generate with that seed; the same seed twice gives the same text", async () => {
    const prompt = "In the morning";
    const o = { temperature: 0.9, seed: 1234, top_p: 0.95 };
    const want = await alone(s, prompt, 14, { temperature: 0.9, seed: 1234, topP: 0.95 });
    const a = await s.client.completions.create({ model: MODEL_NAME, prompt, max_tokens: 14, ...o });
    const b = await s.client.completions.create({ model: MODEL_NAME, prompt, max_tokens: 14, ...o });
    assert.equal(a.choices[0]!.text, want.text);
    assert.equal(b.choices[0]!.text, want.text);
  });

  test("a prompt of token ids; the mamba-ts fields top_k, min_p, repetition_penalty are taken", async () => {
    const ids = Array.from(s.tokenizer.encode("Hello there"));
    const want = await alone(s, ids, 8);
    const r = await s.client.completions.create({ model: MODEL_NAME, prompt: ids, max_tokens: 8, temperature: 0 });
    assert.equal(r.choices[0]!.text, want.text);
    const penalized = await s.model.generate(Int32Array.from(ids), { maxNewTokens: 8, temperature: 0.8, topK: 20, minP: 0.05, repetitionPenalty: 1.3, seed: 7 });
    const r2 = await s.client.completions.create({ model: MODEL_NAME, prompt: ids, max_tokens: 8, temperature: 0.8, seed: 7, top_k: 20, min_p: 0.05, repetition_penalty: 1.3 } as OpenAI.CompletionCreateParamsNonStreaming);
    assert.equal(r2.choices[0]!.text, s.tokenizer.decode(penalized.subarray(ids.length)));
  });

  test("a stop string cuts the text before it (finish_reason stop), whole and streamed", async () => {
    const prompt = "Once upon a time";
    const full = (await alone(s, prompt, 24)).text;
    // a stop string taken from the middle of the greedy answer
    const at = Math.floor(full.length / 2);
    const stop = full.slice(at, at + 2);
    assert.ok(stop.length === 2, `the answer is too short: ${JSON.stringify(full)}`);
    const want = full.slice(0, full.indexOf(stop));
    const r = await s.client.completions.create({ model: MODEL_NAME, prompt, max_tokens: 24, temperature: 0, stop: [stop, "\u0000never"] });
    assert.equal(r.choices[0]!.text, want);
    assert.equal(r.choices[0]!.finish_reason, "stop");
    let text = "";
    let finish: string | null = null;
    for await (const chunk of await s.client.completions.create({ model: MODEL_NAME, prompt, max_tokens: 24, temperature: 0, stop, stream: true })) {
      for (const c of chunk.choices) { text += c.text; finish = c.finish_reason ?? finish; }
    }
    assert.equal(text, want);
    assert.equal(finish, "stop");
    const health = await (await fetch(`${s.server.url}/health`, { signal: AbortSignal.timeout(10_000) })).json() as { rows: number };
    assert.equal(health.rows, 0, "the stopped requests left the batch");
  });

  test("chat completions on a model without a chat template: 400 that says so", async () => {
    await assert.rejects(s.client.chat.completions.create({ model: MODEL_NAME, messages: [{ role: "user", content: "hi" }] }), (err: unknown) => {
      assert.ok(err instanceof OpenAI.APIError);
      assert.equal(err.status, 400);
      assert.match(err.message, /no chat template/);
      return true;
    });
  });
});

describe("chat completions with a chat template", { timeout: 120_000 }, () => {
  let s: Served;
  let dir: string;
  const template = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), "mamba-ts-chat-"));
    for (const f of ["config.json", "model.safetensors", "tokenizer.json"]) await fs.copyFile(path.join(defaultModelFolder(), f), path.join(dir, f));
    await fs.writeFile(path.join(dir, "tokenizer_config.json"), JSON.stringify({ chat_template: template, bos_token: "", eos_token: "<|endoftext|>" }));
    s = await serveDefault({ chat: await loadChatTemplate(dir) }, dir);
  });
  after(async () => {
    await s?.close();
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  test("the conversation is rendered by the template, and answered as its completion would be (whole and streamed)", async () => {
    const messages = [{ role: "system" as const, content: "Be brief." }, { role: "user" as const, content: "Tell me a story" }];
    const rendered = "<system>Be brief.\n<user>Tell me a story\n<assistant>";
    const want = await alone(s, rendered, 10);
    const r = await s.client.chat.completions.create({ model: MODEL_NAME, messages, max_tokens: 10, temperature: 0 });
    assert.equal(r.object, "chat.completion");
    assert.equal(r.choices[0]!.message.role, "assistant");
    assert.equal(r.choices[0]!.message.content, want.text);
    assert.equal(r.usage?.prompt_tokens, s.tokenizer.encode(rendered).length);
    let text = "";
    let role: string | undefined;
    for await (const chunk of await s.client.chat.completions.create({ model: MODEL_NAME, messages, max_tokens: 10, temperature: 0, stream: true })) {
      for (const c of chunk.choices) { text += c.delta.content ?? ""; role ??= c.delta.role; }
    }
    assert.equal(role, "assistant");
    assert.equal(text, want.text);
  });
});
