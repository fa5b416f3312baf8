"""Serving: the measured rows (hardware_db/serving_runs.toml), the constants (hardware_db/serving.toml),
their fit with leave-one-out error, the validation rows, and the best serving configuration.

The physics is kernels.serving; this module turns database rows and spec values into its arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

import hardware_db
from kernels import architecture
from kernels import serving as ks

from .calibration import class_of, serving_constants

RUNS_FILE = "serving_runs.toml"
CONST_FILE = "serving.toml"
PRECISION_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
# the peak that a weight precision computes at: FP8 weights run FP8 GEMMs (vLLM w8a8), 16-bit and
# weight-only INT4/INT8 (w4a16, w8a16: dequantised to 16 bits) run at the 16-bit peak
PRECISION_PEAK = {"bf16": "bf16", "fp16": "fp16", "fp8": "fp8", "int8": "bf16", "int4": "bf16"}
MODEL_DEFAULTS = {"experts": 1, "top_k": 1, "expert_d_ff": 0, "shared_experts": 0, "moe_every": 1,
                  "first_dense_layers": 0, "ffn_matrices": 3, "tied_embeddings": False, "kv_latent_dim": 0,
                  "bias": False}


class ServingDataError(hardware_db.DatabaseError):
    """serving.toml lacks a constant (hardware_db/SCHEMA.md)."""


def model_arrays(model: dict) -> dict:
    """The architecture mapping kernels.serving reads, from [model] keys (params counted from the
    architecture unless given)."""
    m = {**MODEL_DEFAULTS, **{k: v for k, v in model.items() if v is not None}}
    f = {k: float(m[k]) for k in ("layers", "d_model", "heads", "kv_heads", "head_dim", "d_ff", "vocab", "experts",
                                  "top_k", "expert_d_ff", "shared_experts", "moe_every", "first_dense_layers",
                                  "ffn_matrices", "kv_latent_dim")}
    if m.get("params") is not None and not (isinstance(m["params"], float) and math.isnan(m["params"])):
        params = float(m["params"])
    else:
        params, _ = architecture.param_counts(
            f["layers"], f["d_model"], f["heads"], f["kv_heads"], f["head_dim"], f["d_ff"], f["ffn_matrices"],
            f["vocab"], bool(m["tied_embeddings"]), f["experts"], f["top_k"], f["moe_every"], f["first_dense_layers"],
            f["shared_experts"], f["expert_d_ff"], bool(m["bias"]))
        params = float(params)
    routed = float(ks.routed_params(f["layers"], f["d_model"], f["experts"], f["expert_d_ff"], f["ffn_matrices"],
                                    f["moe_every"], f["first_dense_layers"]))
    moe_layers = float(architecture.moe_layer_count(f["layers"], f["experts"], f["moe_every"], f["first_dense_layers"]))
    tied = float(bool(m["tied_embeddings"]))
    always = params - routed - f["vocab"] * f["d_model"] * (1.0 - tied)
    active = always + routed * (f["top_k"] / f["experts"] if f["experts"] > 1 else 0.0)
    return {**f, "params": params, "routed_params": routed, "moe_layers": moe_layers, "active_params": active,
            "tied_embeddings": tied}


def hardware_arrays(db, hw_id: str, precision: str) -> dict:
    si = db.accelerator_si(hw_id, PRECISION_PEAK[precision])  # the kernels' units, usable memory
    if not np.isfinite(si["peak_flops"]):
        si = {**si, "peak_flops": db.peak_tflops(hw_id, "bf16") * 1e12}
    return {k: float(si[k]) for k in ("peak_flops", "hbm_bw_bytes_s", "hbm_bytes", "tdp_w")}


# ---- constants -------------------------------------------------------------------------------------------

def constants_for(db, hw_id: str) -> dict:
    """The serving constants of one accelerator: serving.toml's top-level [name] value, overridden by
    the [class.X] whose ids prefix hw_id (same class names as calibration.toml)."""
    cal = serving_constants(db, hw_id)
    missing = [k for k in ks.CONSTANTS + ("kv_memory_fraction",) if k not in cal]
    if missing:
        raise ServingDataError(f"{CONST_FILE}: no value for {', '.join(missing)} (hardware '{hw_id}')")
    return cal


# ---- the measured rows -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    label: str
    model: str
    kind: str            # "dense" | "moe"
    hardware: str
    gpu: str             # short GPU name for tables
    m: dict
    hw: dict
    req: dict
    measured_j_per_token: float
    measured_power_w: float   # per device
    measured_step_s: float    # batch / output tokens per second
    source: str


def check_runs(doc: dict, db, file=RUNS_FILE) -> None:
    """Schema check of a serving runs file (hardware_db.check_serving_runs; SCHEMA.md)."""
    hardware_db.check_serving_runs(doc, db.accelerators, file)


def load_runs(db) -> list[Run]:
    doc = db.docs[RUNS_FILE]
    check_runs(doc, db)
    out = []
    for r in doc["run"]:
        model = doc["model"][r["model"]]
        m = model_arrays(model)
        prec = r["weight_precision"]
        hw = hardware_arrays(db, r["hardware"], prec)
        n = float(r["devices"])
        req = {"batch": float(r["batch"]), "devices": n, "output_tokens": float(r["output_tokens"]),
               "input_tokens": float(doc["workload"][r["workload"]]["input_tokens"]),
               "weight_bytes": PRECISION_BYTES[prec], "kv_bytes": 2.0}
        gpu = db.accelerator(r["hardware"])["name"].split()[1]
        label = f"{r['model']} {prec} {int(n)}x{gpu} b{r.get('max_num_seqs', int(r['batch']))}"
        out.append(Run(label, r["model"], "moe" if m["experts"] > 1 else "dense", r["hardware"], gpu, m, hw, req,
                       float(r["measured_j_per_token"]), float(r["measured_power_w"]) / n,
                       float(r["batch"]) / float(r["measured_tokens_per_s"]), r["source"]))
    return out


def _stack(runs: list[Run]):
    m = {k: jnp.asarray([r.m[k] for r in runs]) for k in runs[0].m}
    hw = {k: jnp.asarray([r.hw[k] for r in runs]) for k in runs[0].hw}
    req = {k: jnp.asarray([r.req[k] for r in runs]) for k in runs[0].req}
    return m, hw, req


def predict(runs: list[Run], cals: list[dict]) -> dict:
    """GPU-only energy per output token, step time and power of each run (the quantities ML.ENERGY
    measures: GPU energy, no host, no PUE), with each run's constants."""
    m, hw, req = _stack(runs)
    cal = {k: jnp.asarray([c[k] for c in cals]) for k in ks.CONSTANTS}
    step = ks.decode_step(m, hw, req["batch"], req["input_tokens"], req["output_tokens"], req["devices"],
                          req["weight_bytes"], req["kv_bytes"], cal)
    t = step["step_time_s"]
    p = ks.device_power_w(step["step_flops"], step["step_bytes"], t, hw["peak_flops"], hw["hbm_bw_bytes_s"],
                          hw["tdp_w"], cal)
    return {"j_per_token": np.asarray(req["devices"] * p * t / req["batch"]), "step_s": np.asarray(t),
            "power_w": np.asarray(p)}


