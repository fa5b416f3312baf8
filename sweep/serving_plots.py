"""Figures of `carbon-sweep serve --out`: energy per token against batch and against latency, and
dense against MoE (the spec's model and the measured ML.ENERGY rows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import serving


def write_figures(s: dict, db, out_dir) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    devices = [s["replica_devices"]] if s["replica_devices"] else list(serving.DEVICE_CHOICES)
    g = serving.grid(s, devices=devices, batches=serving.BATCH_CHOICES)
    files = []

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, n in enumerate(devices):
        fits = g["fits"][i]
        if not fits.any():
            continue
        x = g["batches"][i][fits]
        a.plot(x, g["gpu_j_per_output_token"][i][fits], "o-", label=f"{n} device(s)/replica")
        b.plot(1e3 * g["tpot_s"][i][fits], g["gpu_j_per_output_token"][i][fits], "o-", label=f"{n} device(s)/replica")
    a.set(xscale="log", yscale="log", xlabel="batch (concurrent sequences)", ylabel="accelerator J per output token",
          title="Energy per token against batch")
    b.set(xscale="log", yscale="log", xlabel="time per output token (ms)", ylabel="accelerator J per output token",
          title="Energy per token against latency")
    if s["tpot_target_s"]:
        b.axvline(1e3 * s["tpot_target_s"], color="k", ls="--", lw=1, label="TPOT target")
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{s['model'].get('name') or 'model'} on {s['hw_id']} ({s['weight_precision']} weights), "
                 f"{s['req']['input_tokens']:.0f} in / {s['req']['output_tokens']:.0f} out tokens", fontsize=10)
    fig.tight_layout()
    files.append(str(out / "energy_per_token_batch_latency.png"))
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)

    # dense vs MoE: the measured rows (points) and the model (lines), per model and GPU
    runs = serving.load_runs(db)
    pred = serving.predict(runs, [serving.constants_for(db, r.hardware) for r in runs])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, kind in zip(axes, ("dense", "moe")):
        keys = sorted({(r.model, r.gpu, r.req["devices"]) for r in runs if r.kind == kind})
        for j, key in enumerate(keys):
            idx = [i for i, r in enumerate(runs) if (r.model, r.gpu, r.req["devices"]) == key]
            bt = [runs[i].req["batch"] for i in idx]
            c = f"C{j % 10}"
            ax.plot(bt, [runs[i].measured_j_per_token for i in idx], "o", color=c,
                    label=f"{key[0]} {int(key[2])}x{key[1]}")
            ax.plot(bt, [pred["j_per_token"][i] for i in idx], "-", color=c, alpha=0.7)
        ax.set(xscale="log", yscale="log", xlabel="batch", title=f"{kind}: measured (points) and model (lines)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    axes[0].set_ylabel("GPU J per output token (ML.ENERGY, LM Arena chat)")
    fig.tight_layout()
    files.append(str(out / "dense_vs_moe_measured.png"))
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)
    return files
