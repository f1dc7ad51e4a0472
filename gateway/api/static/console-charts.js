// Charts on an adapter's page, drawn by uPlot (vendored: uplot.esm.js, MIT, v1.6.32; no CDN):
// feedback rates per 100 completions across versions, one gate metric across the versions it
// judged, and a round's training curves (its per-step log).  Each chart is a figure with a caption, a text alternative and its numbers in a
// table, so nothing is only in the picture.
import uPlot from "/console/uplot.esm.js";
import { cell, el, table } from "/console/console-ui.js";

const round1 = (value) => (value === null ? null : Math.round(value * 10) / 10);
const shown = (value) => (value === null || value === undefined ? "n/a" : String(Number(value.toPrecision(4))));

// The width the view has for a chart (the page is drawn into #view before charts are made).
function widthFor(node) {
  const box = node.getBoundingClientRect().width || document.getElementById("view").clientWidth;
  return Math.max(240, Math.min(720, Math.floor(box)));
}

// x is a version (@1, @2, ...) unless `steps` is set: then it is a training step.
function plot(target, { title, yLabel, series, xs, columns, steps = false }) {
  target.replaceChildren();
  const opts = {
    title,
    width: widthFor(target),
    height: 220,
    scales: { x: { time: false, range: [Math.min(...xs) - 0.5, Math.max(...xs) + 0.5] } },
    axes: [
      steps
        ? { label: "step", values: (u, splits) => splits.map((v) => (Number.isInteger(v) ? String(v) : "")) }
        : { incrs: [1], values: (u, splits) => splits.map((v) => (Number.isInteger(v) ? `@${v}` : "")) },
      { label: yLabel, size: 56 },
    ],
    series: [
      steps
        ? { label: "step", value: (u, v) => (v === null ? "" : String(v)) }
        : { label: "version", value: (u, v) => (v === null ? "" : `@${v}`) },
      ...series.map((s) => ({ ...s, width: 2, points: { show: true, size: 8 }, spanGaps: false })),
    ],
    cursor: { drag: { x: false, y: false } },
  };
  return new uPlot(opts, [xs, ...columns], target);
}

// A figure: caption, the chart (an image to assistive technology, described in words) and the
// same numbers in a table under "The numbers".
function figure(id, caption, description, numbers) {
  const canvas = el("div", { className: "chart-canvas", role: "img", "aria-label": description });
  return {
    canvas,
    node: el(
      "figure",
      { className: "chart", id },
      el("figcaption", {}, caption),
      canvas,
      el("details", {}, el("summary", {}, "The numbers"), numbers),
    ),
  };
}

export function feedbackChart(detail) {
  const versions = detail.versions.filter((v) => v.feedback.completions > 0);
  const per100 = (v, key) => round1((100 * v.feedback[key]) / v.feedback.completions);
  const numbers = table(
    "Feedback per 100 completions, by version",
    ["version", "completions", "thumbs up", "thumbs down", "edits"],
    versions.map((v) =>
      el(
        "tr",
        {},
        cell("version", `@${v.version}`),
        cell("completions", v.feedback.completions),
        cell("up", shown(per100(v, "up"))),
        cell("down", shown(per100(v, "down"))),
        cell("edits", shown(per100(v, "edits"))),
      ),
    ),
  );
  const { canvas, node } = figure(
    "chart-feedback",
    "Feedback per 100 completions, by version",
    versions.length
      ? `Line chart of thumbs up, thumbs down and edits per 100 completions for versions ${versions.map((v) => `@${v.version}`).join(", ")}; the numbers are in the table below it.`
      : "No version has answered a completion yet.",
    numbers,
  );
  const draw = () => {
    if (!versions.length) {
      canvas.replaceChildren(el("p", { className: "note" }, "No completions yet."));
      return;
    }
    plot(canvas, {
      title: "",
      yLabel: "per 100 completions",
      xs: versions.map((v) => v.version),
      series: [
        { label: "thumbs up", stroke: "#2e7d32" },
        { label: "thumbs down", stroke: "#b00020", dash: [8, 4] },
        { label: "edits", stroke: "#1565c0", dash: [2, 4] },
      ],
      columns: ["up", "down", "edits"].map((key) => versions.map((v) => per100(v, key))),
    });
  };
  return { node, draw };
}