def validation_rows(db) -> list[dict]:
    """One row per measured run: predicted vs measured GPU energy per output token, with the packaged
    constants of serving.toml."""
    runs = load_runs(db)
    pred = predict(runs, [constants_for(db, r.hardware) for r in runs])
    rows = []
    for r, e in zip(runs, pred["j_per_token"]):
        rows.append({"case": f"serving {r.label}", "quantity": "gpu_j_per_output_token", "unit": "J/token",
                     "predicted": float(e), "published": r.measured_j_per_token,
                     "error_pct": 100.0 * (float(e) - r.measured_j_per_token) / r.measured_j_per_token,
                     "source": r.source, "kind": r.kind, "gpu": r.gpu})
    return rows


# ---- the fit ---------------------------------------------------------------------------------------------

TIME_BOUNDS = {"hbm_eff": (0.3, 0.95), "compute_eff": (0.05, 0.95), "layer_latency_s": (0.0, 1e-3),
               "tp_latency_s": (0.0, 1e-3), "ep_latency_s": (0.0, 1e-3), "seq_overhead_s": (0.0, 1e-3)}
POWER_BOUNDS = {"static_frac": (0.0, 0.9), "flop_energy_frac": (0.0, 5.0), "byte_energy_frac": (0.0, 5.0)}
_SCALE = {"layer_latency_s": 1e-5, "tp_latency_s": 1e-5, "ep_latency_s": 1e-5, "seq_overhead_s": 1e-5}


