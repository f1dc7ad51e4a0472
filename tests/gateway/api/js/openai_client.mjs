// Drives a live gateway with the official OpenAI Node SDK and prints what each call returned as
// one JSON report; tests/gateway/api/test_clients.py asserts on it.
// usage: node openai_client.mjs NODE_MODULES_DIR BASE_URL API_KEY ADAPTER BASE_MODEL
// The SDK is installed outside the repository (`make clients`), so it is loaded from the
// node_modules folder given rather than resolved from this file's location.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const [modules, baseURL, apiKey, adapter, baseModel] = process.argv.slice(2);
const require = createRequire(path.join(modules, "node_modules", "package.json"));
const { default: OpenAI } = require("openai");
const sdkPackage = path.join(modules, "node_modules", "openai", "package.json");
const sdkVersion = JSON.parse(readFileSync(sdkPackage, "utf8")).version;

const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const hello = [{ role: "user", content: "hello there" }];
const greedy = { max_tokens: 8, temperature: 0 };

// A failed call as the SDK raised it: its own class, the HTTP status and the gateway's message.
async function attempt(call) {
  try {
    return { ok: await call() };
  } catch (err) {
    if (!(err instanceof OpenAI.APIError)) throw err;
    return {
      error: {
        class: err.constructor.name,
        isNotFound: err instanceof OpenAI.NotFoundError,
        isBadRequest: err instanceof OpenAI.BadRequestError,
        status: err.status,
        message: err.message,
        param: err.param,
        code: err.code,
      },
    };
  }
}

const report = { sdkVersion };

const chat = await client.chat.completions
  .create({ model: adapter, messages: hello, ...greedy })
  .withResponse();
report.chat = {
  id: chat.data.id,
  model: chat.data.model,
  content: chat.data.choices[0].message.content,
  finishReason: chat.data.choices[0].finish_reason,
  usage: chat.data.usage,
  adapterVersion: chat.response.headers.get("x-flywheel-adapter-version"),
};

const baseChat = await client.chat.completions.create({ model: baseModel, messages: hello, ...greedy });
report.baseChat = { content: baseChat.choices[0].message.content };

const stream = await client.chat.completions.create({
  model: adapter,
  messages: hello,
  ...greedy,
  stream: true,
  stream_options: { include_usage: true },
});
const pieces = [];
let usage = null;
let finishReason = null;
for await (const chunk of stream) {
  for (const choice of chunk.choices) {
    pieces.push(choice.delta.content ?? "");
    finishReason = choice.finish_reason ?? finishReason;
  }
  usage = chunk.usage ?? usage;
}
report.stream = { content: pieces.join(""), finishReason, usage };

// The SDK's helper that puts a stream back together into one completion.
const runner = client.chat.completions.stream({ model: adapter, messages: hello, ...greedy });
const final = await runner.finalChatCompletion();
report.streamHelper = { content: final.choices[0].message.content };

const completion = await client.completions.create({ model: adapter, prompt: "The quick brown fox", ...greedy });
report.completion = { object: completion.object, text: completion.choices[0].text };

const completionStream = await client.completions.create({
  model: adapter,
  prompt: "The quick brown fox",
  ...greedy,
  stream: true,
});
const texts = [];
for await (const chunk of completionStream) texts.push(chunk.choices[0]?.text ?? "");
report.completionStream = { text: texts.join("") };

report.unknownModel = await attempt(() =>
  client.chat.completions.create({ model: "no-such-adapter", messages: hello, ...greedy }),
);
report.badParam = await attempt(() =>
  client.chat.completions.create({ model: adapter, messages: hello, ...greedy, presence_penalty: 3 }),
);
report.models = (await client.models.list()).data.map((m) => m.id).sort();

process.stdout.write(JSON.stringify(report));
