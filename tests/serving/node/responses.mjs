// The Responses API through openai-node: `responses.create`, the `responses.stream()` helper's finalResponse() with
// the events it saw, and a refused request (tools) as the SDK reports it.
import { client, run } from "./common.mjs";

run(async (cfg) => {
  const openai = client(cfg);
  const request = { model: cfg.model, input: cfg.input, temperature: 0, millrace: cfg.millrace };

  const created = await openai.responses.create(request);

  const stream = openai.responses.stream(request);
  const events = [];
  stream.on("event", (event) => events.push({
    type: event.type, sequence_number: event.sequence_number, annotation_index: event.annotation_index ?? null,
  }));
  const streamed = await stream.finalResponse();

  let refused = null;
  try {
    await openai.responses.create({ ...request, tools: [{ type: "web_search" }] });
  } catch (err) {
    refused = { status: err.status ?? null, message: String(err.message) };
  }
  // output_text is the SDK's own field: set only when it parsed the output as a Response.
  return { created, streamed, events, refused,
           output_text: { created: created.output_text, streamed: streamed.output_text } };
});