def fit(db, runs: list[Run] | None = None, leave_one_out: bool = True) -> dict:
    """Least-squares fit of the constants on the measured rows, in two stages that each see a
    measured quantity: the time constants (one set for every GPU) on the measured step time
    (batch / output tokens per second), then the power constants (per accelerator class) on the
    measured power. Residuals are log ratios. Leave-one-out: every row predicted by a fit without it.
    Returns {"constants", "class_constants", "errors", "loo_errors", "classes"}."""
    from scipy.optimize import least_squares

    runs = runs or load_runs(db)
    classes = sorted({class_of(db, r.hardware) for r in runs})
    m, hw, req = _stack(runs)
    cls_idx = np.asarray([classes.index(class_of(db, r.hardware)) for r in runs])
    meas_t = np.asarray([r.measured_step_s for r in runs])
    meas_p = np.asarray([r.measured_power_w for r in runs])
    meas_e = np.asarray([r.measured_j_per_token for r in runs])
    tnames, pnames = ks.TIME_CONSTANTS, ks.POWER_CONSTANTS
    scale = np.asarray([_SCALE.get(k, 1.0) for k in tnames])

    @jax.jit
    def step_of(theta):
        cal = {k: theta[i] * scale[i] for i, k in enumerate(tnames)}
        return ks.decode_step(m, hw, req["batch"], req["input_tokens"], req["output_tokens"], req["devices"],
                              req["weight_bytes"], req["kv_bytes"], cal)

    @jax.jit
    def power_of(phi, flops, nbytes, t):
        p = phi.reshape(len(classes), len(pnames))[cls_idx]
        cal = {k: p[:, i] for i, k in enumerate(pnames)}
        return ks.device_power_w(flops, nbytes, t, hw["peak_flops"], hw["hbm_bw_bytes_s"], hw["tdp_w"], cal)

    lo_t = np.asarray([TIME_BOUNDS[k][0] for k in tnames]) / scale
    hi_t = np.asarray([TIME_BOUNDS[k][1] for k in tnames]) / scale
    lo_p = np.tile([POWER_BOUNDS[k][0] for k in pnames], len(classes))
    hi_p = np.tile([POWER_BOUNDS[k][1] for k in pnames], len(classes))

    def solve(sel, th0=None, ph0=None):
        th0 = np.clip(np.asarray([0.8, 0.5, 10.0, 1.0, 1.0, 5.0]) if th0 is None else th0, lo_t, hi_t)
        rt = lambda th: np.log(np.asarray(step_of(jnp.asarray(th))["step_time_s"])[sel] / meas_t[sel])  # noqa: E731
        th = least_squares(rt, th0, bounds=(lo_t, hi_t), x_scale="jac").x
        s = step_of(jnp.asarray(th))
        args = (s["step_flops"], s["step_bytes"], s["step_time_s"])
        ph0 = np.tile([0.3, 0.5, 0.5], len(classes)) if ph0 is None else ph0
        rp = lambda ph: np.log(np.asarray(power_of(jnp.asarray(ph), *args))[sel] / meas_p[sel])  # noqa: E731
        ph = least_squares(rp, np.clip(ph0, lo_p, hi_p), bounds=(lo_p, hi_p), x_scale="jac").x
        e = np.asarray(req["devices"]) * np.asarray(power_of(jnp.asarray(ph), *args)) * np.asarray(s["step_time_s"]) \
            / np.asarray(req["batch"])
        return th, ph, e

    every = np.ones(len(runs), bool)
    th, ph, e = solve(every)
    loo = np.full(len(runs), np.nan)
    if leave_one_out:
        for i in range(len(runs)):
            sel = every.copy()
            sel[i] = False
            _, _, ei = solve(sel, th, ph)
            loo[i] = ei[i]
    pm = ph.reshape(len(classes), len(pnames))
    return {"constants": {k: float(th[i] * scale[i]) for i, k in enumerate(tnames)},
            "class_constants": {c: {k: float(pm[j, i]) for i, k in enumerate(pnames)} for j, c in enumerate(classes)},
            "classes": classes, "errors": e / meas_e - 1.0, "loo_errors": loo / meas_e - 1.0,
            "kinds": [r.kind for r in runs], "gpus": [r.gpu for r in runs], "labels": [r.label for r in runs]}


