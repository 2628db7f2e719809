// Client matrix: the Vercel AI SDK with @ai-sdk/openai's default (Responses API) provider
// against llmq (run by tests/e2e/test_clients_js.py). Env: LLMQ_URL, LLMQ_MODEL.
// Prints one JSON line {feature: "pass" | error}; exits 1 on a failure.
import assert from "node:assert/strict";
import { createOpenAI } from "@ai-sdk/openai";
import { generateObject, generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const openai = createOpenAI({ baseURL: `${process.env.LLMQ_URL}/v1`, apiKey: "x" });
const model = openai(process.env.LLMQ_MODEL); // the default: the Responses API

const features = {
  async "two turns"() {
    const first = await generateText({ model, prompt: "hi", maxRetries: 0 });
    assert.equal(first.text, "Hello from llmq.");
    // the second turn sends the first answer back as an item_reference (store is on)
    const messages = [{ role: "user", content: "hi" }, ...first.response.messages, { role: "user", content: "again" }];
    const second = await generateText({ model, messages, maxRetries: 0 });
    assert.equal(second.text, "Hello from llmq.");
  },
  async "tool loop"() {
    const result = await generateText({
      model, maxRetries: 0, prompt: "weather in Oslo?", stopWhen: stepCountIs(3),
      tools: {
        get_weather: tool({
          description: "the weather of a city",
          inputSchema: z.object({ city: z.string() }),
          execute: async ({ city }) => `sunny in ${city}`,
        }),
      },
    });
    assert.equal(result.steps.length, 2);
    assert.equal(result.steps[0].toolCalls[0].toolName, "get_weather");
    assert.equal(result.text, "It is sunny in Oslo.");
  },
  async json() {
    const { object } = await generateObject({
      model, maxRetries: 0, prompt: "json",
      schema: z.object({ city: z.string(), temperature: z.number() }),
    });
    assert.deepEqual(object, { city: "Oslo", temperature: 21 });
  },
  async reasoning() {
    const result = await generateText({
      model, maxRetries: 0, prompt: "hi",
      // forceReasoning: a model name the SDK does not know as a reasoning model
      providerOptions: { openai: { forceReasoning: true, reasoningEffort: "low", reasoningSummary: "auto" } },
    });
    assert.equal(result.reasoningText, "The user greets me; I should greet back.");
    const stream = streamText({
      model, maxRetries: 0, prompt: "hi",
      providerOptions: { openai: { forceReasoning: true, reasoningSummary: "auto" } },
    });
    let reasoning = "";
    for await (const part of stream.fullStream) {
      if (part.type === "reasoning-delta") reasoning += part.text;
      if (part.type === "error") throw part.error;
    }
    assert.equal(reasoning, "The user greets me; I should greet back.");
    assert.equal(await stream.text, "Hello from llmq.");
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
