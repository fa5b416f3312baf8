"""Figures of `carbon-sweep serve --out`: energy per token against batch and against latency, and
dense against MoE (the spec's model and the measured ML.ENERGY rows); with a request mix, the
distribution of energy per request and time to first token over the mix at the chosen configuration."""

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

    if s.get("mix_draws") is not None:
        files.append(_mix_figure(plt, s, out))

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


def _mix_figure(plt, s: dict, out: Path) -> str:
    """Energy per request and time to first token over the request mix, at the chosen configuration."""
    pick = serving.best(s)
    d = s["mix_draws"]
    g = serving.grid(s, devices=[pick["replica_devices"]], batches=[pick["concurrency"]])
    wh = pick["wh_per_request"] * d["output_tokens"] / s["req"]["output_tokens"]
    from kernels import serving as ks

    ttft = np.asarray(ks.prefill_time_s(s["m"], s["hw"], d["input_tokens"], float(pick["replica_devices"]),
                                        s["req"]["weight_bytes"], s["cal"])) + g["step_time_s"][0, 0]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    bins = np.geomspace(max(wh.min(), 1e-9), wh.max(), 40)
    a.hist(wh, bins=bins, color="C0", alpha=0.8)
    for q, ls in (("p5", ":"), ("p50", "--"), ("p95", ":")):
        a.axvline(pick[f"wh_per_request_{q}"], color="k", ls=ls, lw=1,
                  label=f"{q} {pick[f'wh_per_request_{q}']:.3g} Wh")
    a.axvline(pick["wh_per_request"], color="C3", lw=1.5, label=f"mean {pick['wh_per_request']:.3g} Wh")
    a.set(xscale="log", xlabel="facility Wh per request", ylabel="requests drawn",
          title="Energy per request over the mix")
    b.hist(1e3 * ttft, bins=np.geomspace(1e3 * ttft.min(), 1e3 * ttft.max() * 1.001, 40), color="C2", alpha=0.8)
    b.axvline(1e3 * pick["ttft_p95_s"], color="k", ls=":", lw=1, label=f"p95 {1e3 * pick['ttft_p95_s']:.3g} ms")
    if s["ttft_target_s"]:
        b.axvline(1e3 * s["ttft_target_s"], color="C3", ls="--", lw=1, label="TTFT target")
    b.set(xscale="log", xlabel="time to first token (ms)", ylabel="requests drawn",
          title="Time to first token over the mix")
    for ax in (a, b):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{s['model'].get('name') or 'model'} on {pick['replica_devices']} x {s['hw_id']}, batch "
                 f"{pick['concurrency']}: {len(wh):,} requests drawn (mean {s['req']['input_tokens']:.0f} in / "
                 f"{s['req']['output_tokens']:.0f} out tokens)", fontsize=10)
    fig.tight_layout()
    path = str(out / "request_mix.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
