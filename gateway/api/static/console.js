// The web console: a view over the admin API (console-api.js); every value is shown with
// textContent, never parsed as HTML.  Ids from the API are shown as names (console-names.js).
import { adapterRoute, adapterView } from "/console/console-adapter.js";
import { AdminClient } from "/console/console-api.js";
import { Names, SERVABLE, rollbackTargets } from "/console/console-names.js";
import { playgroundRoute, playgroundView } from "/console/console-playground.js";
import { tenantRoute, tenantView } from "/console/console-tenant.js";
import { $, ask, cell, el, kv, say, table } from "/console/console-ui.js";

const AUDIT_WINDOW = 1000; // the admin API's largest audit page: how far back rollbacks are read
let client = null;
let current = { name: "adapters", params: {} }; // the view shown (or being shown)
let shown = 0; // the latest show(): an older one that answers late is dropped

const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");
const tenantFilter = () => $("tenant-filter").value || null;

function button(label, name, onclick) {
  return el("button", { type: "button", "aria-label": name, onclick }, label);
}

function link(text, href, name) {
  return el("a", { href, "aria-label": name }, text);
}

async function act(label, action) {
  say(`${label}…`, "ok");
  try {
    const result = await action();
    say(`${label}: done`, "ok");
    await show(current.name, { params: current.params, keepMessage: true, push: false });
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

// Promote `to`, or roll back (`back`) towards it ("previous" when the audit window cannot say
// which); the dialog names the version serving now and the one that will.
async function swap({ tenant, adapter, serving, to, back = false }) {
  const name = `${tenant}/${adapter}`;
  const now = serving ? `${name}@${serving} serves now` : "Nothing serves now";
  const target = to === "previous" ? "the version that served before it" : `@${to}`;
  const reason = await ask(
    back
      ? {
          title: `Roll back ${name}`,
          text: `${now}; roll back to ${target}. New requests go to it at once.`,
          confirm: "Roll back",
          reason: true,
        }
      : {
          title: `Promote ${name}@${to}`,
          text: `${now}; serve ${name}@${to} instead. New requests go to it at once.`,
          confirm: "Promote",
          reason: true,
        },
  );
  if (reason === null) return;
  if (back) await act(`roll back ${name} to ${target}`, () => client.rollback(tenant, adapter, reason));
  else await act(`promote ${name}@${to}`, () => client.promote(tenant, adapter, to, reason));
}

async function adaptersView() {
  const [versions, tenants, events] = await Promise.all([
    client.adapters(tenantFilter()),
    client.tenants(),
    client.audit(AUDIT_WINDOW),
  ]);
  const targets = rollbackTargets(versions, tenants, events, AUDIT_WINDOW);
  const serving = new Map(versions.filter((v) => v.active).map((v) => [`${v.tenant}/${v.adapter}`, v.version]));
  const rows = versions.map((v) => {
    const name = `${v.tenant}/${v.adapter}`;
    const actions = cell("actions");
    const target = targets.get(name);
    const about = { tenant: v.tenant, adapter: v.adapter, serving: serving.get(name) };
    if (v.active && target !== null) {
      const label = target === "previous" ? "Roll back" : `Roll back to @${target}`;
      const aria = target === "previous" ? `Roll back ${name} to its previous version` : `Roll back to @${target}: ${name}`; // the visible text first (WCAG 2.5.3)
      actions.append(button(label, aria, () => swap({ ...about, to: target, back: true })));
    } else if (!v.active && SERVABLE.includes(v.state)) {
      actions.append(button("Promote", `Promote ${name}@${v.version}`, () => swap({ ...about, to: v.version })));
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
      cell("adapter", link(v.adapter, adapterRoute(v.tenant, v.adapter), `Open ${name}`)),
      cell("version", v.version),
      cell("state", v.state, v.active ? el("strong", {}, " (serving)") : null),
      cell("signed", v.signed ? "yes" : "no"),
      cell("rank", v.rank ?? ""),
      el("td", { "data-col": "digest", className: "mono" }, (v.digest || "").slice(0, 16)),
      cell("created", when(v.created_at)),
      actions,
    );
  });
  return el(
    "div",
    {},
    addAdapterForm(tenants),
    table(
      "Adapter versions",
      ["tenant", "adapter", "version", "state", "signed", "rank", "digest", "created", "actions"],
      rows,
    ),
  );
}

// A PEFT directory on the gateway host, as a tenant adapter's next version (or its first).
function addAdapterForm(tenants) {
  const tenant = el(
    "select",
    { id: "add-tenant", required: "" },
    ...tenants.map((t) => el("option", { value: t.name }, t.name)),
  );
  tenant.value = tenantFilter() || (tenants[0] && tenants[0].name) || "";
  const name = el("input", { id: "add-name", autocomplete: "off", required: "" });
  const path = el("input", { id: "add-path", autocomplete: "off", required: "" });
  const sign = el("input", { id: "add-sign", type: "checkbox" });
  const form = el(
    "form",
    { className: "inline", id: "add-adapter" },
    el("label", { for: "add-tenant" }, "Tenant"),
    tenant,
    el("label", { for: "add-name" }, "Adapter name"),
    name,
    el("label", { for: "add-path" }, "PEFT directory on the gateway host"),
    path,
    el("label", { className: "check" }, sign, "Sign it"),
    el("button", { type: "submit" }, "Add adapter version"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const [t, n] = [tenant.value, name.value.trim()];
    const added = await act(`add ${t}/${n}`, () => client.addAdapter(t, n, path.value.trim(), sign.checked));
    if (added) {
      say(`add ${t}/${n}: done, version @${added.version}${added.signed ? ", signed" : ""}`, "ok");
      await show("adapter", { params: { tenant: t, adapter: n }, keepMessage: true, moveFocus: true });
    }
  });
  return el(
    "details",
    { className: "add" },
    el("summary", {}, "Add an adapter version"),
    form,
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
      cell("tenant", link(t.name, tenantRoute(t.name), `Settings and keys of ${t.name}`)),
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

// The adapter's name, linked to its page (when the versions named are known).
function adapterLink(known, tenantId, ...versionIds) {
  const adapter = known.adapter(...versionIds);
  const tenant = known.tenant(tenantId);
  if (adapter === "unknown adapter" || tenant === "unknown tenant") return adapter;
  return link(adapter, adapterRoute(tenant, adapter), `Open ${tenant}/${adapter}`);
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
        cell("adapter", adapterLink(known, r.tenant_id, r.candidate_version_id, r.parent_version_id)),
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
    ["created", "tenant", "adapter", "candidate", "serving", "round", "verdict", "reasons", "summary"],
    reports.map((g) =>
      el(
        "tr",
        {},
        cell("created", when(g.created_at)),
        cell("tenant", known.tenant(g.tenant_id)),
        cell("adapter", adapterLink(known, g.tenant_id, g.candidate_version_id, g.serving_version_id)),
        cell("candidate", known.version(g.candidate_version_id)),
        cell("serving", known.version(g.serving_version_id) ?? "none"),
        el("td", { "data-col": "round", className: "mono" }, g.round_id ?? "none"),
        cell("verdict", g.passed ? "passed" : "rejected"),
        cell("reasons", ...(g.reasons || []).map((r) => el("div", {}, r))),
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

// The console's pages, each reached by a URL fragment: #rounds, #adapter/acme/support (and
// #adapter/acme/support/gate/<id> for one of its gate reports), #tenant/acme,
// #playground/acme/support.
const views = {
  adapters: adaptersView,
  tenants: tenantsView,
  rounds: roundsView,
  gates: gatesView,
  audit: auditView,
  playground: (params) => playgroundView(context, params),
  adapter: (params) => adapterView(context, params),
  tenant: (params) => tenantView(context, params),
};
const SECTION = { adapter: "adapters", tenant: "tenants" }; // the nav entry a page belongs to

// What the page modules may use: the client, act (and re-show), the dialogs, the helpers.
const context = {
  get client() {
    return client;
  },
  act,
  button,
  when,
  showSecret,
  playgroundRoute,
  swap: (detail, to, back = false) =>
    swap({ tenant: detail.tenant, adapter: detail.adapter, serving: detail.serving_version, to, back }),
};

function hashOf(name, params = {}) {
  if (name === "adapter") return adapterRoute(params.tenant, params.adapter, ...(params.focus || []));
  if (name === "tenant") return tenantRoute(params.tenant);
  if (name === "playground") return playgroundRoute(params.tenant, params.adapter);
  return `#${name}`;
}

function routeOf(hash) {
  const [name, ...rest] = hash.replace(/^#/, "").split("/").map((part) => {
    try {
      return decodeURIComponent(part);
    } catch {
      return part;
    }
  });
  if (name === "adapter" && rest.length >= 2) {
    return { name, params: { tenant: rest[0], adapter: rest[1], focus: rest.slice(2, 4) } };
  }
  if (name === "tenant" && rest.length >= 1) return { name, params: { tenant: rest[0] } };
  if (name === "playground") return { name, params: { tenant: rest[0], adapter: rest[1] } };
  return Object.hasOwn(views, name) && !SECTION[name] ? { name, params: {} } : null;
}

// The element a fragment points into (a round, a gate report, a version), or the page's title.
function focusTarget(params) {
  const [kind, id] = (params && params.focus) || [];
  const target = kind ? document.getElementById(`${kind}-${id}`) : null;
  const node = target || $("page-title");
  if (!node) return false;
  node.focus();
  if (target) target.scrollIntoView({ block: "start" });
  return true;
}

const controlName = (node) => node.getAttribute("aria-label") || node.id || node.textContent.trim();

const samePage = (a, b) => hashOf(a.name, { ...a.params, focus: [] }) === hashOf(b.name, { ...b.params, focus: [] });

async function show(name, { params = {}, keepMessage = false, push = true, moveFocus = false } = {}) {
  if (!client) {
    say("Sign in first.", "error");
    $("token").focus();
    return;
  }
  current = { name, params };
  const ticket = ++shown;
  if (!keepMessage) say("");
  const hash = hashOf(name, params);
  if (location.hash !== hash) history[push ? "pushState" : "replaceState"](null, "", hash);
  for (const navButton of document.querySelectorAll("nav button[data-view]")) {
    const view = navButton.dataset.view;
    if (view === name) navButton.setAttribute("aria-current", "page");
    else if (view === SECTION[name]) navButton.setAttribute("aria-current", "true");
    else navButton.removeAttribute("aria-current");
  }
  // After an action the view is drawn again: focus goes back to the same control if it is
  // still there (by its name), else to the page's title or the view.
  const had = keepMessage ? document.activeElement : null;
  const hadName = had && had !== document.body ? controlName(had) : null;
  try {
    const content = await views[name](params);
    if (ticket !== shown || !client) return;
    $("view").replaceChildren(content);
    if (content.afterShow) content.afterShow();
    if (moveFocus || (params.focus && params.focus.length)) {
      if (!focusTarget(params)) $("view").focus();
    } else if (keepMessage) {
      const again = hadName && [...$("view").querySelectorAll("button, a, input, select, textarea")].find((node) => controlName(node) === hadName);
      (again || $("page-title") || $("view")).focus();
    }
  } catch (err) {
    if (ticket !== shown) return;
    $("view").replaceChildren();
    say(err.message, "error");
    if (err.status === 401 || err.status === 403) signOut({ keepMessage: true });
  }
}

// A link followed, or Back and Forward: the page the fragment names.
function onLocation() {
  if (!client) return;
  const route = routeOf(location.hash);
  if (!route) return;
  if (samePage(route, current) && $("view").childElementCount) {
    current = route;
    focusTarget(route.params);
    return;
  }
  show(route.name, { params: route.params, push: false, moveFocus: true });
}

async function signIn(token) {
  client = new AdminClient(token);
  try {
    const tenants = await client.tenants();
    sessionStorage.setItem("flywheel-admin-token", token);
    fillTenantFilter(tenants);
    $("login").hidden = true;
    $("nav").hidden = false;
    const route = routeOf(location.hash) || current;
    await show(route.name, { params: route.params, push: false });
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
  current = { name: "adapters", params: {} };
  history.replaceState(null, "", location.pathname + location.search);
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
$("tenant-filter").addEventListener("change", () => show(current.name, { params: current.params, push: false }));
for (const navButton of document.querySelectorAll("nav button[data-view]")) {
  navButton.addEventListener("click", () => show(navButton.dataset.view));
}
window.addEventListener("hashchange", onLocation);
const saved = sessionStorage.getItem("flywheel-admin-token");
if (saved) signIn(saved);
