// One adapter's page (GET /admin/adapters/{tenant}/{name}): its versions as a lineage, each
// linked to the round that produced it and the gate report that judged it; the gate reports as
// tables; the feedback gathered since the last round; promote, roll back, add a version and
// freeze a golden set.  Every value is written as text.
import { feedbackChart, gateChart, trainingChart } from "/console/console-charts.js";
import { wordDiff } from "/console/console-diff.js";
import { tenantRoute } from "/console/console-tenant.js";
import { cell, el, kv, say, table } from "/console/console-ui.js";

export const adapterRoute = (tenant, adapter, ...rest) =>
  ["#adapter", tenant, adapter, ...rest].map((part, i) => (i ? encodeURIComponent(part) : part)).join("/");

const number = (value) =>
  value === null || value === undefined ? "n/a" : Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(4)));

const GOLDEN_EXAMPLE = [
  '{"messages": [{"role": "user", "content": "Refund policy?"}], "reference": "Refunds take five business days."}',
  '{"prompt": "Opening hours?", "checks": [{"type": "contains", "value": "9"}, {"type": "max_length", "value": 400, "hard": true}]}',
].join("\n");

function section(id, title, ...children) {
  return el("section", { "aria-labelledby": id }, el("h3", { id }, title), ...children);
}

function lineage(ctx, detail) {
  const name = `${detail.tenant}/${detail.adapter}`;
  const serving = detail.serving_version;
  const items = detail.versions.map((v) => {
    const steps = [el("span", {}, v.parent_version ? `from @${v.parent_version}` : "added by hand")];
    if (v.round_id) {
      steps.push(
        el("a", { href: adapterRoute(detail.tenant, detail.adapter, "round", v.round_id), "aria-label": `round ${v.round_id}, which produced @${v.version}` }, `round ${v.round_id}`),
      );
    }
    if (v.gate_report_id) {
      steps.push(
        el("a", { href: adapterRoute(detail.tenant, detail.adapter, "gate", v.gate_report_id), "aria-label": `gate ${v.verdict}: the report on @${v.version}` }, `gate ${v.verdict}`),
      );
    } else if (v.state === "candidate") {
      steps.push(el("span", {}, "not gated yet"));
    }
    steps.push(
      el(
        "span",
        { className: v.active ? "serving" : "" },
        v.active ? "serving now" : v.first_served_at ? `served from ${ctx.when(v.first_served_at)}` : "never served",
      ),
    );
    const flow = el("p", { className: "flow" });
    steps.forEach((step, i) => flow.append(...(i ? [el("span", { "aria-hidden": "true" }, " → "), step] : [step])));
    const f = v.feedback;
    const actions = el("p", { className: "buttons-row" });
    if (!v.active && ["ready", "passed"].includes(v.state)) {
      actions.append(ctx.button("Promote", `Promote ${name}@${v.version}`, () => ctx.swap(detail, v.version)));
    }
    actions.append(
      ctx.button("Verify", `Verify ${name}@${v.version}`, () =>
        ctx.act(`verify ${name}@${v.version}`, () => ctx.client.verify(detail.tenant, detail.adapter, v.version)),
      ),
    );
    return el(
      "li",
      { id: `version-${v.version}`, tabindex: "-1", className: v.active ? "active" : "" },
      el("h4", {}, `@${v.version}`, ` · ${v.state}`, v.signed ? " · signed" : " · unsigned", ` · ${ctx.when(v.created_at)}`),
      flow,
      el("p", { className: "note" }, `${f.completions} completions · ${f.up} up · ${f.down} down · ${f.edits} edits`),
      actions,
    );
  });
  const summary = el(
    "p",
    {},
    serving ? `Serving: ${detail.adapter}@${serving}. ` : "Nothing serving. ",
    detail.rollback_to ? `A rollback would serve @${detail.rollback_to}.` : "No earlier version to roll back to.",
  );
  const top = el("p", { className: "buttons-row" });
  if (detail.rollback_to) {
    top.append(
      ctx.button(`Roll back to @${detail.rollback_to}`, `Roll back to @${detail.rollback_to}: ${name}`, () =>
        ctx.swap(detail, detail.rollback_to, true),
      ),
    );
  }
  return section("h-lineage", "Versions", summary, top, el("ol", { className: "lineage" }, ...items));
}

function marked(runs, tag) {
  return runs.map(([text, changed]) => (changed ? el(tag, {}, text) : text));
}