export function gateChart(detail) {
  // The newest report on each judged version, oldest version first.
  const newest = new Map();
  for (const g of [...detail.gate_reports].reverse()) {
    if (g.candidate_version !== null) newest.set(g.candidate_version, g);
  }
  const reports = [...newest.entries()].sort((a, b) => a[0] - b[0]).map(([, g]) => g);
  const labels = new Map();
  for (const g of reports) for (const m of g.metrics) if (m.outcome !== "skipped") labels.set(m.metric, m.label);
  const choice = el(
    "select",
    { id: "gate-chart-metric" },
    ...[...labels].map(([metric, label]) => el("option", { value: metric }, label)),
  );
  const picker = el("p", { className: "stack" }, el("label", { for: "gate-chart-metric" }, "Gate metric"), choice);
  const numbersBox = el("div", {});
  const { canvas, node } = figure("chart-gate", "A gate metric across the versions it judged", "No gate report yet.", numbersBox);
  node.insertBefore(picker, canvas);
  const draw = () => {
    if (!reports.length || !labels.size) {
      canvas.replaceChildren(el("p", { className: "note" }, "No gate report yet."));
      picker.hidden = true;
      return;
    }
    const metric = choice.value;
    const rows = reports.map((g) => [g, g.metrics.find((m) => m.metric === metric) || null]);
    const value = (key) => rows.map(([, m]) => (m && m[key] !== null ? m[key] : null));
    canvas.setAttribute(
      "aria-label",
      `Line chart of ${labels.get(metric)} for the candidate, the serving version it was compared with and the rule's bound, for versions ${reports.map((g) => `@${g.candidate_version}`).join(", ")}; the numbers are in the table below it.`,
    );
    plot(canvas, {
      title: "",
      yLabel: labels.get(metric),
      xs: reports.map((g) => g.candidate_version),
      series: [
        { label: "candidate", stroke: "#1565c0" },
        { label: "serving", stroke: "#555", dash: [8, 4] },
        { label: "bound", stroke: "#b00020", dash: [2, 4] },
      ],
      columns: [value("candidate"), value("serving"), value("limit")],
    });
    numbersBox.replaceChildren(
      table(
        `${labels.get(metric)} by judged version`,
        ["candidate version", "serving version", "candidate", "serving", "bound", "outcome"],
        rows.map(([g, m]) =>
          el(
            "tr",
            {},
            cell("version", `@${g.candidate_version}`),
            cell("serving-version", g.serving_version ? `@${g.serving_version}` : "none"),
            cell("candidate", shown(m && m.candidate)),
            cell("serving", shown(m && m.serving)),
            cell("bound", shown(m && m.limit)),
            cell("outcome", m ? m.outcome : "n/a"),
          ),
        ),
      ),
    );
  };
  choice.addEventListener("change", draw);
  return { node, draw };
}

// What a round's per-step log may hold, in the order drawn: [key, label, stroke, dash].
const CURVES = [
  ["loss", "loss", "#b00020", null],
  ["rewards/margins", "reward margin", "#1565c0", [8, 4]],
  ["rewards/accuracies", "reward accuracy", "#2e7d32", [2, 4]],
];

export function trainingChart(detail) {
  const numberOf = new Map(detail.versions.map((v) => [v.version_id, v.version]));
  const rounds = detail.rounds.filter((r) => r.train_log && r.train_log.length);
  const name = (r) => {
    const produced = numberOf.get(r.candidate_version_id);
    return `${r.id}${produced ? ` (produced @${produced})` : ""}`;
  };
  const choice = el("select", { id: "train-chart-round" }, ...rounds.map((r) => el("option", { value: r.id }, name(r))));
  const picker = el("p", { className: "stack" }, el("label", { for: "train-chart-round" }, "Round"), choice);
  const numbersBox = el("div", {});
  const { canvas, node } = figure("chart-training", "Training curves of a round, per step", "No round has a training log yet.", numbersBox);
  node.insertBefore(picker, canvas);
  const draw = () => {
    if (!rounds.length) {
      canvas.replaceChildren(el("p", { className: "note" }, "No round has a training log yet."));
      picker.hidden = true;
      return;
    }
    const r = rounds.find((x) => x.id === choice.value) || rounds[0];
    const log = r.train_log;
    const curves = CURVES.filter(([key]) => log.some((e) => typeof e[key] === "number"));
    const value = (e, key) => (typeof e[key] === "number" ? e[key] : null);
    const last = log[log.length - 1];
    canvas.setAttribute(
      "aria-label",
      `Line chart of ${curves.map(([, label]) => label).join(", ")} over ${log.length} logged steps of round ${r.id}; ` +
        curves.map(([key, label]) => `${label} ${shown(value(log[0], key))} at step ${log[0].step}, ${shown(value(last, key))} at step ${last.step}`).join("; ") +
        ". The numbers are in the table below it.",
    );
    plot(canvas, {
      title: "",
      yLabel: "value",
      xs: log.map((e) => e.step),
      series: curves.map(([, label, stroke, dash]) => ({ label, stroke, ...(dash ? { dash } : {}) })),
      columns: curves.map(([key]) => log.map((e) => value(e, key))),
      steps: true,
    });
    numbersBox.replaceChildren(
      table(
        `Training log of round ${r.id}`,
        ["step", ...curves.map(([, label]) => label)],
        log.map((e) => el("tr", {}, cell("step", e.step), ...curves.map(([key]) => cell(key.replace("rewards/", ""), shown(value(e, key)))))),
      ),
    );
  };
  choice.addEventListener("change", draw);
  return { node, draw };
}
