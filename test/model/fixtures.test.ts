/** The PyTorch reference fixtures: logits, hidden states and greedy output, for every checkpoint format. */
import { test } from "node:test";
import { checkFixtureForward, fixture } from "../helpers/fixtures.ts";

const folders = ["hf-mamba/tiny", "hf-mamba/tiny-f16", "hf-mamba/tiny-bf16-sharded", "mamba-ssm/tiny"];

for (const name of folders) {
  test(`${name}: logits, hidden states and greedy output match PyTorch (cpu)`, async () => {
    await checkFixtureForward(fixture(...name.split("/")), "cpu", { tol: 1e-4 });
  });
}
