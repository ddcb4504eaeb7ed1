// Chat Completions through openai-node: the `.stream()` helper's finalChatCompletion(), and the raw
// `create({stream: true})` deltas as a client that reads chunks itself would see them.
import { client, run } from "./common.mjs";

run(async (cfg) => {
  const openai = client(cfg);
  const request = { model: cfg.model, messages: cfg.messages, temperature: 0, max_tokens: cfg.max_tokens };

  const stream = openai.chat.completions.stream(request);
  let deltas = 0;
  stream.on("content", () => { deltas += 1; });
  const final = await stream.finalChatCompletion();
  const choice = final.choices[0];

  let content = "";
  const annotations = [];
  for await (const chunk of await openai.chat.completions.create({ ...request, stream: true })) {
    const delta = chunk.choices[0]?.delta ?? {};
    content += delta.content ?? "";
    annotations.push(...(delta.annotations ?? []));
  }
  return {
    helper: { content: choice.message.content, annotations: choice.message.annotations ?? [],
              finish_reason: choice.finish_reason, deltas, citations: final.citations ?? null },
    raw: { content, annotations },
  };
});
