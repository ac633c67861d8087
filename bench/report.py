"""Renders the benchmark results into markdown tables and PNG plots.

Reads bench-results/{anchors,lifecycle}-<mode>.jsonl (bench/anchors.py, bench/lifecycle.py),
bench-results/operator-scale.jsonl (bench/operator-scale.sh) and the image tarballs under
~/.cache/kinfer/images when they exist. Writes bench-results/report-<mode>.md and one plot per
model (p99 against achieved throughput, per contender). A full run also publishes: the plots go to
docs/bench/ and the tables replace the generated part of docs/benchmarks.md (between the
`<!-- report:begin -->` and `<!-- report:end -->` markers); the reading around it is written by hand.

    python bench/report.py --mode full [--no-publish]
"""
import argparse
import json
import os
import statistics
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- report:begin -->", "<!-- report:end -->"
MODEL_TITLES = {
    "small": "tabular MLP 64 → 256 → 256 → 2 (0.3 MB)",
    "large": "MLP 512 → 2048 → 2048 → 2 (21 MB, ~5 MFLOP per row)",
    "minilm": "all-MiniLM-L6-v2, 32 tokens (87 MB, a real model)",
}
ORDER = ["raw session.run", "bare handler http", "bare handler grpc", "kinfer http, no batching", "kinfer grpc, no batching",
         "kinfer http, batch 32/500us", "kinfer grpc, batch 32/500us", "kinfer http, batch 32/2ms",
         "kinfer grpc, batch 32/2ms", "kinfer http, batch 32/5ms", "kinfer grpc, batch 32/5ms",
         "FastAPI + uvicorn + onnxruntime", "KServe ModelServer + onnxruntime"]
FASTAPI, KSERVE = "FastAPI + uvicorn + onnxruntime", "KServe ModelServer + onnxruntime"


def load(path):
    return [json.loads(line) for line in open(path)] if path.exists() else []


def med(rows, key):
    vals = [r[key] for r in rows if key in r]
    return statistics.median(vals) if vals else 0


def us(v):
    v = float(v)
    if v >= 10_000:
        return f"{v / 1000:,.0f} ms"
    if v >= 1000:
        return f"{v / 1000:,.1f} ms"
    return f"{v:,.0f} µs"


def rps(v):
    return f"{v:,.0f}"


def order_key(name):
    return ORDER.index(name) if name in ORDER else len(ORDER)