function feedbackSince(ctx, detail) {
  const f = detail.feedback_since_last_round;
  const rate = (count, per100) => (per100 === null ? String(count) : `${count} (${number(per100)} per 100 completions)`);
  const intro = f.since
    ? `Since ${ctx.when(f.since)}, the last round's data cut-off: the next round starts here.`
    : "No round yet: all the feedback so far.";
  const edits = f.recent_edits.map((e) => {
    const diff = wordDiff(e.original ?? "", e.edited);
    return el(
      "figure",
      { className: "edit" },
      el("figcaption", {}, `@${e.version ?? "?"} · ${ctx.when(e.updated_at)}`, e.prompt ? ` · asked: ${e.prompt}` : ""),
      el(
        "div",
        { className: "sides" },
        el("div", {}, el("h5", {}, "Original"), el("p", {}, ...(e.original === null ? ["(content not stored)"] : marked(diff.original, "del")))),
        el("div", {}, el("h5", {}, "Edited"), el("p", {}, ...marked(diff.edited, "ins"))),
      ),
    );
  });
  return section(
    "h-feedback",
    "Feedback since the last round",
    el("p", {}, intro),
    kv({
      completions: f.completions,
      "thumbs up": rate(f.up, f.up_per_100),
      "thumbs down": rate(f.down, f.down_per_100),
      edits: rate(f.edits, f.edits_per_100),
    }),
    el("h4", {}, "Recent edits"),
    ...(edits.length ? edits : [el("p", { className: "note" }, "none yet")]),
  );
}

// The next round as a dry run: loaded after the page is shown (the planner takes a moment).
function nextRound(ctx, detail) {
  const body = el("div", { id: "next-round", "aria-live": "polite" }, el("p", { className: "note" }, "Working out the plan…"));
  const load = async () => {
    try {
      const n = await ctx.client.nextRound(detail.tenant, detail.adapter);
      const settings = el("a", { href: tenantRoute(detail.tenant) }, `${detail.tenant}'s settings`);
      body.replaceChildren(
        n.ready
          ? el("p", {}, `A round could start now: ${n.method.toUpperCase()} on ${n.train_rows} rows, ${n.heldout_rows} held out for the gate, judged on golden set v${n.golden_set_version}. ${n.reason}.`)
          : el("p", {}, `No round could start now: ${n.why_not}.`),
        el(
          "p",
          { className: "note" },
          n.retrain_enabled
            ? "Retraining is on: the worker starts a round once enough feedback has come in ("
            : "Retraining is off for this tenant: the worker starts no round by itself (`flywheel retrain run` still can; ",
          settings,
          ").",
        ),
        // Spread, not null: replaceChildren (unlike el) would write a null as the text "null".
        ...(n.lines.length ? [el("details", {}, el("summary", {}, "The dry run"), el("pre", {}, n.lines.join("\n")))] : []),
      );
    } catch (err) {
      body.replaceChildren(el("p", { className: "note" }, `The plan could not be worked out: ${err.message}`));
    }
  };
  return { node: section("h-next", "Next round (dry run)", body), load };
}

function gateReport(ctx, detail, g) {
  const candidate = `${detail.adapter}@${g.candidate_version ?? "?"}`;
  const against = g.serving_version ? `against ${detail.adapter}@${g.serving_version}` : "with nothing serving";
  const rows = g.metrics.map((m) =>
    el(
      "tr",
      { className: m.outcome },
      cell("metric", m.label),
      cell("serving", m.serving === null ? "n/a" : number(m.serving)),
      cell("candidate", m.candidate === null ? "n/a" : number(m.candidate)),
      cell("threshold", m.rule, m.limit === null ? "" : el("div", { className: "note" }, `here: ${number(m.limit)}`)),
      cell("outcome", el("strong", {}, m.outcome), m.reason ? el("div", { className: "note" }, m.reason) : null),
    ),
  );
  return el(
    "article",
    { id: `gate-${g.id}`, tabindex: "-1", className: "gate" },
    el("h4", {}, `${candidate} ${against}: ${g.passed ? "passed" : "rejected"}`),
    el(
      "p",
      { className: "note" },
      `${ctx.when(g.created_at)} · round `,
      g.round_id ? el("a", { href: adapterRoute(detail.tenant, detail.adapter, "round", g.round_id) }, g.round_id) : "none",
      ` · golden set ${g.golden_set_version ? `v${g.golden_set_version}` : "none"} · report ${g.id}`,
    ),
    table(`Gate report on ${candidate}`, ["metric", "serving", "candidate", "threshold", "outcome"], rows),
    g.reasons.length
      ? el("div", {}, el("p", {}, "Why it was rejected:"), el("ul", {}, ...g.reasons.map((r) => el("li", {}, r))))
      : el("p", {}, "Every rule held."),
    el("details", {}, el("summary", {}, "The gate's summary"), el("pre", {}, g.summary || "")),
  );
}

function rounds(ctx, detail) {
  const v = (n) => (n ? `${detail.adapter}@${n}` : "none");
  const numberOf = new Map(detail.versions.map((x) => [x.version_id, x.version]));
  return table(
    `Training rounds of ${detail.adapter}`,
    ["round", "trained from", "produced", "state", "method", "counts", "metrics", "error"],
    detail.rounds.map((r) =>
      el(
        "tr",
        { id: `round-${r.id}`, tabindex: "-1" },
        cell("round", el("span", { className: "mono" }, r.id), el("br"), ctx.when(r.created_at)),
        cell("parent", v(numberOf.get(r.parent_version_id))),
        cell("candidate", v(numberOf.get(r.candidate_version_id))),
        cell("state", r.state),
        cell("method", r.method || "", r.method_reason ? el("div", { className: "note" }, r.method_reason) : null),
        cell("counts", kv(r.counts)),
        cell("metrics", kv(r.metrics)),
        cell("error", r.error || ""),
      ),
    ),
  );
}

