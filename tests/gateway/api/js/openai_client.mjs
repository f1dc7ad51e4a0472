// Drives a live gateway with the official OpenAI Node SDK and prints what each call returned as
// one JSON report; tests/gateway/api/test_clients.py asserts on it.
// usage: node openai_client.mjs NODE_MODULES_DIR BASE_URL API_KEY ADAPTER BASE_MODEL CASES_JSON
// CASES_JSON carries what the Python side defines once: {"weatherTool": <a chat tool>,
// "toolTokens": <max_tokens for a tool call or a structured answer>, "verdictSchema": <a JSON
// schema>}.
// The SDK is installed outside the repository (`make clients`), so it is loaded from the
// node_modules folder given rather than resolved from this file's location.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const [modules, baseURL, apiKey, adapter, baseModel, casesJson] = process.argv.slice(2);
const { weatherTool, toolTokens, verdictSchema } = JSON.parse(casesJson);
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

// Tools: one call asked for by name, and by "required" with parallel calls off.
const weather = [{ role: "user", content: "What is the weather in Paris?" }];
const toolChoices = {
  named: { type: "function", function: { name: weatherTool.function.name } },
  required: "required",
};
const toolRequest = (toolChoice) => ({
  model: adapter,
  messages: weather,
  tools: [weatherTool],
  tool_choice: toolChoice,
  parallel_tool_calls: false,
  max_tokens: toolTokens,
  temperature: 0,
});

// An argument string as JSON.parse reads it, or why it could not.
function parsed(text) {
  try {
    return { ok: JSON.parse(text) };
  } catch (err) {
    return { error: String(err), text };
  }
}

function toolAnswer(completion) {
  const { message, finish_reason: finishReason } = completion.choices[0];
  return {
    finishReason,
    content: message.content,
    calls: (message.tool_calls ?? []).map((call) => ({
      id: call.id,
      type: call.type,
      name: call.function.name,
      arguments: call.function.arguments,
      parsed: parsed(call.function.arguments),
    })),
  };
}

report.tools = {};
report.toolsStream = {};
for (const [how, toolChoice] of Object.entries(toolChoices)) {
  report.tools[how] = toolAnswer(await client.chat.completions.create(toolRequest(toolChoice)));
  // The same request streamed, its tool-call pieces put back together by the SDK's helper.
  const toolRunner = client.chat.completions.stream(toolRequest(toolChoice));
  report.toolsStream[how] = toolAnswer(await toolRunner.finalChatCompletion());
}

// Structured output: a strict JSON schema.
const verdict = await client.chat.completions.create({
  model: adapter,
  messages: [{ role: "user", content: "Is the sky blue? Answer yes or no, and a digit." }],
  response_format: {
    type: "json_schema",
    json_schema: { name: "Verdict", strict: true, schema: verdictSchema },
  },
  max_tokens: toolTokens,
  temperature: 0,
});
report.structured = {
  finishReason: verdict.choices[0].finish_reason,
  content: verdict.choices[0].message.content,
};

// The Responses API: each request plain, streamed event by event, and through the SDK's stream
// helper.  Free text on the random base runs to max_output_tokens ("incomplete"); a JSON schema
// in `text.format` ends when its grammar does ("completed").
const verdictFormat = { type: "json_schema", name: "Verdict", strict: true, schema: verdictSchema };
const responseRequests = {
  text: {
    model: adapter,
    input: hello[0].content,
    max_output_tokens: greedy.max_tokens,
    temperature: 0,
  },
  verdict: {
    model: adapter,
    input: "Is the sky blue? Answer yes or no, and a digit.",
    max_output_tokens: toolTokens,
    temperature: 0,
    text: { format: verdictFormat },
  },
};

// A response's text as the final stream event carries it: the SDK adds `output_text` to the
// responses it returns itself, not to the ones inside raw stream events.
const textOf = (r) =>
  r.output
    .flatMap((item) => (item.type === "message" ? item.content : []))
    .filter((part) => part.type === "output_text")
    .map((part) => part.text)
    .join("");

async function responses(request) {
  const plain = await client.responses.create(request);
  const events = await client.responses.create({ ...request, stream: true });
  const eventTypes = [];
  const deltas = [];
  let last = null;
  for await (const event of events) {
    eventTypes.push(event.type);
    if (event.type === "response.output_text.delta") deltas.push(event.delta);
    last = event;
  }
  const helped = await client.responses.stream(request).finalResponse();
  return {
    plain: {
      id: plain.id,
      object: plain.object,
      model: plain.model,
      status: plain.status,
      incompleteDetails: plain.incomplete_details,
      outputText: plain.output_text,
      outputTokens: plain.usage?.output_tokens,
    },
    stream: {
      eventTypes,
      text: deltas.join(""),
      final: last?.response && {
        id: last.response.id,
        status: last.response.status,
        outputText: textOf(last.response),
      },
    },
    streamHelper: { status: helped.status, outputText: helped.output_text },
  };
}

report.responses = {};
for (const [what, request] of Object.entries(responseRequests)) {
  report.responses[what] = await responses(request);
}

process.stdout.write(JSON.stringify(report));