def summary(errors, kinds=None) -> dict:
    a = np.abs(np.asarray(errors))
    out = {"n": int(a.size), "median_abs_pct": 100 * float(np.median(a)), "mean_abs_pct": 100 * float(a.mean()),
           "max_abs_pct": 100 * float(a.max())}
    if kinds is not None:
        k = np.asarray(kinds)
        for kind in ("dense", "moe"):
            if (k == kind).any():
                out[f"{kind}_median_abs_pct"] = 100 * float(np.median(a[k == kind]))
    return out


SOURCES = {
    "hbm_eff": "share of HBM bandwidth a decode step streams at",
    "compute_eff": "share of the dense peak (at the weight precision) a step's matmuls reach",
    "layer_latency_s": "fixed time per layer and step (kernel launches, norms, small ops)",
    "tp_latency_s": "time per tensor-parallel all-reduce (2 per dense layer) when devices > 1",
    "ep_latency_s": "time per expert-parallel all-to-all (2 per MoE layer) when devices > 1",
    "seq_overhead_s": "engine time per running sequence and step (scheduling, sampling, detokenising)",
    "static_frac": "static power as a share of TDP: what a device draws busy or idle before any work",
    "flop_energy_frac": "energy per FLOP as a share of TDP x (1 / peak FLOP/s)",
    "byte_energy_frac": "energy per HBM byte as a share of TDP x (1 / HBM bytes/s)",
}


def constants_toml(result: dict, header: str) -> str:
    """serving.toml's fitted tables from a ``fit`` result (kv_memory_fraction kept by the caller)."""
    loo = summary(result["loo_errors"], result["kinds"])
    gpus = sorted(set(result["gpus"]))
    note = (f"fitted by sweep.serving.fit on the {loo['n']} rows of serving_runs.toml ({', '.join(gpus)}; dense and "
            f"MoE): leave-one-out |error| of GPU J per output token median {loo['median_abs_pct']:.1f} %, "
            f"mean {loo['mean_abs_pct']:.1f} %, max {loo['max_abs_pct']:.1f} % (dense median "
            f"{loo.get('dense_median_abs_pct', float('nan')):.1f} %, "
            f"MoE {loo.get('moe_median_abs_pct', float('nan')):.1f} %)")
    out = [header.rstrip(), ""]
    for k, v in result["constants"].items():
        out += [f"[{k}]", f"value = {v:.6g}", f'source = "{note}"', f'notes = "{SOURCES[k]}"', ""]
    cc = result["class_constants"]
    for k in ks.POWER_CONSTANTS:
        mean = float(np.mean([cc[c][k] for c in cc]))
        out += [f"[{k}]", f"value = {mean:.6g}",
                f'source = "mean of the fitted classes ({", ".join(cc)}): an extrapolation for other accelerators"',
                f'notes = "{SOURCES[k]}"', ""]
    for c, vals in cc.items():
        out.append(f"[class.{c}]")
        for k, v in vals.items():
            out.append(f'{k} = {{ value = {v:.6g}, source = "{note}", notes = "{SOURCES[k]}" }}')
        out.append("")
    return "\n".join(out)


