"""Draw a static preview of the sniffer dashboard from a live Prometheus.

Runs every panel query of sniffer.json as a range query (Grafana's `$tenant` and
`$__rate_interval` substituted) and plots the results with matplotlib, one subplot per
panel, in dashboard order. It is a picture of what the dashboard's queries return, not a
Grafana rendering: use it for docs/dashboard.png and to eyeball a change to a query.

    python manifests/grafana/render_preview.py --prometheus http://127.0.0.1:9090 \\
        --minutes 15 --out docs/dashboard.png

tests/deploy/test_dashboard_prometheus.py calls `render()` after driving real traffic
through sniffer, so the picture in docs/ comes from a real run.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).with_name("sniffer.json")


def substitute(expr: str, tenant: str, rate_interval: str) -> str:
    return expr.replace("$tenant", tenant).replace("$__rate_interval", rate_interval)


def query_range(
    prometheus: str, expr: str, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode(
        {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    )
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


LEGEND_MAX = 16
"""Legend entries per panel: two columns of eight fit a panel's height."""
UNITS = {"short": "", "cps": "connections/s", "Bps": "bytes/s", "s": "seconds", "ops": "per second"}


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()


def render(
    prometheus: str,
    start: float,
    end: float,
    out: Path,
    *,
    tenant: str = ".*",
    rate_interval: str = "5s",
    step: float = 1.0,
    columns: int = 3,
    note: str = "",
    empty: list[str] | None = None,
    empty_queries: list[str] | None = None,
) -> int:
    """Write the preview PNG; return how many series were drawn. The titles of panels
    that drew nothing are appended to `empty` when given, and `TITLE: LEGEND` of every
    query that drew nothing (in a panel that may have drawn others) to `empty_queries`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.4 * columns, 3.4 * rows), squeeze=False)
    drawn = 0
    for ax, panel in zip(axes.flat, panels, strict=False):
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        for target in panel["targets"]:
            expr = substitute(target["expr"], tenant, rate_interval)
            before = drawn
            for series in query_range(prometheus, expr, start, end, step):
                xs = [float(t) - start for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                if all(math.isnan(y) for y in ys):
                    continue  # e.g. a quantile of a histogram with no observations
                name = legend(target.get("legendFormat", ""), series["metric"]) or expr[:40]
                ax.plot(xs, ys, label=name, linewidth=1.4)
                drawn += 1
            if drawn == before and empty_queries is not None:
                empty_queries.append(f"{panel['title']}: {target.get('legendFormat') or expr}")
        ax.set_title(panel["title"], fontsize=11, loc="left")
        ax.set_ylabel(UNITS.get(unit, unit), fontsize=9)
        ax.set_xlabel("seconds", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            if len(handles) > LEGEND_MAX:  # a legend taller than its plot hides the next
                more = len(handles) - LEGEND_MAX + 1
                handles, labels = handles[: LEGEND_MAX - 1], labels[: LEGEND_MAX - 1]
                handles.append(Line2D([], [], linestyle="none"))
                labels.append(f"... {more} more series")
            ax.legend(handles, labels, fontsize=7, loc="upper left", ncol=2, framealpha=0.6)
        else:
            ax.text(
                0.5,
                0.5,
                "no data",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="grey",
                fontsize=12,
            )
            if empty is not None:
                empty.append(panel["title"])
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(end))
    fig.suptitle(
        f"sniffer dashboard preview ({when}, {end - start:.0f} s, "
        f'tenant=~"{tenant}")' + (f"\n{note}" if note else ""),
        fontsize=14,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98 if note else 0.985))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72)
    plt.close(fig)
    palette(out)
    return drawn


def palette(png: Path) -> None:
    """Rewrite `png` with 256 colours: a third of the bytes, nothing visible lost (the
    picture is lines and text on white). Pillow comes with matplotlib."""
    from PIL import Image

    with Image.open(png) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(png, optimize=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090")
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--tenant", default=".*", help="regex for $tenant")
    ap.add_argument("--rate-interval", default="1m")
    ap.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    args = ap.parse_args()
    end = time.time()
    start = end - args.minutes * 60
    step = max(1.0, (end - start) / 300)
    n = render(
        args.prometheus.rstrip("/"),
        start,
        end,
        args.out,
        tenant=args.tenant,
        rate_interval=args.rate_interval,
        step=step,
    )
    print(f"wrote {args.out} ({n} series)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
