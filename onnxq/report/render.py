"""The report as one self-contained HTML file: sortable per-layer table, culprits with their
overrides, matplotlib plots embedded as PNG (it opens offline)."""

from __future__ import annotations

import base64
import html
import io
import math
import warnings

from onnxq.allocate.pareto import draw as draw_front

WORST_HISTOGRAMS = 6
"""Histograms drawn: the activations with the lowest local SQNR."""

STYLE = """
body { font: 14px/1.4 'DejaVu Sans', sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
td.text, th.text { text-align: left; }
th { background: #f0f0f0; cursor: pointer; position: sticky; top: 0; }
tr.culprit td { background: #fde2e2; }
pre { background: #f6f6f6; padding: 8px; font-size: 12px; }
.summary td { text-align: left; }
img { max-width: 100%; }
"""

SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th, column) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var rows = Array.from(body.rows);
    var up = th.dataset.order !== 'up';
    th.dataset.order = up ? 'up' : 'down';
    rows.sort(function (a, b) {
      var x = a.cells[column].dataset.value, y = b.cells[column].dataset.value;
      var nx = parseFloat(x), ny = parseFloat(y);
      if (!isNaN(nx) && !isNaN(ny)) return up ? nx - ny : ny - nx;
      if (isNaN(nx) !== isNaN(ny)) return isNaN(nx) ? 1 : -1;
      return up ? String(x).localeCompare(y) : String(y).localeCompare(x);
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def _figure_tag(figure, alt: str) -> str:
    from matplotlib import pyplot

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96)
    pyplot.close(figure)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _depth_figure(report: dict):
    from matplotlib import pyplot

    rows = report["rows"]
    figure, axis = pyplot.subplots(figsize=(11, 4))
    series = [("accumulated_sqnr_db", "accumulated (vs FP32's tensor)", "-"),
              ("only_layer_sqnr_db", "only this layer quantized (output)", "-"),
              ("local_sqnr_db", "local (input vs its Q/DQ)", ":"),
              ("weight_sqnr_db", "weight", "")]
    for key, label, style in series:
        points = [(k, row[key]) for k, row in enumerate(rows) if row[key] is not None]
        if points:
            axis.plot(*zip(*points, strict=True), style, marker="o" if not style else None,
                      markersize=3, label=label)
    for culprit in report["culprits"]:
        k = next(k for k, row in enumerate(rows) if row["node"] == culprit["node"])
        if rows[k]["only_layer_sqnr_db"] is not None:
            axis.plot(k, rows[k]["only_layer_sqnr_db"], "*", color="red", markersize=12)
    axis.set_xlabel("quantized node, in graph order")
    axis.set_ylabel("SQNR (dB)")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8, ncol=4)
    figure.tight_layout()
    return figure


def _histogram_figure(report: dict):
    from matplotlib import pyplot

    inputs = {entry["tensor"]: entry for row in report["rows"] for entry in row["inputs"]
              if entry.get("local_sqnr_db") is not None}
    worst = sorted(inputs.values(), key=lambda e: e["local_sqnr_db"])[:WORST_HISTOGRAMS]
    if not worst:
        return None
    columns = min(3, len(worst))
    rows = math.ceil(len(worst) / columns)
    figure, axes = pyplot.subplots(rows, columns, figsize=(4 * columns, 3 * rows),
                                   squeeze=False)
    for axis in axes.flat[len(worst):]:
        axis.set_visible(False)
    for axis, entry in zip(axes.flat, worst, strict=False):
        edges, counts = entry["histogram"]["edges"], entry["histogram"]["counts"]
        axis.stairs(counts, edges, fill=True, alpha=0.6)
        axis.set_yscale("log")
        for end in entry["range"]:
            axis.axvline(end, color="red", linewidth=1)
        axis.set_title(f"{entry['tensor'][-40:]}\nlocal {entry['local_sqnr_db']} dB, "
                       f"clipped {100 * entry['clipped']:.3f}%", fontsize=8)
        axis.tick_params(labelsize=7)
    figure.suptitle("worst activations: values before their Q/DQ, the grid's range in red "
                    f"({entry['qtype']})", fontsize=9)
    figure.tight_layout()
    return figure


def _cell(value, text: str | None = None, cls: str = "") -> str:
    shown = "-" if value is None else html.escape(str(value) if text is None else text)
    data = "" if value is None else html.escape(str(value))
    return f'<td class="{cls}" data-value="{data}">{shown}</td>'


