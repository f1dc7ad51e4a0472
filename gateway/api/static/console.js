// The web console: a view over the admin API (console-api.js); every value is shown with
// textContent, never parsed as HTML.  Ids from the API are shown as names (console-names.js).
import { AdminClient } from "/console/console-api.js";
import { Names, SERVABLE, rollbackTargets } from "/console/console-names.js";
import { $, ask, cell, el, kv, say, table } from "/console/console-ui.js";

const AUDIT_WINDOW = 1000; // the admin API's largest audit page: how far back rollbacks are read
let client = null;
let view = "adapters";
let shown = 0; // the latest show(): an older one that answers late is dropped

const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");
const tenantFilter = () => $("tenant-filter").value || null;

function button(label, name, onclick) {
  return el("button", { type: "button", "aria-label": name, onclick }, label);
}

async function act(label, action) {
  say(`${label}…`, "ok");
  try {
    const result = await action();
    say(`${label}: done`, "ok");
    await show(view, { keepMessage: true });
    return result;
  } catch (err) {
    say(`${label}: ${err.message}`, "error");
    return null;
  }
}

async function names() {
  const [tenants, versions] = await Promise.all([client.tenants(), client.adapters(tenantFilter())]);
  return new Names(tenants, versions);
}

async function swap(v, target) {
  const name = `${v.tenant}/${v.adapter}`;
  const back = target !== undefined;
  const to = back ? (target === "previous" ? "the version that served before it" : `@${target}`) : "";
  const reason = await ask(
    back
      ? {
          title: `Roll back ${name}`,
          text: `${name}@${v.version} serves now; roll back to ${to}. New requests go to it at once.`,
          confirm: "Roll back",
          reason: true,
        }
      : {
          title: `Promote ${name}@${v.version}`,
          text: `Serve ${name}@${v.version} instead of the version serving now. New requests go to it at once.`,
          confirm: "Promote",
          reason: true,
        },
  );
  if (reason === null) return;
  if (back) await act(`roll back ${name} to ${to}`, () => client.rollback(v.tenant, v.adapter, reason));
  else await act(`promote ${name}@${v.version}`, () => client.promote(v.tenant, v.adapter, v.version, reason));
}

async function adaptersView() {
  const [versions, tenants, events] = await Promise.all([
    client.adapters(tenantFilter()),
    client.tenants(),
    client.audit(AUDIT_WINDOW),
  ]);
  const targets = rollbackTargets(versions, tenants, events, AUDIT_WINDOW);
  const rows = versions.map((v) => {
    const name = `${v.tenant}/${v.adapter}`;
    const actions = cell("actions");
    const target = targets.get(name);
    if (v.active && target !== null) {
      const label = target === "previous" ? "Roll back" : `Roll back to @${target}`;
      const aria = target === "previous" ? `Roll back ${name} to its previous version` : `Roll back ${name} to @${target}`;
      actions.append(button(label, aria, () => swap(v, target)));
    } else if (!v.active && SERVABLE.includes(v.state)) {
      actions.append(button("Promote", `Promote ${name}@${v.version}`, () => swap(v)));
    }
    actions.append(
      button("Verify", `Verify ${name}@${v.version}`, () =>
        act(`verify ${name}@${v.version}`, () => client.verify(v.tenant, v.adapter, v.version)),
      ),
    );
    return el(
      "tr",
      { className: v.active ? "active" : "" },
      cell("tenant", v.tenant),
      cell("adapter", v.adapter),
      cell("version", v.version),
      cell("state", v.state, v.active ? el("strong", {}, " (serving)") : null),
      cell("signed", v.signed ? "yes" : "no"),
      cell("rank", v.rank ?? ""),
      el("td", { "data-col": "digest", className: "mono" }, (v.digest || "").slice(0, 16)),
      cell("created", when(v.created_at)),
      actions,
    );
  });
  return table(
    "Adapter versions",
    ["tenant", "adapter", "version", "state", "signed", "rank", "digest", "created", "actions"],
    rows,
  );
}

function fillTenantFilter(tenants) {
  const filter = $("tenant-filter");
  const chosen = filter.value;
  filter.replaceChildren(
    el("option", { value: "" }, "all"),
    ...tenants.map((t) => el("option", { value: t.name }, t.name)),
  );
  filter.value = tenants.some((t) => t.name === chosen) ? chosen : "";
}

async function tenantsView() {
  const tenants = await client.tenants();
  fillTenantFilter(tenants); // a tenant created here shows up in the filter too
  const out = el("div", {});
  const name = el("input", { id: "new-tenant", autocomplete: "off", required: "" });
  const create = el(
    "form",
    { className: "inline" },
    el("label", { for: "new-tenant" }, "New tenant name"),
    name,
    el("button", { type: "submit" }, "Create tenant"),
  );
  create.addEventListener("submit", async (event) => {
    event.preventDefault();
    const created = await act(`create ${name.value}`, () => client.createTenant(name.value.trim()));
    if (created) showSecret(`API key for ${created.tenant.name} (shown once)`, created.api_key);
  });
  out.append(create);
  const rows = tenants.map((t) => {
    const stats = cell(
      "feedback",
      button("Feedback stats", `Feedback stats for ${t.name}`, async () => {
        try {
          const s = await client.feedbackStats(t.name);
          stats.textContent = `${s.completions} completions, ${s.up} up, ${s.down} down, ${s.edits} edits`;
        } catch (err) {
          say(err.message, "error");
        }
      }),
    );
    return el(
      "tr",
      {},
      cell("tenant", t.name),
      el("td", { "data-col": "id", className: "mono" }, t.id),
      cell("status", t.disabled ? "disabled" : "enabled"),
      cell("created", when(t.created_at)),
      stats,
      cell(
        "actions",
        button("Rotate keys", `Rotate keys for ${t.name}`, async () => {
          const ok = await ask({
            title: `Rotate ${t.name}'s keys`,
            text: `A new key is made and shown once; every current key of ${t.name} stops working.`,
            confirm: "Rotate keys",
          });
          if (ok === null) return;
          const rotated = await act(`rotate ${t.name}`, () => client.rotateKeys(t.name));
          if (rotated) showSecret(`New API key for ${t.name} (shown once)`, rotated.api_key);
        }),
      ),
    );
  });
  out.append(table("Tenants", ["tenant", "id", "status", "created", "feedback", "actions"], rows));
  return out;
}

