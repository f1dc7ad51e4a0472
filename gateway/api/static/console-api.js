// The web console's only way to the gateway: the admin API, with an admin token.
// Kept free of the DOM so it runs (and is tested) under Node as well as in the browser.

export class AdminError extends Error {
  constructor(status, message, code) {
    super(message);
    this.name = "AdminError";
    this.status = status;
    this.code = code;
  }
}

const q = encodeURIComponent;

const statusLine = (response) => `${response.status} ${response.statusText || ""}`.trim();

function notJson(response, text) {
  const kind = /^\s*</.test(text) ? "an HTML page" : "something other than JSON";
  return (
    `The gateway answered ${statusLine(response)} with ${kind}, not an admin API answer ` +
    "(is a proxy in the way?)."
  );
}

export class AdminClient {
  constructor(token, base = "") {
    this.token = token;
    this.base = base;
  }

  async request(method, path, body) {
    const headers = { authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    let response;
    try {
      response = await fetch(this.base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new AdminError(0, `The gateway did not answer: ${err.message}`, "network_error");
    }
    const text = await response.text();
    let data;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      // Not Flywheel's answer: a proxy, a login page, a load balancer's error page.  Its HTML
      // is never shown; the status says what happened.
      throw new AdminError(response.status, notJson(response, text), "not_json");
    }
    if (!response.ok) {
      // Flywheel's errors are OpenAI-shaped: {"error": {"message", "type", "param", "code"}}.
      const error = (data && data.error) || {};
      throw new AdminError(
        response.status,
        error.message || `The gateway answered ${statusLine(response)}.`,
        error.code || null,
      );
    }
    return data;
  }

  tenants() {
    return this.request("GET", "/admin/tenants");
  }

  createTenant(name) {
    return this.request("POST", "/admin/tenants", { name });
  }

  updateTenant(tenant, changes) {
    return this.request("PATCH", `/admin/tenants/${q(tenant)}`, changes);
  }

  keys(tenant) {
    return this.request("GET", `/admin/tenants/${q(tenant)}/keys`);
  }

  createKey(tenant) {
    return this.request("POST", `/admin/tenants/${q(tenant)}/keys`);
  }

  revokeKey(keyId) {
    return this.request("DELETE", `/admin/keys/${q(keyId)}`);
  }

  rotateKeys(tenant) {
    return this.request("POST", `/admin/tenants/${q(tenant)}/keys/rotate`);
  }

  // A tenant key for one playground reply (the OpenAI API as the tenant), shown once; the
  // console revokes it (revokeKey) as soon as the reply has streamed.
  playgroundKey(tenant) {
    return this.request("POST", `/admin/tenants/${q(tenant)}/playground-key`);
  }

  adapters(tenant) {
    const query = tenant ? `?tenant=${q(tenant)}` : "";
    return this.request("GET", `/admin/adapters${query}`);
  }

  // One adapter's page: lineage, rounds, gate tables, golden sets, feedback since the last round.
  adapter(tenant, adapter) {
    return this.request("GET", `/admin/adapters/${q(tenant)}/${q(adapter)}`);
  }

  // The next round's plan as a dry run, or why no round could start now.
  nextRound(tenant, adapter) {
    return this.request("GET", `/admin/adapters/${q(tenant)}/${q(adapter)}/next-round`);
  }

  // A PEFT directory on the gateway host, registered as the adapter's next version.
  addAdapter(tenant, name, path, sign = false) {
    return this.request("POST", "/admin/adapters", { tenant, name, path, sign });
  }

  addGolden(tenant, adapter, items) {
    return this.request("POST", "/admin/golden", { tenant, adapter, items });
  }

  verify(tenant, adapter, version) {
    return this.request(
      "POST",
      `/admin/adapters/${q(tenant)}/${q(adapter)}/versions/${q(version)}/verify`,
    );
  }

  promote(tenant, adapter, version, reason = "") {
    return this.request("POST", `/admin/adapters/${q(tenant)}/${q(adapter)}/promote`, {
      version,
      reason,
    });
  }

  rollback(tenant, adapter, reason = "") {
    return this.request("POST", `/admin/adapters/${q(tenant)}/${q(adapter)}/rollback`, {
      reason,
    });
  }

  rounds(tenant, limit = 50) {
    const query = tenant ? `&tenant=${q(tenant)}` : "";
    return this.request("GET", `/admin/rounds?limit=${q(limit)}${query}`);
  }

  gateReports(tenant, limit = 50) {
    const query = tenant ? `&tenant=${q(tenant)}` : "";
    return this.request("GET", `/admin/gate-reports?limit=${q(limit)}${query}`);
  }

  feedbackStats(tenant) {
    return this.request("GET", `/admin/feedback/stats?tenant=${q(tenant)}`);
  }

  audit(limit = 100) {
    return this.request("GET", `/admin/audit?limit=${q(limit)}`);
  }
}
