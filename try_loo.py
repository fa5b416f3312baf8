import sys, time, tomllib, numpy as np, jax, json
jax.config.update("jax_enable_x64", True)
import hardware_db
from sweep import calibrate as C
db = hardware_db.load()
doc = tomllib.load(open('hardware_db/throughput_runs_modern.toml','rb'))
runs, skipped = C.load_runs(doc, db, 'modern')
variants = {
 'A': (("attention_eff","gemm_eff_fp8","grouped_gemm_eff","overlap_eff","layer_latency_s","moe_layer_latency_s"), C.DEFAULT_SHARED),
 'B': (C.DEFAULT_FIT, C.DEFAULT_SHARED),
 'D': (("hbm_eff","gemm_eff_fp8","grouped_gemm_eff","overlap_eff","layer_latency_s","moe_layer_latency_s"), C.DEFAULT_SHARED),
 'E': (("hbm_eff","attention_eff","gemm_eff_fp8","grouped_gemm_eff","overlap_eff","layer_latency_s","moe_layer_latency_s"), C.DEFAULT_SHARED),
 'F': (("hbm_eff","attention_eff","gemm_eff_fp8","grouped_gemm_eff","overlap_eff","layer_latency_s","moe_layer_latency_s"), ("hbm_eff","attention_eff","grouped_gemm_eff","overlap_eff","layer_latency_s","moe_layer_latency_s")),
 'S': (("attention_eff","gemm_eff_fp8","grouped_gemm_eff","overlap_eff","layer_latency_s","moe_layer_latency_s","moe_sync_latency_s"), C.DEFAULT_SHARED+("moe_sync_latency_s",)),
 'S2': (("attention_eff","gemm_eff_fp8","overlap_eff","layer_latency_s","moe_layer_latency_s","moe_sync_latency_s"), C.DEFAULT_SHARED+("moe_sync_latency_s",)),
 'S3': (("attention_eff","hbm_eff","overlap_eff","layer_latency_s","moe_layer_latency_s","moe_sync_latency_s"), C.DEFAULT_SHARED+("moe_sync_latency_s",)),
 'S4': (("attention_eff","gemm_eff_fp8","overlap_eff","layer_latency_s","moe_layer_latency_s","moe_sync_latency_s"), C.DEFAULT_SHARED+("moe_sync_latency_s","attention_eff")),
 'S8': (("attention_eff","gemm_eff_fp8","overlap_eff","moe_layer_latency_s","moe_sync_latency_s"), C.DEFAULT_SHARED+("moe_sync_latency_s",)),
 'S9': (("attention_eff","gemm_eff_fp8","overlap_eff","layer_latency_s","moe_sync_latency_s"), C.DEFAULT_SHARED+("moe_sync_latency_s",)),
 'C': (("attention_eff","gemm_eff_fp8","grouped_gemm_eff","layer_latency_s","moe_layer_latency_s"), C.DEFAULT_SHARED),
}
for name in sys.argv[1:]:
    cons, shared = variants[name]
    t=time.time()
    res = C.fit(db, runs, constants=cons, shared=shared, leave_one_out=True)
    sm = res['summary']
    print(name, f"{time.time()-t:.0f}s", {g: (round(sm[g]['error']['mean'],1), round(sm[g]['error']['max'],1), round(sm[g]['loo_error']['mean'],1), round(sm[g]['loo_error']['max'],1)) for g in ('all','dense','moe')})
    print({k:{c: round(v,4) for c,v in d.items()} for k,d in res['constants'].items()})
    json.dump(res, open(f'/tmp/res_{name}.json','w'), indent=1)