def _layer_table(report: dict) -> str:
    culprits = {c["node"] for c in report["culprits"]}
    heads = [("node", "text"), ("op", "text"), ("depth", ""), ("weight SQNR", ""),
             ("local SQNR", ""), ("accumulated SQNR", ""), ("only-this-layer SQNR", ""),
             ("gain if float", ""),
             ("clipped %", ""), ("activation range", "text"), ("observed", "text"),
             ("weights", "text"), ("activations", "text"), ("rules", "text")]
    out = ['<table class="sortable"><thead><tr>']
    out += [f'<th class="{cls}">{name}</th>' for name, cls in heads]
    out.append("</tr></thead><tbody>")
    for row in report["rows"]:
        acts = [e for e in row["inputs"] if "range" in e]
        ranges = "; ".join(f"[{e['range'][0]:.4g}, {e['range'][1]:.4g}]" for e in acts)
        seen = "; ".join(f"[{e['observed'][0]:.4g}, {e['observed'][1]:.4g}]" for e in acts)
        clipped = row["clipped"]
        decision = row["decision"]
        out.append(f'<tr class="{"culprit" if row["node"] in culprits else ""}">' + "".join([
            _cell(row["node"], cls="text"), _cell(row["op"], cls="text"), _cell(row["depth"]),
            _cell(row["weight_sqnr_db"]), _cell(row["local_sqnr_db"]),
            _cell(row["accumulated_sqnr_db"]), _cell(row["only_layer_sqnr_db"]),
            _cell(row["float_gain_db"]),
            _cell(None if clipped is None else round(100 * clipped, 4)),
            _cell(ranges or None, cls="text"), _cell(seen or None, cls="text"),
            _cell(decision["weights"], cls="text"), _cell(decision["activations"], cls="text"),
            _cell("; ".join(decision["rules"]) or None, cls="text")]) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _pairs_table(items: dict, heads: tuple[str, str]) -> str:
    if not items:
        return "<p>none</p>"
    rows = "".join(f'<tr><td class="text">{html.escape(str(k))}</td>'
                   f'<td class="text">{html.escape(str(v))}</td></tr>' for k, v in items.items())
    return (f'<table class="sortable"><thead><tr><th class="text">{heads[0]}</th>'
            f'<th class="text">{heads[1]}</th></tr></thead><tbody>{rows}</tbody></table>')


def _figures(report: dict, pareto: dict | None) -> list[str]:
    try:
        import matplotlib
    except ImportError:
        warnings.warn("no plots in the report: install matplotlib (pip install "
                      "'onnxq[plot]')", stacklevel=3)
        return []
    matplotlib.use("Agg")
    tags = ["<h2>SQNR along the depth</h2>", _figure_tag(_depth_figure(report), "SQNR")]
    histograms = _histogram_figure(report)
    if histograms is not None:
        tags += ["<h2>Histograms of the worst activations</h2>",
                 _figure_tag(histograms, "histograms")]
    if pareto:
        tags += ["<h2>Bit allocation: the measured Pareto front</h2>",
                 _figure_tag(draw_front(pareto), "Pareto front")]
    return tags


def render_html(report: dict, overrides: str, pareto: dict | None = None) -> str:
    """The report as one HTML page (plots embedded; nothing fetched when it opens)."""
    culprits = "".join(
        f'<tr><td class="text">{html.escape(c["node"])}</td><td class="text">{c["op"]}</td>'
        f'<td>{c["only_layer_sqnr_db"]}</td><td class="text">'
        + html.escape("; ".join(f"{f['sets']}: {f['only_layer_sqnr_db']} dB"
                                for f in c["fixes"]) or "-")
        + f'</td><td class="text">{html.escape(c["suggestion"])}</td></tr>'
        for c in report["culprits"])
    cost = report["cost"]
    summary = [("FP32", report["fp32"]), ("quantized", report["quantized"]),
               ("target", report["target"] or "unknown (not written by onnxq)"),
               ("data", f"{report['samples']} samples in {report['batches']} batches"),
               ("output SQNR vs FP32", f"{report['output_sqnr_db']} dB"),
               ("cost", f"{cost['seconds']} s, {cost['model_runs']} model runs")]
    overrides_applied = {o["rule"]: f"{o['sets']} ({o['nodes']} nodes)"
                         for o in report["overrides"]}
    body = [
        f"<h1>onnxq report: {html.escape(report['quantized'])}</h1>",
        '<table class="summary">' + "".join(
            f"<tr><td><b>{k}</b></td><td>{html.escape(str(v))}</td></tr>" for k, v in summary)
        + "</table>",
        "<h2>Culprits: the layers that harm the output most on their own</h2>",
        ('<table><thead><tr><th class="text">node</th><th class="text">op</th>'
         '<th>only-this-layer SQNR (dB)</th><th class="text">fixes measured</th>'
         f'<th class="text">suggested override</th></tr></thead><tbody>{culprits}</tbody>'
         "</table>"),
        ("<p>Written beside this report as <code>overrides.toml</code>; apply it with "
         "<code>onnxq quantize ... --overrides overrides.toml</code>:</p>"),
        f"<pre>{html.escape(overrides)}</pre>",
        *_figures(report, pareto),
        "<h2>Per layer (click a column to sort)</h2>",
        ("<p>SQNR in dB. <b>local</b>: a tensor after its Q/DQ against before, in the "
         "quantized network; <b>accumulated</b>: the node's output against the FP32 model's; "
         "<b>only-this-layer</b>: the model's output with only this node's inputs quantized; "
         "<b>gain if float</b> (<code>--leave-one-out</code>): what the output SQNR gains "
         "with every node quantized but this one; "
         "<b>clipped</b>: the share of the input outside the grid. '-': exact or not "
         "measured.</p>"),
        _layer_table(report),
        "<h2>Overrides applied</h2>", _pairs_table(overrides_applied, ("rule", "sets")),
        "<h2>Nodes left in float</h2>", _pairs_table(report["float_nodes"], ("node", "why")),
        "<h2>Target rules that changed decisions</h2>",
        _pairs_table(report["target_rules"], ("rule", "times")),
    ]
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>onnxq report: {html.escape(report['quantized'])}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}"
            f"<script>{SORT_SCRIPT}</script></body></html>")