# ---- a spec's [serving]: figures and the best configuration ----------------------------------------------

DEVICE_CHOICES = (1, 2, 4, 8)
BATCH_CHOICES = tuple(2 ** i for i in range(11))   # 1 … 1,024
from .names import SERVING_OUTPUTS  # noqa: E402  (the serving figures, in the one registry of names)


def serving_inputs(file, doc: dict, db) -> dict:
    """The [serving] spec (with [model], the hardware and the site) resolved for kernels.serving.
    Errors are SpecErrors naming the file, section and key."""
    from .inputs import host_embodied_kgco2e, device_embodied_kgco2e, host_power, site_row
    from .spec import KEYS, SpecError, check_sections, check_value

    check_sections(file, doc)
    sv = doc.get("serving")
    if sv is None:
        raise SpecError(file, "serving", None, "section is required (input_tokens, output_tokens, requests_per_day)")
    v = {k: (check_value(file, k, doc[KEYS[k].section][k]) if k in doc.get(KEYS[k].section, {}) else KEYS[k].default)
         for k in KEYS}
    for k in ("input_tokens", "output_tokens", "requests_per_day"):
        if v[k] is None:
            raise SpecError(file, "serving", k, "is required")
    hw_id = v["serve_hardware"] or v["hardware"]
    if hw_id is None:
        raise SpecError(file, "serving", "serve_hardware", "is required (or give [cluster] hardware)")
    if hw_id not in db.accelerators:
        sec = "serving" if v["serve_hardware"] else "cluster"
        raise SpecError(file, sec, "serve_hardware" if v["serve_hardware"] else "hardware",
                        f"unknown hardware '{hw_id}'{hardware_db.closest(hw_id, db.accelerators)} "
                        "(see: carbon-sweep hardware list)")
    prec = v["weight_precision"]
    if prec == "fp8" and not np.isfinite(db.peak_tflops(hw_id, "fp8")):
        raise SpecError(file, "serving", "weight_precision", f"'fp8': hardware '{hw_id}' has no FP8 peak "
                        "(allowed here: bf16, fp16, int8, int4)")
    model = {k: v[k] for k in ("name", "layers", "d_model", "heads", "kv_heads", "head_dim", "d_ff", "vocab", "experts",
                               "top_k", "expert_d_ff", "shared_experts", "moe_every", "first_dense_layers",
                               "tied_embeddings", "bias", "params")}
    for k in ("layers", "d_model", "heads", "vocab"):
        if model[k] is None:
            raise SpecError(file, "model", k, "is required to model serving (the KV cache and FLOPs need it)")
    model["kv_heads"] = model["kv_heads"] or model["heads"]
    model["head_dim"] = model["head_dim"] or model["d_model"] / model["heads"]
    model["d_ff"] = model["d_ff"] or 4 * model["d_model"]
    model["expert_d_ff"] = model["expert_d_ff"] or model["d_ff"]
    model["ffn_matrices"] = 3 if v["ffn"] == "swiglu" else 2
    if model["top_k"] > model["experts"]:
        raise SpecError(file, "model", "top_k", f"({model['top_k']}) cannot exceed experts ({model['experts']})")
    if v["region"] is None and (v["carbon_intensity"] is None or v["pue"] is None):
        raise SpecError(file, "site", "region", "is required unless carbon_intensity and pue are given")
    if v["region"] is not None and v["region"] not in db.regions:
        raise SpecError(file, "site", "region", f"unknown region '{v['region']}'"
                        f"{hardware_db.closest(v['region'], db.regions)} (see: carbon-sweep regions list)")
    site = site_row(db, v)
    acc = db.accelerator(hw_id)
    host_id = v["host"] or acc["host"]
    method = v["embodied_method"]
    hw = {**hardware_arrays(db, hw_id, prec), "host_power_w": host_power(db, host_id),
          "devices_per_node": float(acc["devices_per_node"]),
          "device_embodied_kgco2e": _nan0(device_embodied_kgco2e(db, hw_id, method)),
          "host_embodied_kgco2e": _nan0(host_embodied_kgco2e(db, host_id, method))}
    cal = constants_for(db, hw_id)
    mix, draws = request_mix(file, v)
    req = {"input_tokens": float(mix["input_tokens"]), "output_tokens": float(mix["output_tokens"]),
           "requests_per_day": float(v["requests_per_day"]), "weight_bytes": PRECISION_BYTES[prec],
           "kv_bytes": PRECISION_BYTES[v["kv_precision"]], "pue": site["pue"],
           "carbon_intensity_kg_per_kwh": site["carbon_intensity_kg_per_kwh"],
           "power_util": float(v["power_util"]) if v["power_util"] is not None else float(db.default("power_util")),
           "lifespan_years": float(v["lifespan_years"]), "kv_memory_fraction": cal["kv_memory_fraction"]}
    if draws is not None:
        req["mix"] = mix
    return {"model": model, "mix_draws": draws, "m": model_arrays(model), "hw": hw, "hw_id": hw_id, "req": req,
            "cal": cal, "ttft_target_s": v["ttft_target_s"], "tpot_target_s": v["tpot_target_s"],
            "replica_devices": v["replica_devices"], "concurrency": v["concurrency"],
            "objective": v["serve_objective"], "weight_precision": prec, "fitted_class": class_of(db, hw_id) in
            db.docs.get(CONST_FILE, {}).get("class", {})}


