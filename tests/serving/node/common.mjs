// Shared by the scripts here: each is run as `node <script>.mjs '<json config>'` by tests/serving/harness.py's
// run_node, talks to a live Millrace API through the official `openai` npm package (pinned in package.json, installed
// by `make install` with `npm ci`), and prints one JSON object on stdout for the Python test to check.
import OpenAI from "openai";

export function config() {
  return JSON.parse(process.argv[2] ?? "{}");
}

export function client(cfg) {
  return new OpenAI({ baseURL: cfg.base_url, apiKey: cfg.api_key ?? "unused", maxRetries: 0, timeout: 120_000 });
}

// Runs `main(cfg)` and prints its result; an error is printed too (as {"error": ...}) with exit code 1, so the test
// shows what the SDK said rather than a bare failure.
export async function run(main) {
  try {
    process.stdout.write(JSON.stringify(await main(config())) + "\n");
  } catch (err) {
    process.stdout.write(JSON.stringify({ error: String(err?.stack ?? err) }) + "\n");
    process.exitCode = 1;
  }
}