class Report:
    def __init__(self, mode, out):
        self.mode, self.out = mode, out
        self.rows = [r for r in load(out / f"anchors-{mode}.jsonl")]
        self.life = load(out / f"lifecycle-{mode}.jsonl")
        self.lines = []

    def p(self, *lines):
        self.lines.extend(lines)

    def groups(self, model, kind):
        g = defaultdict(list)
        for r in self.rows:
            if r.get("model") == model and r.get("kind") == kind:
                g[r["contender"]].append(r)
        return dict(sorted(g.items(), key=lambda kv: order_key(kv[0])))

    def conditions(self):
        c = self.out / f"conditions-{self.mode}.txt"
        if c.exists():
            self.p("Conditions of this run (from `bench-results/conditions-%s.txt`):" % self.mode, "", "```",
                   *c.read_text().strip().splitlines(), "```", "")
        loads = [r["loadavg"] for r in self.rows + self.life if "loadavg" in r]
        if loads:
            self.p(f"1-minute load average sampled after each figure: median {statistics.median(loads):.2f}, "
                   f"min {min(loads):.2f}, max {max(loads):.2f} (2 CPUs).", "")

    def saturation(self, model):
        sat = self.groups(model, "saturation")
        raw = self.groups(model, "raw").get("raw session.run", [])
        if not sat:
            return
        reps = max(len(v) for v in sat.values())
        fa, ks = med(sat.get(FASTAPI, []), "achieved_rps"), med(sat.get(KSERVE, []), "achieved_rps")
        limit = med(raw, "achieved_rps")
        # Parse + run: a request costs the bare handler's time plus the run's, on one core.
        bare = {p: med(sat.get(f"bare handler {p}", []), "achieved_rps") for p in ("http", "grpc")}
        parse_run = {p: 1 / (1 / b + 1 / limit) if b and limit else 0 for p, b in bare.items()}
        self.p(f"**Saturation** (closed loop, {32} connections; medians of {reps}, range in brackets). "
               "*parse + run* is the limit of a server that parses and runs on this core: "
               "1 / (1/bare handler + 1/raw run) of the same protocol, both measured in this run:", "",
               "| contender | throughput (req/s) | p50 | p99 | p99.9 | × FastAPI | × KServe | % of raw limit | % of parse + run |",
               "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        if raw:
            self.p(f"| raw `session.run` loop (the limit) | {rps(limit)} | {us(med(raw, 'p50_us'))} | "
                   f"{us(med(raw, 'p99_us'))} | {us(med(raw, 'p999_us'))} | — | — | 100% | — |")
        for p in ("http", "grpc"):
            if parse_run[p]:
                self.p(f"| parse + run, {p} (computed) | {rps(parse_run[p])} | | | | | | "
                       f"{100 * parse_run[p] / limit:.0f}% | 100% |")
        for name, rs in sat.items():
            v = med(rs, "achieved_rps")
            lo, hi = min(r["achieved_rps"] for r in rs), max(r["achieved_rps"] for r in rs)
            rng = f" [{rps(lo)}–{rps(hi)}]" if len(rs) > 1 else ""
            x_fa = f"{v / fa:.1f}×" if fa else "—"
            x_ks = f"{v / ks:.1f}×" if ks else "—"
            pct = f"{100 * v / limit:.0f}%" if limit else "—"
            pr = parse_run["grpc" if "grpc" in name else "http"]
            of_pr = "—" if name.startswith("bare") or not pr else f"{100 * v / pr:.0f}%"
            self.p(f"| {name} | {rps(v)}{rng} | {us(med(rs, 'p50_us'))} | {us(med(rs, 'p99_us'))} | "
                   f"{us(med(rs, 'p999_us'))} | {x_fa} | {x_ks} | {pct} | {of_pr} |")
        for r in self.rows:
            if r.get("model") == model and r.get("kind") == "failed":
                self.p(f"| {r['contender']} | failed: {r.get('error', '')} | | | | | | | |")
        self.p("")

    def sweep_points(self, model):
        """contender -> [(target, achieved, p50, p99, p999, n, kept_up)] medians over reps."""
        pts = {}
        for name, rs in self.groups(model, "sweep").items():
            by = defaultdict(list)
            for r in rs:
                by[r["target_rps"]].append(r)
            pts[name] = [(t, med(v, "achieved_rps"), med(v, "p50_us"), med(v, "p99_us"), med(v, "p999_us"),
                          len(v), sum(1 for r in v if r["achieved_rps"] >= 0.95 * t and not r.get("unsent")) > len(v) / 2)
                         for t, v in sorted(by.items())]
        return pts

    def equal_load(self, model, pts):
        """p99 of every contender at the highest rate FastAPI (else KServe) keeps up with."""
        ref = next((n for n in (FASTAPI, KSERVE) if n in pts), None)
        if not ref:
            return
        ok = [t for t, *_, kept in pts[ref] if kept]
        if not ok:
            return
        rate = max(ok)
        self.p(f"**At equal load**: {rps(rate)} req/s fixed rate, the highest rate of the sweep that "
               f"{ref.split(' +')[0]} keeps up with (medians):", "",
               "| contender | achieved (req/s) | p50 | p99 | p99.9 |", "| --- | ---: | ---: | ---: | ---: |")
        for name, ps in pts.items():
            for t, ach, p50, p99, p999, n, kept in ps:
                if t == rate:
                    self.p(f"| {name} | {rps(ach)} | {us(p50)} | {us(p99)} | {us(p999)} |")
        self.p("")

    def sweep_table(self, model, pts):
        self.p("<details><summary>Fixed-rate sweep, every point (medians; open loop, latency from the "
               "intended send time)</summary>", "",
               "| contender | target (req/s) | achieved | p50 | p99 | p99.9 | reps |",
               "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, ps in pts.items():
            for t, ach, p50, p99, p999, n, kept in ps:
                flag = "" if kept else " (behind)"
                self.p(f"| {name} | {rps(t)} | {rps(ach)}{flag} | {us(p50)} | {us(p99)} | {us(p999)} | {n} |")
        self.p("", "</details>", "")

    def internal(self, model):
        rs = self.groups(model, "internal").get("kinfer internal (request - compute)", [])
        if rs:
            self.p(f"Server-internal time (the runtime's own `/admin/stats` after {rps(med(rs, 'target_rps'))} req/s "
                   f"over HTTP on a fresh server, no batching; medians): request span {us(med(rs, 'request_p50_us'))} p50 / "
                   f"{us(med(rs, 'request_p99_us'))} p99, of which `session.run` {us(med(rs, 'compute_p50_us'))} / "
                   f"{us(med(rs, 'compute_p99_us'))}; the difference (queue hand-off, wake-up, output split) "
                   f"{us(med(rs, 'p50_us'))} p50 / {us(med(rs, 'p99_us'))} p99.", "")

    def plot(self, model, pts, dest):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(10, 5.5))
        sat = self.groups(model, "saturation")
        for name, ps in pts.items():
            xs = [ach for _, ach, *_ in ps]
            ys = [p99 / 1000 for _, _, _, p99, *_ in ps]
            style = "--" if "FastAPI" in name or "KServe" in name else "-"
            (line,) = ax.plot(xs, ys, style, marker="o", markersize=3, label=name)
            if name in sat:  # the closed-loop saturation point, same colour, hollow square
                ax.plot([med(sat[name], "achieved_rps")], [med(sat[name], "p99_us") / 1000], "s",
                        mfc="none", color=line.get_color(), markersize=7)
        raw = self.groups(model, "raw").get("raw session.run", [])
        if raw:
            ax.plot([med(raw, "achieved_rps")], [med(raw, "p99_us") / 1000], "k*", markersize=12,
                    label="raw session.run (limit)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("achieved throughput (req/s)")
        ax.set_ylabel("p99 latency (ms), coordinated-omission corrected")
        ax.set_title(f"{MODEL_TITLES.get(model, model)}\nserver on 1 pinned CPU; fixed-rate sweep (dots) and "
                     f"closed-loop saturation (squares), medians")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        fig.savefig(dest, dpi=110)
        plt.close(fig)

    def lifecycle(self):
        hs = [r for r in self.life if r["kind"] == "hotswap"]
        dr = [r for r in self.life if r["kind"] == "swap-drift"]
        if hs:
            h = hs[0]
            self.p(f"**Hot swap under load** ({h['swaps']} swaps — stage, promote, unload through the admin "
                   f"socket — while {rps(h['rate'])} req/s of HTTP/JSON run against the small MLP; "
                   f"`bench/lifecycle.py --only hotswap`):", "",
                   "| figure | value |", "| --- | ---: |",
                   f"| failed requests | {h['failed']} of {h['run']['requests'] + h['run']['errors']} |",
                   f"| swap (stage + promote + unload), median / max | {h['swap_ms_p50']} ms / {h['swap_ms_max']} ms |",
                   f"| requests in flight during a swap / steady | {h['in_window']:,} / {h['steady']:,} |",
                   f"| p50 in swap windows / steady | {us(h['window_p50_us'])} / {us(h['steady_p50_us'])} |",
                   f"| p99 in swap windows / steady | {us(h['window_p99_us'])} / {us(h['steady_p99_us'])} "
                   f"(**{h['p99_ratio']:.2f}×**) |",
                   f"| p99.9 in swap windows / steady | {us(h['window_p999_us'])} / {us(h['steady_p999_us'])} |")
            if "stage_p99_us" in h:
                self.p(f"| of which: staging (load + warm the new session; median {h['stage_ms_p50']} ms), p99 | "
                       f"{us(h['stage_p99_us'])} ({h['in_stage']:,} requests) |",
                       f"| of which: promote + unload only, p99 | {us(h['promote_unload_p99_us'])} "
                       f"({h['in_promote_unload']:,} requests) |")
            self.p("")
        if dr:
            d = dr[0]
            self.p(f"**After {d['swaps']:,} swaps** against the start (same server process; the same "
                   f"{rps(d['before']['target_rps'])} req/s fixed-rate run before and after):", "",
                   "| figure | start | after | ratio |", "| --- | ---: | ---: | ---: |",
                   f"| RSS | {d['rss_start_kib'] / 1024:.1f} MiB | {d['rss_after_kib'] / 1024:.1f} MiB | {d['rss_ratio']:.2f} |",
                   f"| round trip p50 | {us(d['before']['p50_us'])} | {us(d['after']['p50_us'])} | {d['p50_ratio']:.2f} |",
                   f"| round trip p99 | {us(d['before']['p99_us'])} | {us(d['after']['p99_us'])} | {d['p99_ratio']:.2f} |",
                   f"| server-internal p50 / p99 | {us(d['internal_before']['p50_us'])} / {us(d['internal_before']['p99_us'])} | "
                   f"{us(d['internal_after']['p50_us'])} / {us(d['internal_after']['p99_us'])} | |",
                   f"| swaps per second without load | | {d['swaps_per_s']} | |", "")
            if d.get("rss_kib_by_swaps"):
                self.p("RSS along the way (swaps: MiB): " + ", ".join(
                    f"{n}: {kib / 1024:.1f}" for n, kib in d["rss_kib_by_swaps"]) + ".", "")
        cold = [r for r in self.life if r["kind"] == "cold"]
        if cold:
            self.p("**Cold start**: process start → `/v2/health/ready` answers 200, polled every 2 ms, "
                   "server on its pinned CPU (median of the runs; `bench/lifecycle.py --only cold`):", "",
                   "| model | file | kinfer-runtime | FastAPI | KServe |", "| --- | ---: | ---: | ---: | ---: |")
            by = defaultdict(dict)
            sizes = {}
            for r in cold:
                by[r["model"]][r["server"]] = r["ready_ms"]
                sizes[r["model"]] = r["bytes"]
            for m, s in by.items():
                cell = lambda k: f"{s[k]:,.0f} ms" if k in s else "—"
                self.p(f"| {m} | {sizes[m] / 1e6:.1f} MB | {cell('kinfer')} | {cell('fastapi')} | {cell('kserve')} |")
            self.p("")
        rb = [r for r in self.life if r["kind"] == "rollback"]
        if rb:
            r = rb[0]
            self.p(f"**Rollback** (`POST /admin/rollback` on the admin socket, {r['n']} times, alternating "
                   f"directions; `bench/lifecycle.py --only rollback`): the admin call answers in "
                   f"{r['admin_p50_ms']:.2f} ms median ({r['admin_max_ms']:.2f} ms max); the first request "
                   f"answered by the previous version completes {r['first_old_p50_ms']:.2f} ms median "
                   f"({r['first_old_max_ms']:.2f} ms max) after the call was sent — the first request sent "
                   f"after the call returns is always the previous version's "
                   f"(at most {r['requests_until_old_max']} request).", "")

    def operator(self):
        rows = load(self.out / "operator-scale.jsonl")
        self.p("### Operator scale", "")
        if not rows:
            self.p("| figure | value |", "| --- | ---: |",
                   "| operator scale (reconcile p99, re-list of 1,000 InferenceServices, RSS) | "
                   "*placeholder: comes from `bench/operator-scale.sh` (bench-results/operator-scale.jsonl), "
                   "not yet in this run* |", "")
            return
        keys = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        self.p("From `bench/operator-scale.sh` (`bench-results/operator-scale.jsonl`):", "",
               "| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys))
        for r in rows:
            self.p("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
        self.p("")

    def images(self):
        d = Path(os.environ.get("KINFER_CACHE", Path.home() / ".cache" / "kinfer")) / "images"
        tars = sorted(p for p in d.glob("*.tar*")) if d.is_dir() else []
        self.p("### Image sizes", "")
        if not tars:
            self.p("| image | size |", "| --- | ---: |",
                   "| kinfer-runtime, operator, model-watcher | *placeholder: `images/build.sh` (being written) "
                   "writes the tarballs to ~/.cache/kinfer/images; none there at this run* |", "")
            return
        self.p("Tarballs under `~/.cache/kinfer/images` (written by `images/build.sh`); target ≤ 80 MB:", "",
               "| image | size |", "| --- | ---: |")
        for t in tars:
            self.p(f"| `{t.name}` | {t.stat().st_size / 1e6:.1f} MB |")
        self.p("")

    def render(self, plots_dir, plot_prefix):
        self.conditions()
        models = [m for m in MODEL_TITLES if any(r.get("model") == m for r in self.rows)]
        for m in models:
            self.p(f"### {MODEL_TITLES[m]}", "")
            pts = self.sweep_points(m)
            self.saturation(m)
            self.equal_load(m, pts)
            if pts:
                png = plots_dir / f"{m}-p99-vs-throughput.png"
                self.plot(m, pts, png)
                self.p(f"![p99 against throughput, {m}]({plot_prefix}{png.name})", "")
            self.sweep_table(m, pts)
            self.internal(m)
        self.p("### Hot swap, cold start, rollback", "")
        self.lifecycle()
        self.operator()
        self.images()
        return "\n".join(self.lines).rstrip() + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["quick", "full"], default="full")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results")
    p.add_argument("--no-publish", action="store_true", help="full mode: leave docs/ alone")
    a = p.parse_args()
    publish = a.mode == "full" and not a.no_publish
    plots = ROOT / "docs" / "bench" if publish else a.out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    md = Report(a.mode, a.out).render(plots, "bench/" if publish else "plots/")
    (a.out / f"report-{a.mode}.md").write_text(md)
    print(f"wrote {a.out / f'report-{a.mode}.md'} and plots in {plots}")
    if publish:
        doc = ROOT / "docs" / "benchmarks.md"
        text = doc.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            doc.write_text(f"{head}{BEGIN}\n\n{md}\n{END}{tail}")
            print(f"updated the generated part of {doc}")
        else:
            print(f"{doc} has no {BEGIN} … {END} markers: tables left in {a.out / f'report-{a.mode}.md'}")


if __name__ == "__main__":
    main()