function showSecret(label, secret) {
  $("view").prepend(el("p", { className: "secret" }, `${label}: `, el("code", {}, secret)));
}

async function roundsView() {
  const [rounds, known] = await Promise.all([client.rounds(tenantFilter()), names()]);
  return table(
    "Training rounds",
    ["round", "tenant", "adapter", "trained from", "produced", "state", "method", "counts", "metrics", "error"],
    rounds.map((r) =>
      el(
        "tr",
        { id: `round-${r.id}` },
        cell("round", el("span", { className: "mono" }, r.id), el("br"), when(r.created_at)),
        cell("tenant", known.tenant(r.tenant_id)),
        cell("adapter", known.adapter(r.candidate_version_id, r.parent_version_id)),
        cell("parent", known.version(r.parent_version_id) ?? "none"),
        cell("candidate", known.version(r.candidate_version_id) ?? "none"),
        cell("state", r.state),
        cell("method", r.method || "", r.method_reason ? el("div", { className: "note" }, r.method_reason) : null),
        cell("counts", kv(r.counts)),
        cell("metrics", kv(r.metrics)),
        cell("error", r.error || ""),
      ),
    ),
  );
}

async function gatesView() {
  const [reports, known] = await Promise.all([client.gateReports(tenantFilter()), names()]);
  return table(
    "Gate reports",
    ["created", "tenant", "candidate", "serving", "round", "verdict", "reasons", "summary"],
    reports.map((g) =>
      el(
        "tr",
        {},
        cell("created", when(g.created_at)),
        cell("tenant", known.tenant(g.tenant_id)),
        cell("candidate", known.version(g.candidate_version_id)),
        cell("serving", known.version(g.serving_version_id) ?? "none"),
        el("td", { "data-col": "round", className: "mono" }, g.round_id ?? "none"),
        cell("verdict", g.passed ? "passed" : "rejected"),
        cell("reasons", (g.reasons || []).join("; ")),
        cell("summary", el("pre", {}, g.summary || "")),
      ),
    ),
  );
}

async function auditView() {
  const [events, tenants] = await Promise.all([client.audit(200), client.tenants()]);
  const tenantName = new Map(tenants.map((t) => [t.id, t.name]));
  return table(
    "Audit log (last 200 events)",
    ["when", "actor", "action", "tenant", "target", "from", "detail"],
    events.map((e) =>
      el(
        "tr",
        {},
        cell("when", when(e.created_at)),
        cell("actor", e.actor),
        cell("action", e.action),
        cell("tenant", e.tenant_id ? tenantName.get(e.tenant_id) ?? "unknown tenant" : ""),
        cell("target", e.target),
        cell("from", e.remote_addr || ""),
        cell("detail", kv(e.detail)),
      ),
    ),
  );
}

const views = { adapters: adaptersView, tenants: tenantsView, rounds: roundsView, gates: gatesView, audit: auditView };

async function show(name, { keepMessage = false } = {}) {
  if (!client) {
    say("Sign in first.", "error");
    $("token").focus();
    return;
  }
  view = name;
  const ticket = ++shown;
  if (!keepMessage) say("");
  for (const navButton of document.querySelectorAll("nav button[data-view]")) {
    if (navButton.dataset.view === name) navButton.setAttribute("aria-current", "page");
    else navButton.removeAttribute("aria-current");
  }
  try {
    const content = await views[name]();
    if (ticket === shown && client) $("view").replaceChildren(content);
  } catch (err) {
    if (ticket !== shown) return;
    $("view").replaceChildren();
    say(err.message, "error");
    if (err.status === 401 || err.status === 403) signOut({ keepMessage: true });
  }
}

async function signIn(token) {
  client = new AdminClient(token);
  try {
    const tenants = await client.tenants();
    sessionStorage.setItem("flywheel-admin-token", token);
    fillTenantFilter(tenants);
    $("login").hidden = true;
    $("nav").hidden = false;
    await show(view);
    $("view").focus();
  } catch (err) {
    client = null;
    say(`Sign-in failed: ${err.message}`, "error");
  }
}

function signOut({ keepMessage = false } = {}) {
  sessionStorage.removeItem("flywheel-admin-token");
  client = null;
  shown += 1; // a view still loading is not shown after this
  $("token").value = "";
  $("tenant-filter").value = "";
  if (!keepMessage) say("");
  $("login").hidden = false;
  $("nav").hidden = true;
  $("view").replaceChildren();
  $("token").focus();
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("token").value.trim());
});
$("logout").addEventListener("click", () => signOut());
$("tenant-filter").addEventListener("change", () => show(view));
for (const navButton of document.querySelectorAll("nav button[data-view]")) {
  navButton.addEventListener("click", () => show(navButton.dataset.view));
}
const saved = sessionStorage.getItem("flywheel-admin-token");
if (saved) signIn(saved);
