// One tenant's page: its limits and retraining options (PATCH /admin/tenants/{name}, only the
// fields changed) and its keys (list, add, rotate, revoke).  Every value is written as text.
import { ask, cell, el, say, table } from "/console/console-ui.js";

export const tenantRoute = (tenant) => `#tenant/${encodeURIComponent(tenant)}`;

// [field, label, kind, hint]; kinds: int (blank = null), number, bool, lines, json.
const FIELDS = [
  ["rpm_limit", "Requests per minute", "int", "Blank: the gateway's default."],
  ["tpm_limit", "Tokens per minute", "int", "Blank: the gateway's default."],
  ["retention_days", "Keep completions (days)", "int", "Blank: the gateway's default."],
  ["store_content", "Store prompts and answers (needed for training)", "bool"],
  ["cors_origins", "Browser origins allowed (one a line)", "lines"],
  ["disabled", "Disabled (every key answers 401)", "bool"],
  ["retrain_enabled", "Retrain from feedback (the worker runs rounds)", "bool"],
  ["retrain_min_feedback", "Feedback rows that start a round", "number"],
  ["retrain_max_age_hours", "Or after this many hours with any feedback", "number"],
  ["auto_promote", "Promote a candidate that passes the gate", "bool"],
  ["gate_thresholds", "Gate thresholds (JSON; overrides of the defaults)", "json"],
  ["retrain_recipe", "Training recipe (JSON; e.g. {\"learning_rate\": 0.0001})", "json"],
];

function input(field, kind, value) {
  const id = `setting-${field}`;
  if (kind === "bool") return el("input", { id, type: "checkbox", ...(value ? { checked: "" } : {}) });
  if (kind === "lines" || kind === "json") {
    const text = kind === "json" ? JSON.stringify(value ?? {}, null, 1) : (value || []).join("\n");
    return el("textarea", { id, rows: "3", spellcheck: "false" }, text);
  }
  return el("input", { id, type: "number", min: kind === "int" ? "1" : "0", step: kind === "int" ? "1" : "any", value: value ?? "" });
}

function read(kind, node, field) {
  if (kind === "bool") return node.checked;
  if (kind === "lines") return node.value.split(/\r?\n/).map((s) => s.trim()).filter(Boolean);
  if (kind === "json") {
    try {
      return JSON.parse(node.value || "{}");
    } catch (err) {
      throw new Error(`${field} is not JSON (${err.message})`);
    }
  }
  if (node.value.trim() === "") return kind === "int" ? null : undefined;
  return Number(node.value);
}

function settingsForm(ctx, tenant) {
  const nodes = new Map();
  const form = el("form", { className: "settings", id: "tenant-settings" });
  for (const [field, label, kind, hint] of FIELDS) {
    const node = input(field, kind, tenant[field]);
    nodes.set(field, [kind, node]);
    if (hint) node.setAttribute("aria-describedby", `setting-${field}-hint`);
    form.append(
      kind === "bool"
        ? el("label", { className: "check" }, node, label)
        : el("p", { className: "stack" }, el("label", { for: node.id }, label), node, hint ? el("small", { id: `setting-${field}-hint`, className: "note" }, hint) : null),
    );
  }
  form.append(el("button", { type: "submit" }, `Save settings for ${tenant.name}`));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const changes = {};
    try {
      for (const [field, [kind, node]] of nodes) {
        const value = read(kind, node, field);
        if (value !== undefined && JSON.stringify(value) !== JSON.stringify(tenant[field] ?? null)) changes[field] = value;
      }
    } catch (err) {
      say(`settings for ${tenant.name}: ${err.message}`, "error");
      return;
    }
    if (!Object.keys(changes).length) {
      say(`settings for ${tenant.name}: nothing changed`, "ok");
      return;
    }
    await ctx.act(`save ${Object.keys(changes).join(", ")} for ${tenant.name}`, () => ctx.client.updateTenant(tenant.name, changes));
  });
  return form;
}

function keys(ctx, tenant, list) {
  const rows = list.map((k) => {
    const actions = cell("actions");
    if (!k.revoked_at) {
      actions.append(
        ctx.button("Revoke", `Revoke key ${k.prefix}… of ${tenant.name}`, async () => {
          const ok = await ask({
            title: `Revoke ${tenant.name}'s key ${k.prefix}…`,
            text: `Requests with key ${k.prefix}… get 401 from now on; ${tenant.name}'s other keys keep working.`,
            confirm: "Revoke key",
          });
          if (ok !== null) await ctx.act(`revoke key ${k.prefix}… of ${tenant.name}`, () => ctx.client.revokeKey(k.id));
        }),
      );
    }
    return el(
      "tr",
      {},
      el("td", { "data-col": "prefix", className: "mono" }, `${k.prefix}…`),
      el("td", { "data-col": "id", className: "mono" }, k.id),
      cell("created", ctx.when(k.created_at)),
      cell("status", k.revoked_at ? `revoked ${ctx.when(k.revoked_at)}` : "active"),
      actions,
    );
  });
  const add = ctx.button("Add a key", `Add a key for ${tenant.name}`, async () => {
    const made = await ctx.act(`add a key for ${tenant.name}`, () => ctx.client.createKey(tenant.name));
    if (made) ctx.showSecret(`New API key for ${tenant.name} (shown once)`, made.api_key);
  });
  return el("div", {}, el("p", { className: "buttons-row" }, add), table(`Keys of ${tenant.name}`, ["key", "id", "created", "status", "actions"], rows));
}

export async function tenantView(ctx, { tenant: name }) {
  const [tenants, list] = await Promise.all([ctx.client.tenants(), ctx.client.keys(name)]);
  const tenant = tenants.find((t) => t.name === name);
  if (!tenant) throw new Error(`No tenant ${name}.`);
  return el(
    "div",
    {},
    el("h2", { id: "page-title", tabindex: "-1" }, `Tenant ${tenant.name}`),
    el("section", { "aria-labelledby": "h-settings" }, el("h3", { id: "h-settings" }, "Limits and retraining"), settingsForm(ctx, tenant)),
    el("section", { "aria-labelledby": "h-keys" }, el("h3", { id: "h-keys" }, "API keys"), keys(ctx, tenant, list)),
  );
}
