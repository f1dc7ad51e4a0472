// The playground: chat as a tenant would, through the public OpenAI API (/v1/chat/completions,
// streamed), pinned to one version with the model "name@N"; thumbs and "edit this answer" on
// each reply go to /v1/feedback with that reply's browser feedback token, as a tenant's app
// sends them.  The console holds only an admin token, so each reply gets a tenant key of its own
// from the admin API (POST /admin/tenants/{name}/playground-key, audited), revoked as soon as
// the reply has streamed.  Every value is written as text.
import { adapterRoute } from "/console/console-adapter.js";
import { el, say } from "/console/console-ui.js";

export const playgroundRoute = (tenant, adapter) =>
  ["#playground", ...(tenant ? [tenant, adapter || ""] : [])].map((part, i) => (i ? encodeURIComponent(part) : part)).join("/").replace(/\/$/, "");

const SERVABLE = ["ready", "passed"]; // adapters/registry.py SERVABLE_STATES: what name@N answers

// The public API's error envelope ({"error": {"message"}}) as an Error.
async function publicError(response, what) {
  let message = `${response.status} ${response.statusText || ""}`.trim();
  try {
    const data = await response.json();
    if (data && data.error && data.error.message) message = data.error.message;
  } catch {
    // not JSON: the status says enough
  }
  return new Error(`${what}: ${message}`);
}

// Server-sent events from a streamed completion: each `data:` line's JSON, until [DONE].
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message || "the stream failed");
        yield chunk;
      }
    }
  }
}

// One streamed reply as the tenant; `onText` gets each piece as it arrives.
async function streamReply(ctx, { tenant, model, messages, maxTokens }, onText) {
  const key = await ctx.client.playgroundKey(tenant);
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { authorization: `Bearer ${key.api_key}`, "content-type": "application/json" },
      body: JSON.stringify({ model, messages, stream: true, max_tokens: maxTokens, user: "console-playground" }),
    });
    if (!response.ok) throw await publicError(response, "the chat failed");
    const reply = {
      token: response.headers.get("x-flywheel-feedback-token"),
      version: response.headers.get("x-flywheel-adapter-version"),
      id: null,
      text: "",
      chunks: 0,
    };
    for await (const chunk of events(response)) {
      reply.id = reply.id || chunk.id;
      const piece = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta && chunk.choices[0].delta.content) || "";
      if (piece) {
        reply.text += piece;
        reply.chunks += 1;
        onText(reply.text);
      }
    }
    return reply;
  } finally {
    // The key has done its one job: revoked now (or, if this fails, by the gateway's next issue
    // once it has expired).
    try {
      await ctx.client.revokeKey(key.key_id);
    } catch (err) {
      say(`the playground key ${key.prefix}… could not be revoked (it expires by itself): ${err.message}`, "error");
    }
  }
}

// Feedback with the reply's browser feedback token, as a tenant's web app sends it.  The page's
// no-referrer policy would send "Origin: null"; "origin" sends this page's origin, which the
// feedback API accepts as the gateway's own (gateway/api/feedback/serving.py).
async function sendFeedback(reply, item) {
  const response = await fetch("/v1/feedback", {
    method: "POST",
    referrerPolicy: "origin",
    headers: { authorization: `Bearer ${reply.token}`, "content-type": "application/json" },
    body: JSON.stringify({ completion_id: reply.id, end_user: "console-playground", ...item }),
  });
  if (!response.ok) throw await publicError(response, "feedback refused");
  return response.json();
}

function feedbackControls(reply, n) {
  const status = el("p", { className: "note", id: `reply-${n}-status`, "aria-live": "polite" });
  const send = async (item, done) => {
    try {
      await sendFeedback(reply, item);
      status.textContent = done;
    } catch (err) {
      status.textContent = err.message;
      say(err.message, "error");
    }
  };
  const thumb = (label, rating) =>
    el("button", { type: "button", "aria-label": `${label}: reply ${n}`, onclick: () => send({ rating }, `${label} sent for reply ${n}.`) }, label);
  const field = el("textarea", { id: `reply-${n}-edit`, rows: "4" }, reply.text);
  const form = el(
    "form",
    { className: "stack", hidden: "" },
    el("label", { for: field.id }, `Edited answer for reply ${n}`),
    field,
    el("button", { type: "submit" }, `Send edit of reply ${n}`),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!field.value.trim()) return;
    await send({ edited_output: field.value }, `Edit sent for reply ${n}.`);
    form.hidden = true;
  });
  const edit = el(
    "button",
    {
      type: "button",
      "aria-label": `Edit this answer: reply ${n}`,
      onclick: () => {
        form.hidden = false;
        field.focus();
      },
    },
    "Edit this answer",
  );
  return [el("p", { className: "buttons-row" }, thumb("Thumbs up", "up"), thumb("Thumbs down", "down"), edit), form, status];
}

