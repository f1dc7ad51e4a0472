// The web console: a view over the admin API (console-api.js); every value is shown with
// textContent, never parsed as HTML.
import { AdminClient } from "/console/console-api.js";

const $ = (id) => document.getElementById(id);
let client = null;
let view = "adapters";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "onclick") node.addEventListener("click", value);
    else if (key === "className") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function table(headers, rows) {
  return el(
    "table",
    {},
    el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows),
  );
}

function say(text, kind = "ok") {
  $("message").textContent = text;
  $("message").className = kind;
}

const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");
const json = (value) => (value === null || value === undefined ? "" : JSON.stringify(value));
const tenantFilter = () => $("tenant-filter").value || null;

async function act(label, action) {
  try {
    const result = await action();
    say(`${label}: done`, "ok");
    await show(view);
    return result;
  } catch (err) {
    say(`${label}: ${err.message}`, "error");
    return null;
  }
}

async function adaptersView() {
  const versions = await client.adapters(tenantFilter());
  const rows = versions.map((v) => {
    const target = `${v.tenant}/${v.adapter}`;
    const actions = el("td", {});
    if (v.active) {
      actions.append(
        el("button", {
          onclick: () => {
            const reason = prompt(`Roll back ${target} to its previous version? Reason:`);
            if (reason !== null) act(`rollback ${target}`, () => client.rollback(v.tenant, v.adapter, reason));
          },
        }, "Roll back"),
      );
    } else if (v.state !== "rejected") {
      actions.append(
        el("button", {
          onclick: () => {
            const reason = prompt(`Promote ${target}@${v.version}? Reason:`);
            if (reason !== null) act(`promote ${target}@${v.version}`, () => client.promote(v.tenant, v.adapter, v.version, reason));
          },
        }, "Promote"),
      );
    }
    actions.append(
      " ",
      el("button", {
        onclick: () => act(`verify ${target}@${v.version}`, () => client.verify(v.tenant, v.adapter, v.version)),
      }, "Verify"),
    );
    return el(
      "tr",
      { className: v.active ? "active" : "" },
      el("td", {}, v.tenant),
      el("td", {}, v.adapter),
      el("td", { className: "num" }, v.version),
      el("td", {}, v.state + (v.active ? " (serving)" : "")),
      el("td", {}, v.signed ? "yes" : "no"),
      el("td", { className: "num" }, v.rank ?? ""),
      el("td", { className: "mono" }, (v.digest || "").slice(0, 16)),
      el("td", {}, when(v.created_at)),
      actions,
    );
  });
  return table(["tenant", "adapter", "version", "state", "signed", "rank", "digest", "created", ""], rows);
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
  fillTenantFilter(tenants);  // a tenant created here shows up in the filter too
  const out = el("div", {});
  const name = el("input", { placeholder: "new tenant name" });
  out.append(
    el("p", {}, name, " ", el("button", {
      onclick: async () => {
        const created = await act(`create ${name.value}`, () => client.createTenant(name.value));
        if (created) showSecret(`API key for ${created.tenant.name} (shown once)`, created.api_key);
      },
    }, "Create tenant")),
  );
  const rows = tenants.map((t) => {
    const stats = el("td", {}, el("button", {
      onclick: async () => {
        try {
          const s = await client.feedbackStats(t.name);
          stats.textContent = `${s.completions} completions, ${s.up} up, ${s.down} down, ${s.edits} edits`;
        } catch (err) {
          say(err.message, "error");
        }
      },
    }, "Feedback stats"));
    return el(
      "tr",
      {},
      el("td", {}, t.name),
      el("td", { className: "mono" }, t.id),
      el("td", {}, t.disabled ? "disabled" : "enabled"),
      el("td", {}, when(t.created_at)),
      stats,
      el("td", {}, el("button", {
        onclick: async () => {
          if (!confirm(`Rotate ${t.name}'s keys? Every current key stops working.`)) return;
          const rotated = await act(`rotate ${t.name}`, () => client.rotateKeys(t.name));
          if (rotated) showSecret(`New API key for ${t.name} (shown once)`, rotated.api_key);
        },
      }, "Rotate keys")),
    );
  });
  out.append(table(["tenant", "id", "status", "created", "feedback", ""], rows));
  return out;
}

function showSecret(label, secret) {
  $("view").prepend(el("p", { className: "secret" }, `${label}: `, el("code", {}, secret)));
}

async function roundsView() {
  const rounds = await client.rounds(tenantFilter());
  return table(
    ["created", "tenant", "state", "method", "counts", "metrics", "error"],
    rounds.map((r) =>
      el(
        "tr",
        {},
        el("td", {}, when(r.created_at)),
        el("td", { className: "mono" }, r.tenant_id),
        el("td", {}, r.state),
        el("td", {}, r.method || ""),
        el("td", { className: "mono" }, json(r.counts)),
        el("td", { className: "mono" }, json(r.metrics)),
        el("td", {}, r.error || ""),
      ),
    ),
  );
}

async function gatesView() {
  const reports = await client.gateReports(tenantFilter());
  return table(
    ["created", "tenant", "passed", "reasons", "summary"],
    reports.map((g) =>
      el(
        "tr",
        {},
        el("td", {}, when(g.created_at)),
        el("td", { className: "mono" }, g.tenant_id),
        el("td", {}, g.passed ? "passed" : "failed"),
        el("td", {}, (g.reasons || []).join("; ")),
        el("td", { className: "mono" }, json(g.summary)),
      ),
    ),
  );
}

async function auditView() {
  const events = await client.audit(200);
  return table(
    ["when", "actor", "action", "target", "from", "detail"],
    events.map((e) =>
      el(
        "tr",
        {},
        el("td", {}, when(e.created_at)),
        el("td", {}, e.actor),
        el("td", {}, e.action),
        el("td", {}, e.target),
        el("td", {}, e.remote_addr || ""),
        el("td", { className: "mono" }, json(e.detail)),
      ),
    ),
  );
}

const views = { adapters: adaptersView, tenants: tenantsView, rounds: roundsView, gates: gatesView, audit: auditView };

async function show(name) {
  view = name;
  for (const button of document.querySelectorAll("nav button[data-view]")) {
    button.classList.toggle("current", button.dataset.view === name);
  }
  try {
    $("view").replaceChildren(await views[name]());
  } catch (err) {
    say(err.message, "error");
    if (err.status === 401 || err.status === 403) signOut();
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
    say("");
    await show(view);
  } catch (err) {
    client = null;
    say(`Sign-in failed: ${err.message}`, "error");
  }
}

function signOut() {
  sessionStorage.removeItem("flywheel-admin-token");
  client = null;
  $("login").hidden = false;
  $("nav").hidden = true;
  $("view").replaceChildren();
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("token").value.trim());
});
$("logout").addEventListener("click", signOut);
$("tenant-filter").addEventListener("change", () => show(view));
for (const button of document.querySelectorAll("nav button[data-view]")) {
  button.addEventListener("click", () => show(button.dataset.view));
}
const saved = sessionStorage.getItem("flywheel-admin-token");
if (saved) signIn(saved);
