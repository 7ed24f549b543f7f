/**
 * Chat templates: the Jinja template a tokenizer ships in tokenizer_config.json (`chat_template`, a string or a
 * list of named templates of which "default" is used), rendered with @huggingface/jinja as transformers'
 * apply_chat_template does: messages, bos_token, eos_token, add_generation_prompt = true.
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import { Template } from "@huggingface/jinja";
import { MambaError } from "../errors.ts";
import type { ChatMessage } from "./requests.ts";

export interface ChatTemplate {
  render(messages: ChatMessage[]): string;
}

function tokenText(v: unknown): string {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string") return (v as { content: string }).content;
  return "";
}

/** The folder's chat template, or null when its tokenizer ships none. A template that does not parse is an error. */
export async function loadChatTemplate(folder: string): Promise<ChatTemplate | null> {
  const file = path.join(folder, "tokenizer_config.json");
  let text: string;
  try {
    text = await fs.readFile(file, "utf8");
  } catch {
    return null;
  }
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(text) as Record<string, unknown>;
  } catch {
    throw new MambaError(`${file} is not valid JSON`);
  }
  let source = config.chat_template;
  if (Array.isArray(source)) source = (source.find((t) => t?.name === "default") ?? source[0])?.template;
  if (typeof source !== "string" || source.length === 0) return null;
  let template: Template;
  try {
    template = new Template(source);
  } catch (err) {
    throw new MambaError(`${file}: the chat template does not parse: ${(err as Error).message}`);
  }
  const bos = tokenText(config.bos_token);
  const eos = tokenText(config.eos_token);
  return {
    render(messages) {
      return template.render({ messages, bos_token: bos, eos_token: eos, add_generation_prompt: true });
    },
  };
}