function options(select, items, chosen) {
  select.replaceChildren(...items.map(([value, label]) => el("option", { value }, label)));
  if (items.some(([value]) => value === chosen)) select.value = chosen;
}

export async function playgroundView(ctx, params) {
  const [tenants, versions] = await Promise.all([ctx.client.tenants(), ctx.client.adapters()]);
  const tenantBox = el("select", { id: "play-tenant" });
  const adapterBox = el("select", { id: "play-adapter" });
  const versionBox = el("select", { id: "play-version", "aria-describedby": "play-version-hint" });
  const maxTokens = el("input", { id: "play-max-tokens", type: "number", min: "1", max: "4096", step: "1", value: params.maxTokens || "128" });
  maxTokens.addEventListener("input", () => {
    params.maxTokens = maxTokens.value;
  });
  const origin = el(
    "p",
    { className: "note", id: "play-origin" },
    "Thumbs and edits go to /v1/feedback with each reply's browser token, as a tenant's web app sends them; the gateway takes them from its own origin (this console's) without it being in the tenant's browser origins.",
  );
  const chat = el("ol", { className: "chat", id: "play-chat", "aria-label": "Conversation" });
  const message = el("textarea", { id: "play-message", rows: "3", required: "" });
  const send = el("button", { type: "submit" }, "Send");
  const conversations = new Map(); // per version: the conversation so far, as the API takes it
  let replies = 0;

  const servable = () => versions.filter((v) => v.tenant === tenantBox.value && v.adapter === adapterBox.value && SERVABLE.includes(v.state));
  const newChat = () => {
    conversations.clear();
    replies = 0;
    chat.replaceChildren();
  };
  const fillVersions = () => {
    const list = servable();
    const serving = list.find((v) => v.active);
    // The candidate: the newest version that passed the gate and does not serve yet; it can be
    // asked beside the serving version ("2+1": each message goes to both).
    const candidate = [...list].reverse().find((v) => !v.active && v.state === "passed");
    const pair = candidate && serving ? [[`${candidate.version}+${serving.version}`, `@${candidate.version} (the candidate) beside @${serving.version} (serving)`]] : [];
    options(
      versionBox,
      [...list.map((v) => [String(v.version), `@${v.version} · ${v.state}${v.active ? " · serving" : v === candidate ? " · the candidate" : ""}`]), ...pair],
      params.version || String((serving || list[list.length - 1] || {}).version),
    );
    newChat();
  };
  const fillAdapters = (chosen) => {
    const names = [...new Set(versions.filter((v) => v.tenant === tenantBox.value).map((v) => v.adapter))];
    options(adapterBox, names.map((n) => [n, n]), chosen);
    fillVersions();
  };
  options(tenantBox, tenants.map((t) => [t.name, t.name]), params.tenant);
  fillAdapters(params.adapter);
  // The picks ride in the view's params (and address), so a re-drawn view keeps them.
  const remember = () => {
    params.tenant = tenantBox.value;
    params.adapter = adapterBox.value;
    params.version = versionBox.value;
    history.replaceState(null, "", playgroundRoute(params.tenant, params.adapter));
  };
  tenantBox.addEventListener("change", () => {
    params.version = null;
    fillAdapters(null);
    remember();
  });
  adapterBox.addEventListener("change", () => {
    params.version = null;
    fillVersions();
    remember();
  });
  versionBox.addEventListener("change", () => {
    newChat();
    remember();
  });

  const form = el(
    "form",
    { className: "stack", id: "play-form" },
    el("label", { for: "play-message" }, "Message"),
    message,
    el("p", { className: "buttons-row" }, send, ctx.button("New chat", "New chat", () => { newChat(); message.focus(); })),
  );
  // One reply's box: its title (which version answered), the text as it streams, then the
  // feedback controls.
  const replyBox = (model) => {
    const n = ++replies;
    const answer = el("p", { className: "reply", id: `reply-${n}`, "aria-busy": "true" });
    const title = el("h4", {}, `Reply ${n} · ${model}`);
    return { n, model, answer, title, node: el("div", { className: "reply-box" }, title, answer) };
  };

  // Ask one version (its own conversation) and fill its box; a summary line, or throws.
  const ask = async (version, box, user) => {
    const model = `${adapterBox.value}@${version}`;
    const before = conversations.get(version) || [];
    try {
      const reply = await streamReply(
        ctx,
        { tenant: tenantBox.value, model, messages: [...before, user], maxTokens: Number(maxTokens.value) || 128 },
        (sofar) => {
          box.answer.textContent = sofar;
        },
      );
      box.answer.textContent = reply.text;
      box.answer.dataset.chunks = String(reply.chunks);
      box.answer.dataset.completion = reply.id || "";
      box.title.textContent = `Reply ${box.n} · ${reply.version || model}`;
      conversations.set(version, [...before, user, { role: "assistant", content: reply.text }]);
      box.node.append(...feedbackControls(reply, box.n));
      return `${reply.version || model} answered in ${reply.chunks} streamed pieces`;
    } catch (err) {
      box.answer.textContent = `(no answer: ${err.message})`;
      throw err;
    } finally {
      box.answer.removeAttribute("aria-busy");
    }
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = message.value.trim();
    if (!text || !versionBox.value) {
      if (!versionBox.value) say("Pick an adapter with a servable version first.", "error");
      return;
    }
    const asked = versionBox.value.split("+"); // one version, or the candidate and the serving one
    const user = { role: "user", content: text };
    const boxes = asked.map((version) => replyBox(`${adapterBox.value}@${version}`));
    chat.append(
      el("li", { className: "user" }, el("h4", {}, "You"), el("p", {}, text)),
      el("li", { className: "assistant" }, boxes.length > 1 ? el("div", { className: "play-sides" }, ...boxes.map((b) => b.node)) : boxes[0].node),
    );
    message.value = "";
    send.disabled = true;
    say(`asking ${tenantBox.value}/${boxes.map((b) => b.model).join(" and ")}…`, "ok");
    const results = await Promise.allSettled(asked.map((version, i) => ask(version, boxes[i], user)));
    const failed = results.find((r) => r.status === "rejected");
    if (failed) say(failed.reason.message, "error");
    else say(`${tenantBox.value}: ${results.map((r) => r.value).join("; ")}.`, "ok");
    send.disabled = false;
  });

  const adapterLink = el("p", { className: "note", id: "play-adapter-link" });
  const linkAdapter = () =>
    adapterLink.replaceChildren(
      ...(adapterBox.value
        ? ["Its feedback shows on ", el("a", { href: adapterRoute(tenantBox.value, adapterBox.value) }, `${tenantBox.value}/${adapterBox.value}'s page`), "."]
        : []),
    );
  linkAdapter();
  tenantBox.addEventListener("change", linkAdapter);
  adapterBox.addEventListener("change", linkAdapter);

  return el(
    "div",
    { className: "playground" },
    el("h2", { id: "page-title", tabindex: "-1" }, "Playground"),
    el(
      "p",
      { className: "note" },
      "Chat as a tenant's app would: through the OpenAI API, streamed, pinned to the version picked; thumbs and edits go through the feedback API with each reply's browser token and count like any user's.",
    ),
    el(
      "form",
      { className: "inline", id: "play-pick" },
      el("label", { for: "play-tenant" }, "Tenant"),
      tenantBox,
      el("label", { for: "play-adapter" }, "Adapter"),
      adapterBox,
      el("label", { for: "play-version" }, "Version"),
      versionBox,
      el("label", { for: "play-max-tokens" }, "Max tokens"),
      maxTokens,
    ),
    el("p", { className: "note", id: "play-version-hint" }, "Servable versions only (ready or passed the gate); the candidate is the newest that passed and does not serve yet."),
    adapterLink,
    origin,
    chat,
    form,
  );
}