MIX_KEYS = ("input_tokens", "output_tokens")


def request_mix(file, v: dict) -> tuple[dict, dict | None]:
    """The request mix of a [serving] spec: (kernels.serving.request_mix moments, the drawn requests
    {input_tokens, output_tokens: (mix_samples,) arrays} or None for one request shape).

    A token count given as a distribution (sweep.uncertainty.distribution: normal, lognormal,
    uniform, triangular, with absolute parameters) is drawn ``mix_samples`` times with jax.random
    from ``mix_seed`` (float64), rounded to whole tokens, at least 0 prompt and 1 output token; a
    number is every request's."""
    from .spec import SpecError
    from .uncertainty import distribution

    dists = {}
    for k in MIX_KEYS:
        if isinstance(v[k], dict):
            d = distribution(file, "serving", k, v[k])
            if d.relative:
                raise SpecError(file, "serving", k, "a request mix's distribution takes its own parameters, "
                                "e.g. {dist = \"lognormal\", median = 800, sigma = 0.9} (rel needs a nominal value)")
            dists[k] = d
    if not dists:
        return ks.request_mix(float(v["input_tokens"]), float(v["output_tokens"])), None
    from kernels import uncertainty as ku

    n = int(v["mix_samples"])
    names = list(dists)
    draws = np.asarray(ku.draw(jax.random.key(int(v["mix_seed"])), jnp.asarray([ku.DIST[dists[k].dist] for k in names]),
                               *(jnp.asarray([dists[k].params[i] for k in names], jnp.float64) for i in range(3)), n))
    got = {}
    for k in MIX_KEYS:
        col = draws[:, names.index(k)] if k in dists else np.full(n, float(v[k]))
        got[k] = np.maximum(np.round(col), 1.0 if k == "output_tokens" else 0.0)
    mix = {k: float(x) for k, x in ks.request_mix(got["input_tokens"], got["output_tokens"], axis=0).items()}
    return mix, got


def _nan0(x):
    return 0.0 if x is None or not np.isfinite(x) else float(x)


