// The console's DOM helpers: elements built from text (never HTML), tables that scroll inside
// their own box, key/value lists, the message line and the one dialog the page asks with.

export const $ = (id) => document.getElementById(id);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
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

// A cell; `col` names the column for styling and for tests (data-col).
export const cell = (col, ...children) => el("td", { "data-col": col }, ...children);

// A table inside its own horizontally scrolling box: a wide table never widens the page.
export function table(caption, headers, rows) {
  const body = rows.length
    ? rows
    : [el("tr", {}, el("td", { colspan: String(headers.length), className: "empty" }, "none yet"))];
  return el(
    "div",
    { className: "table-wrap", role: "region", "aria-label": caption, tabindex: "0" },
    el(
      "table",
      {},
      el("caption", {}, caption),
      el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...body),
    ),
  );
}

function formatValue(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number") {
    return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(4)));
  }
  if (Array.isArray(value)) return value.map(formatValue).join(", ");
  if (typeof value === "object") {
    return Object.entries(value)
      .map(([k, v]) => `${k} ${formatValue(v)}`)
      .join(", ");
  }
  return String(value);
}

// One key and its value a line (round counts and metrics, audit details), not one JSON line.
export function kv(object) {
  if (!object || typeof object !== "object" || Object.keys(object).length === 0) return "";
  return el(
    "dl",
    { className: "kv" },
    ...Object.entries(object).map(([key, value]) =>
      el("div", {}, el("dt", {}, key), el("dd", {}, formatValue(value))),
    ),
  );
}

// The message line: what the last action did, or why it failed; cleared on every new view.
export function say(text, kind = "ok") {
  $("message").textContent = text;
  $("message").className = text ? kind : "";
}

// Ask before acting: a modal dialog with a title, a text and, when `reason` is set, a required
// reason (blanks refused).  Resolves to the reason ("" when none is asked), or null when
// cancelled; focus goes back to whatever had it before.
export function ask({ title, text, confirm, reason = false }) {
  const dialog = $("ask");
  const field = $("ask-reason");
  const opener = document.activeElement;
  $("ask-title").textContent = title;
  $("ask-text").textContent = text;
  $("ask-ok").textContent = confirm;
  $("ask-reason-row").hidden = !reason;
  field.required = reason;
  field.value = "";
  field.setCustomValidity("");
  return new Promise((resolve) => {
    let answer = null;
    const onSubmit = (event) => {
      event.preventDefault();
      if (reason && !field.value.trim()) {
        field.setCustomValidity("Say why: the reason is kept in the audit log.");
        field.reportValidity();
        return;
      }
      answer = reason ? field.value.trim() : "";
      dialog.close();
    };
    const onInput = () => field.setCustomValidity("");
    const onCancel = () => dialog.close();
    const onClose = () => {
      $("ask-form").removeEventListener("submit", onSubmit);
      field.removeEventListener("input", onInput);
      $("ask-cancel").removeEventListener("click", onCancel);
      if (opener && opener.isConnected) opener.focus();
      resolve(answer);
    };
    $("ask-form").addEventListener("submit", onSubmit);
    field.addEventListener("input", onInput);
    $("ask-cancel").addEventListener("click", onCancel);
    dialog.addEventListener("close", onClose, { once: true });
    dialog.showModal();
    (reason ? field : $("ask-ok")).focus();
  });
}
