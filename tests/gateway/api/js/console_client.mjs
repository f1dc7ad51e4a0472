// Drives the web console's admin client (gateway/api/static/console-api.js) against a live
// gateway and prints what each call returned; tests/test_console.py asserts on the report.
// usage: node console_client.mjs MODULE_PATH BASE_URL ADMIN_TOKEN TENANT ADAPTER
import { pathToFileURL } from "node:url";

const [modulePath, base, token, tenant, adapter] = process.argv.slice(2);
const { AdminClient, AdminError } = await import(pathToFileURL(modulePath).href);

async function attempt(call) {
  try {
    return { ok: await call() };
  } catch (err) {
    if (!(err instanceof AdminError)) throw err;
    return { error: { status: err.status, code: err.code, message: err.message } };
  }
}

const client = new AdminClient(token, base);
const report = {};
report.tenants = (await client.tenants()).map((t) => t.name);
report.before = await client.adapters(tenant);
report.verify = await attempt(() => client.verify(tenant, adapter, 2));
report.promote = await attempt(() => client.promote(tenant, adapter, 2, "from the console test"));
report.afterPromote = await client.adapters(tenant);
report.rollback = await attempt(() => client.rollback(tenant, adapter, "console test rollback"));
report.afterRollback = await client.adapters(tenant);
report.promoteMissing = await attempt(() => client.promote(tenant, adapter, 99));
report.stats = await client.feedbackStats(tenant);
report.rounds = await client.rounds(tenant);
report.gates = await client.gateReports(tenant);
report.audit = (await client.audit(50)).map((e) => e.action);
report.badToken = await attempt(() => new AdminClient("not-a-token", base).tenants());
report.unknownTenant = await attempt(() => client.adapters("no-such-tenant"));
report.unreachable = await attempt(() => new AdminClient(token, "http://127.0.0.1:9").tenants());
console.log(JSON.stringify(report));
