// Client matrix: openai-node against llmq (run by tests/e2e/test_clients_js.py).
// Env: LLMQ_URL, LLMQ_MODEL. Prints one JSON line {feature: "pass" | error}; exits 1 on a failure.
import assert from "node:assert/strict";
import OpenAI from "openai";

const client = new OpenAI({ baseURL: `${process.env.LLMQ_URL}/v1`, apiKey: "x", maxRetries: 0 });
const model = process.env.LLMQ_MODEL;
const tool = {
  type: "function",
  name: "get_weather",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
};
const schema = {
  type: "object",
  properties: { city: { type: "string" }, temperature: { type: "number" } },
};

const features = {
  async chat() {
    const r = await client.chat.completions.create({ model, messages: [{ role: "user", content: "hi" }] });
    assert.equal(r.choices[0].message.content, "Hello from llmq.");
    const s = await client.chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], stream: true });
    let text = "";
    for await (const c of s) text += c.choices[0]?.delta?.content ?? "";
    assert.equal(text, "Hello from llmq.");
  },
  async "chat tools"() {
    const chatTool = { type: "function", function: { name: tool.name, parameters: tool.parameters } };
    const messages = [{ role: "user", content: "weather in Oslo?" }];
    const first = await client.chat.completions.create({ model, messages, tools: [chatTool] });
    const call = first.choices[0].message.tool_calls[0];
    assert.deepEqual(JSON.parse(call.function.arguments), { city: "Oslo" });
    messages.push(first.choices[0].message, { role: "tool", tool_call_id: call.id, content: "sunny" });
    const second = await client.chat.completions.create({ model, messages, tools: [chatTool] });
    assert.equal(second.choices[0].message.content, "It is sunny in Oslo.");
  },
  async "chat json"() {
    const r = await client.chat.completions.create({
      model, messages: [{ role: "user", content: "json" }],
      response_format: { type: "json_schema", json_schema: { name: "w", schema } },
    });
    assert.deepEqual(JSON.parse(r.choices[0].message.content), { city: "Oslo", temperature: 21 });
  },
  async responses() {
    const first = await client.responses.create({ model, input: "hi", reasoning: { effort: "low", summary: "auto" } });
    assert.equal(first.output_text, "Hello from llmq.");
    assert.equal(first.output[0].summary[0].text, "The user greets me; I should greet back.");
    const second = await client.responses.create({ model, input: "again", previous_response_id: first.id });
    assert.equal(second.output_text, "Hello from llmq.");
    const stream = client.responses.stream({ model, input: "hi" });
    let deltas = "";
    for await (const e of stream) if (e.type === "response.output_text.delta") deltas += e.delta;
    assert.equal(deltas, "Hello from llmq.");
    assert.equal((await stream.finalResponse()).status, "completed");
  },
  async "responses tools"() {
    const asked = await client.responses.create({ model, input: "weather?", tools: [tool] });
    const call = asked.output.find((o) => o.type === "function_call");
    assert.equal(call.name, "get_weather");
    const done = await client.responses.create({
      model, previous_response_id: asked.id, tools: [tool],
      input: [{ type: "function_call_output", call_id: call.call_id, output: "sunny" }],
    });
    assert.equal(done.output_text, "It is sunny in Oslo.");
  },
  async "responses json"() {
    const r = await client.responses.create({
      model, input: "json", text: { format: { type: "json_schema", name: "w", schema } },
    });
    assert.deepEqual(JSON.parse(r.output_text), { city: "Oslo", temperature: 21 });
  },
};

const results = {};
let failed = false;
for (const [name, run] of Object.entries(features)) {
  try {
    await run();
    results[name] = "pass";
  } catch (error) {
    failed = true;
    results[name] = String(error?.stack ?? error).slice(0, 2000);
  }
}
console.log(JSON.stringify(results));
process.exit(failed ? 1 : 0);
