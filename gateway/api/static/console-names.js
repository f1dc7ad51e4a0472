// Names for the ids the admin API answers with (rounds and gate reports carry tenant and
// version ids), resolved from GET /admin/tenants and GET /admin/adapters; and where a
// rollback would go, worked out as the gateway does it (adapters/promotion.py: the newest
// swap away from a version other than the serving one, if that version is still servable).
// Free of the DOM, like console-api.js.

export const SERVABLE = ["ready", "passed"];

export class Names {
  constructor(tenants, versions) {
    this.tenants = new Map(tenants.map((t) => [t.id, t.name]));
    this.versions = new Map(versions.map((v) => [v.version_id, v]));
  }

  tenant(id) {
    return this.tenants.get(id) ?? "unknown tenant";
  }

  // "support@2", or null for no version.
  version(id) {
    if (!id) return null;
    const v = this.versions.get(id);
    return v ? `${v.adapter}@${v.version}` : "unknown version";
  }

  // The adapter a round or gate report is about, from any version of it that it names.
  adapter(...versionIds) {
    for (const id of versionIds) {
      const v = id && this.versions.get(id);
      if (v) return v.adapter;
    }
    return "unknown adapter";
  }
}

const key = (tenant, adapter) => `${tenant}/${adapter}`;

// For each "tenant/adapter": the version number a rollback would serve, null when the gateway
// would refuse it (409: one version, or no earlier servable version), or "previous" when the
// audit window (`limit` events, newest first) may not reach far enough back to say.
export function rollbackTargets(versions, tenants, events, limit) {
  const tenantName = new Map(tenants.map((t) => [t.id, t.name]));
  const byAdapter = new Map();
  for (const v of versions) {
    const k = key(v.tenant, v.adapter);
    if (!byAdapter.has(k)) byAdapter.set(k, { active: null, servable: new Set() });
    const entry = byAdapter.get(k);
    if (v.active) entry.active = v.version;
    if (SERVABLE.includes(v.state)) entry.servable.add(v.version);
  }
  const targets = new Map();
  for (const [k, entry] of byAdapter) {
    targets.set(k, entry.active !== null && entry.servable.size > 1 ? undefined : null);
  }
  for (const event of events) {
    if (event.action !== "adapter.promote" && event.action !== "adapter.rollback") continue;
    const adapter = event.target.replace(/@\d+$/, "");
    const k = key(tenantName.get(event.tenant_id), adapter);
    if (targets.get(k) !== undefined) continue; // decided already, or nothing to decide
    const from = event.detail && event.detail.from;
    const entry = byAdapter.get(k);
    if (from !== null && from !== undefined && from !== entry.active && entry.servable.has(from)) {
      targets.set(k, from);
    }
  }
  const complete = events.length < limit;
  for (const [k, target] of targets) {
    if (target === undefined) targets.set(k, complete ? null : "previous");
  }
  return targets;
}
