"""The benchmark's text tables (end to end, per kernel), a record's summary, and the optional bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def format_table(rows: list[dict[str, Any]]) -> str:
    """The end-to-end rows as a fixed-width text table."""
    head = (f"{'impl':<28} {'dtype':<9} {'shape':<16} {'real tok':>9} {'median ms':>10} {'tok/s':>11} "
            f"{'vs hf':>6} {'TFLOP/s':>8} {'of GEMM':>7} {'act MiB':>8} {'max err':>9} {'ok':>3} "
            f"{'1st s':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = f"{r['batch']}x{r['seq']} {r['lengths'][:3]}"
        if r.get("stream_batches", 1) > 1:
            shape += f" x{r['stream_batches']}"
        if r["status"] != "ok":
            lines.append(f"{r['impl']:<28} {r['dtype']:<9} {shape:<16} {r['status']}")
            continue
        ratio = "-" if r["ratio_vs_transformers"] is None else f"{r['ratio_vs_transformers']:.2f}"
        peak = "-" if r["peak_activation_mb"] is None else f"{r['peak_activation_mb']:.0f}"
        err = "-" if r["max_abs_err"] is None else f"{r['max_abs_err']:.1e}"
        ok = "-" if r["agrees"] is None else ("yes" if r["agrees"] else "NO")
        of_gemm = "-" if r.get("fraction_of_gemm_peak") is None else f"{r['fraction_of_gemm_peak']:.0%}"
        first = r["first_call_s"] + r.get("first_pass_s", 0.0)  # compilation, capture, first-use checks
        lines.append(f"{r['impl']:<28} {r['dtype']:<9} {shape:<16} {r['real_tokens']:>9} "
                     f"{r['median_ms']:>10.2f} {r['tokens_per_s']:>11.0f} {ratio:>6} "
                     f"{r.get('model_tflop_per_s', 0.0):>8.1f} {of_gemm:>7} {peak:>8} {err:>9} {ok:>3} "
                     f"{first:>7.1f}")
        if r.get("graphs", "replayed") != "replayed":
            lines.append(f"  ^ {r['graphs']}")
    return "\n".join(lines)


def format_kernel_table(rows: list[dict[str, Any]]) -> str:
    """The per-kernel rows as a fixed-width text table."""
    head = (f"{'op':<28} {'dtype':<9} {'shape':<18} {'median ms':>10} {'vs eager':>9} {'GB/s':>8} "
            f"{'of copy':>8} {'TFLOP/s':>8} {'vs SDPA':>8}")
    lines = [head, "-" * len(head)]

    def cell(r: dict[str, Any], key: str, spec: str) -> str:
        return "-" if r.get(key) is None else format(r[key], spec)

    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['op']:<28} {r['dtype']:<9} {r['shape']:<18} {r['status']}")
            continue
        lines.append(f"{r['op']:<28} {r['dtype']:<9} {r['shape']:<18} {r['median_ms']:>10.3f} "
                     f"{cell(r, 'speedup_vs_eager', '.2f'):>9} {cell(r, 'gb_per_s', '.0f'):>8} "
                     f"{cell(r, 'fraction_of_copy_bandwidth', '.0%'):>8} {cell(r, 'tflop_per_s', '.1f'):>8} "
                     f"{cell(r, 'speedup_vs_sdpa_flash', '.2f'):>8}")
    return "\n".join(lines)


def summary(record: dict[str, Any]) -> str:
    """A whole JSON record as text: the GEMM peak, whether the run finished, both tables."""
    lines = [f"GEMM peak {dtype}: {peak['tflop_per_s']:.0f} TFLOP/s"
             for dtype, peak in record.get("gemm_peak", {}).items()]
    if not record.get("complete", True):
        lines.append("INCOMPLETE: the run was cut off; these are the cases it finished")
    if record.get("kernels"):
        lines.append(format_kernel_table(record["kernels"]))
    lines.append(format_table(record["rows"]))
    return "\n".join(lines)


def write_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """A bar chart of real tokens/s per case and implementation (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib, which is not installed: pip install matplotlib"
                           ) from None
    ok = [r for r in rows if r["status"] == "ok"]
    cases = list(dict.fromkeys(f"{r['dtype']} {r['batch']}x{r['seq']} {r['lengths']}" for r in ok))
    impls = list(dict.fromkeys(r["impl"] for r in ok))
    width = 0.8 / max(1, len(impls))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(cases) * max(1, len(impls)) * 0.5), 4.5))
    for i, impl in enumerate(impls):
        values = {f"{r['dtype']} {r['batch']}x{r['seq']} {r['lengths']}": r["tokens_per_s"]
                  for r in ok if r["impl"] == impl}
        ax.bar([c + i * width for c in range(len(cases))], [values.get(c, 0.0) for c in cases], width,
               label=impl)
    ax.set_xticks([c + width * (len(impls) - 1) / 2 for c in range(len(cases))], cases, rotation=30,
                  ha="right", fontsize=8)
    ax.set_ylabel("real tokens / s")
    ax.set_title("RemBERT forward throughput")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