// JSONL text as golden items; an error names the line.
export function parseJsonl(text) {
  const items = [];
  text.split(/\r?\n/).forEach((line, i) => {
    if (!line.trim()) return;
    try {
      items.push(JSON.parse(line));
    } catch (err) {
      throw new Error(`line ${i + 1} is not JSON (${err.message})`);
    }
  });
  if (!items.length) throw new Error("the file has no items");
  return items;
}

function goldenSets(ctx, detail) {
  const file = el("input", { id: "golden-file", type: "file", accept: ".jsonl,.json,.txt", required: "", "aria-describedby": "golden-format" });
  const form = el(
    "form",
    { className: "stack", id: "golden-form" },
    el("label", { for: "golden-file" }, "Golden set file (JSONL)"),
    file,
    el(
      "div",
      { id: "golden-format", className: "note" },
      el("p", {}, "One JSON object a line: a prompt (\"prompt\" text or chat \"messages\") with a \"reference\" answer, \"checks\", or both. Check types: json, json_schema, contains, not_contains, regex, max_length; \"hard\": true makes one must-pass. For example:"),
      el("pre", {}, GOLDEN_EXAMPLE),
    ),
    el("button", { type: "submit" }, "Freeze golden set"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const chosen = file.files[0];
    if (!chosen) return;
    let items;
    try {
      items = parseJsonl(await chosen.text());
    } catch (err) {
      say(`golden set ${chosen.name}: ${err.message}`, "error");
      return;
    }
    await ctx.act(`freeze golden set for ${detail.tenant}/${detail.adapter} (${items.length} items)`, () =>
      ctx.client.addGolden(detail.tenant, detail.adapter, items),
    );
  });
  const list = table(
    `Golden sets of ${detail.adapter}`,
    ["version", "items", "content hash", "created"],
    detail.golden_sets.map((g) =>
      el("tr", {}, cell("version", g.version), cell("items", g.items), el("td", { "data-col": "digest", className: "mono" }, g.content_hash.slice(0, 16)), cell("created", ctx.when(g.created_at))),
    ),
  );
  return section("h-golden", "Golden sets", el("p", { className: "note" }, "The gate judges a round's candidate on the newest golden set frozen before the round's data cut-off."), list, form);
}

function addVersion(ctx, detail) {
  const path = el("input", { id: "version-path", autocomplete: "off", required: "", "aria-describedby": "version-path-hint" });
  const sign = el("input", { id: "version-sign", type: "checkbox" });
  const form = el(
    "form",
    { className: "stack" },
    el("label", { for: "version-path" }, "PEFT directory on the gateway host"),
    path,
    el("small", { id: "version-path-hint", className: "note" }, "A path the gateway can read; it is checked against the base model and copied into the artifact store."),
    el("label", { className: "check" }, sign, "Sign it with the gateway's signing key"),
    el("button", { type: "submit" }, `Add a version of ${detail.adapter}`),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    await ctx.act(`add a version of ${detail.tenant}/${detail.adapter}`, () =>
      ctx.client.addAdapter(detail.tenant, detail.adapter, path.value.trim(), sign.checked),
    );
  });
  return section("h-add-version", "Add a version", form);
}

export async function adapterView(ctx, { tenant, adapter }) {
  const detail = await ctx.client.adapter(tenant, adapter);
  const charts = [feedbackChart(detail), gateChart(detail)];
  const curves = trainingChart(detail);
  const next = nextRound(ctx, detail);
  const page = el(
    "div",
    { className: "adapter-page" },
    el("h2", { id: "page-title", tabindex: "-1" }, `${detail.tenant} / ${detail.adapter}`),
    el("p", {}, el("a", { href: ctx.playgroundRoute(detail.tenant, detail.adapter), id: "try-playground" }, `Try ${detail.adapter} in the playground`)),
    lineage(ctx, detail),
    feedbackSince(ctx, detail),
    next.node,
    section("h-charts", "Across versions", ...charts.map((c) => c.node)),
    section(
      "h-gates",
      "Gate reports",
      ...(detail.gate_reports.length ? detail.gate_reports.map((g) => gateReport(ctx, detail, g)) : [el("p", { className: "note" }, "none yet")]),
    ),
    section("h-rounds", "Training rounds", curves.node, rounds(ctx, detail)),
    goldenSets(ctx, detail),
    addVersion(ctx, detail),
  );
  page.afterShow = () => {
    [...charts, curves].forEach((c) => c.draw()); // a chart needs its width: drawn once shown
    next.load();
  };
  return page;
}
