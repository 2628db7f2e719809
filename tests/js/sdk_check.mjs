// The official @anthropic-ai/sdk against llmq: plain, streamed (the `messages.stream`
// helpers), tools, thinking, an image, count_tokens and the error classes. Prints one JSON
// object with what it saw; the Python test (tests/e2e/test_messages_js.py) judges it.
// Usage: node sdk_check.mjs <base url> <api key> <model> <model the key may not use>
//   <model with no live worker> <model whose upstream fails> <a key limited to 1 request/min>
import Anthropic from "@anthropic-ai/sdk";

const [baseURL, apiKey, model, forbidden, gone, broken, limitedKey] = process.argv.slice(2);
const client = new Anthropic({ baseURL, apiKey, maxRetries: 0 });
const user = [{ role: "user", content: "hello from node" }];
const out = {};

const plain = await client.messages.create({ model, max_tokens: 64, messages: user });
out.plain = plain;

const stream = client.messages.stream({ model, max_tokens: 64, messages: user });
const texts = [];
stream.on("text", (t) => texts.push(t));
out.streamed = { final: await stream.finalMessage(), texts };

const weather = {
  name: "get_weather",
  description: "the weather of a city",
  input_schema: { type: "object", properties: { city: { type: "string" } } },
};
const asked = [{ role: "user", content: "weather in Oslo?" }];
const call = await client.messages.create({ model, max_tokens: 64, messages: asked, tools: [weather] });
const toolUse = call.content.find((b) => b.type === "tool_use");
const answer = await client.messages.create({
  model, max_tokens: 64, tools: [weather],
  messages: [...asked, { role: "assistant", content: call.content },
    { role: "user", content: [{ type: "tool_result", tool_use_id: toolUse.id, content: "sunny" }] }],
});
out.tools = { call, answer };

out.thinking = await client.messages.create({
  model, max_tokens: 2048, messages: user, thinking: { type: "enabled", budget_tokens: 1024 },
});

const png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
out.image = await client.messages.create({
  model, max_tokens: 64, messages: [{ role: "user", content: [
    { type: "image", source: { type: "base64", media_type: "image/png", data: png } },
    { type: "text", text: "what is it?" }] }],
});

out.count = await client.messages.countTokens({ model, messages: user });

async function failure(make) {
  try {
    await make();
    return { error: "none" };
  } catch (e) {
    return { class: e.constructor.name, status: e.status, body: e.error,
             requestId: e.requestID ?? null, retryAfter: e.headers?.get?.("retry-after") ?? null };
  }
}
out.errors = {
  bad_request: await failure(() => client.messages.create({ model, max_tokens: 0, messages: user })),
  authentication: await failure(() => new Anthropic({ baseURL, apiKey: "sk-llmq-wrong", maxRetries: 0 })
    .messages.create({ model, max_tokens: 5, messages: user })),
  permission: await failure(() => client.messages.create({ model: forbidden, max_tokens: 5, messages: user })),
  not_found: await failure(() => client.messages.create({ model: "no-such-model", max_tokens: 5, messages: user })),
  content_too_large: await failure(() => client.messages.create({
    model, max_tokens: 5, messages: [{ role: "user", content: "x".repeat(300000) }] })),
  overloaded: await failure(() => client.messages.create({ model: gone, max_tokens: 5, messages: user })),
  internal_server: await failure(() => client.messages.create({ model: broken, max_tokens: 5, messages: user })),
};
const limited = new Anthropic({ baseURL, apiKey: limitedKey, maxRetries: 0 });
await limited.messages.create({ model, max_tokens: 5, messages: user });
out.errors.rate_limit = await failure(() => limited.messages.create({ model, max_tokens: 5, messages: user }));
console.log(JSON.stringify(out));
