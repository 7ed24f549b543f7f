/**
 * Headless Chromium for the browser tests: Debian's /usr/bin/chromium (scripts/install-chromium.sh installs it)
 * driven by playwright-core, never a browser that Playwright downloads. WebGPU runs on SwiftShader, Chromium's
 * software Vulkan (--enable-unsafe-webgpu --enable-features=Vulkan; --disable-gpu would remove the adapter).
 * The background-networking flags keep Chromium off the network, which a sandboxed machine refuses anyway.
 * Playwright starts each browser with a fresh temporary profile (--user-data-dir) and removes it on close.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { type Browser, chromium } from "playwright-core";

export const CHROMIUM = process.env.MAMBA_TS_CHROMIUM ?? "/usr/bin/chromium";

export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--enable-unsafe-webgpu",
  "--enable-features=Vulkan",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
];

/**
 * For node:test's `skip`: false when the browser tests can run, else the reason they skip. In CI (CI=true) they
 * never skip: a missing Chromium fails them (launchChromium says why).
 */
export function chromiumSkip(): string | false {
  if (existsSync(CHROMIUM) || process.env.CI === "true") return false;
  return `Chromium not found at ${CHROMIUM}: install it with 'sudo bash scripts/install-chromium.sh' (or set MAMBA_TS_CHROMIUM)`;
}

export async function launchChromium(): Promise<Browser> {
  assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM}: CI installs it with scripts/install-chromium.sh`);
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 60_000 });
}
