// Runs the console's name and rollback-target resolution (gateway/api/static/console-names.js)
// on fixed inputs and prints the answers; tests/test_console.py asserts on them.
// usage: node console_names.mjs MODULE_PATH
import { pathToFileURL } from "node:url";

const { Names, rollbackTargets } = await import(pathToFileURL(process.argv[2]).href);

const tenants = [{ id: "ten_a", name: "acme" }, { id: "ten_b", name: "globex" }];
const v = (tenant, adapter, version, state, active = false) => ({
  tenant, adapter, version, state, active, version_id: `av_${tenant}_${adapter}_${version}`,
});
const versions = [
  v("acme", "support", 1, "ready"),
  v("acme", "support", 2, "passed", true),
  v("acme", "support", 3, "rejected"),
  v("acme", "solo", 1, "ready", true),
  v("globex", "support", 1, "ready", true),
  v("globex", "support", 2, "candidate"),
];
const swap = (tenant, action, target, from) => ({
  tenant_id: tenant, action, target, detail: { from, to: Number(target.split("@")[1]) },
});
// Newest first, as GET /admin/audit answers.
const events = [
  { tenant_id: "ten_a", action: "adapter.verify", target: "support@2", detail: { verified: true } },
  swap("ten_a", "adapter.promote", "support@2", 1),
  swap("ten_a", "adapter.promote", "support@1", null),
];
const names = new Names(tenants, versions);
const out = {
  tenant: names.tenant("ten_b"),
  unknownTenant: names.tenant("ten_zzz"),
  version: names.version("av_acme_support_2"),
  noVersion: names.version(null),
  adapter: names.adapter(null, "av_globex_support_1"),
  targets: Object.fromEntries(rollbackTargets(versions, tenants, events, 1000)),
  // The same history, but the audit window is full: an adapter whose swaps may lie beyond it.
  windowFull: Object.fromEntries(rollbackTargets(versions, tenants, events.slice(0, 1), 1)),
};
console.log(JSON.stringify(out));