def grid(s: dict, devices=None, batches=None) -> dict:
    """kernels.serving.serve over every (devices per replica, batch) of the search, as one
    broadcast call: arrays of shape (len(devices), len(batches)), plus ``ok`` (fits and meets the
    latency targets)."""
    devices = np.asarray(devices if devices is not None else
                         ([s["replica_devices"]] if s["replica_devices"] else DEVICE_CHOICES), float)
    batches = np.asarray(batches if batches is not None else
                         ([s["concurrency"]] if s["concurrency"] else BATCH_CHOICES), float)
    req = {**jax.tree_util.tree_map(jnp.asarray, s["req"]), "devices": jnp.asarray(devices)[:, None],
           "batch": jnp.asarray(batches)[None, :]}
    raw = ks.serve(s["m"], s["hw"], req, s["cal"])
    shape = (devices.size, batches.size)
    out = {k: np.broadcast_to(np.asarray(v), shape).copy() for k, v in raw.items()}
    ttft = out["ttft_s"]
    if s.get("mix_draws") is not None:  # each drawn request's own prefill, queued behind one step
        inp = jnp.asarray(s["mix_draws"]["input_tokens"])[:, None, None]
        pre = ks.prefill_time_s(s["m"], s["hw"], inp, jnp.asarray(devices)[:, None], s["req"]["weight_bytes"], s["cal"])
        out["ttft_p50_s"], out["ttft_p95_s"] = np.quantile(np.asarray(pre) + out["step_time_s"][None], [0.5, 0.95],
                                                           axis=0)
        ttft = out["ttft_p95_s"]  # a request mix meets the target when 95 % of its requests do
    ok = out["fits"].copy()
    if s["ttft_target_s"]:
        ok &= ttft <= s["ttft_target_s"]
    if s["tpot_target_s"]:
        ok &= out["tpot_s"] <= s["tpot_target_s"]
    out.update(ok=ok, devices=np.broadcast_to(devices[:, None], ok.shape),
               batches=np.broadcast_to(batches[None, :], ok.shape))
    return out


def best(s: dict, g: dict | None = None) -> dict:
    """The configuration of least gCO2e (or Wh) per request among those that fit and meet the
    latency targets; ``feasible`` False (and the least-latency one) when none does."""
    g = g or grid(s)
    score = g["gco2e_per_request"] if s["objective"] == "co2e" else g["wh_per_request"]
    feasible = bool(g["ok"].any())
    if feasible:
        i = np.unravel_index(np.argmin(np.where(g["ok"], score, np.inf)), score.shape)
    else:  # nothing meets the targets: report the fastest configuration that fits, or the smallest one
        fits = g["fits"]
        t = np.where(fits, g["tpot_s"], np.inf)
        i = np.unravel_index(np.argmin(t), t.shape) if fits.any() else (0, 0)
    out = {"feasible": feasible, "replica_devices": int(g["devices"][i]), "concurrency": int(g["batches"][i])}
    for k in SERVING_OUTPUTS:
        if k in g:
            out[k] = float(g[k][i])
    out["fits"] = bool(g["fits"][i])
    out["max_batch"] = int(g["max_batch"][i])
    out["replicas"] = int(g["replicas"][i])
    draws = s.get("mix_draws")
    if draws is not None:  # the spread over the mix: a request is charged the decode steps it holds a slot for
        share = draws["output_tokens"] / s["req"]["output_tokens"]
        for k in ("wh_per_request", "gco2e_per_request"):
            for q, v in zip(("p5", "p50", "p95"), np.quantile(out[k] * share, [0.05, 0.5, 0.95])):
                out[f"{k}_{q}"] = float(v)
        out.update(input_tokens_mean=s["req"]["input_tokens"], output_tokens_mean=s["req"]["output_tokens"],
                   mix_samples=int(len(share)))
    return out


def lifecycle(s: dict, pick: dict, training_tco2e: float | None, serving_days: float) -> dict:
    """Serving over ``serving_days`` and the break-even with training (requests and days after which
    serving has emitted as much as the training run)."""
    total = pick["tco2e_per_day"] * serving_days
    out = {"serving_days": serving_days, "serving_tco2e": total,
           "serving_energy_mwh": pick["energy_kwh_per_day"] * serving_days / 1000.0}
    if training_tco2e:
        per_req_t = pick["gco2e_per_request"] / 1e6
        out["breakeven_requests"] = training_tco2e / per_req_t
        out["breakeven_days"] = training_tco2e / pick["tco2e_per_day"] if pick["tco2e_per_day"] > 0 else float("inf")
    return out
