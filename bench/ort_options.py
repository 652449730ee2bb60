#!/usr/bin/env python3
"""What makes the ORT engine faster on this CPU? One medium config's backbone graph at 2 threads,
interleaved by the bench harness: ORT with spin-waiting on / off, ORT after onnxruntime's MMDiT
transformer-optimizer fusions (parity printed), torch eager and torch.compile; then each alone.

    python bench/ort_options.py medium-sd3 > bench/results/ort_options_medium-sd3.txt   # ~5 min
"""
import copy, sys, time, tempfile
from pathlib import Path
import torch
from amo_engine.bench.zoo import bench_model
from amo_engine import timing
from amo_engine.engine.export import ExportConfig, export_engine
from amo_engine.engine.folder import open_engine
from amo_engine.engine.backends.ort import OrtBackend
from amo_engine.model.inputs import sample_feeds

config = sys.argv[1] if len(sys.argv) > 1 else "medium-sd3"
torch.set_num_threads(2)
model = bench_model(config)
fam = model.family
h, w = model.default_size
tmp = Path(tempfile.mkdtemp())
export_engine(model, ExportConfig(out=tmp / "amo", height=h, width=w, log=False))
eng = open_engine(tmp / "amo")
feeds = sample_feeds(eng.spec)
arms = {}
for spin in (True, False):
    b = OrtBackend(eng, threads=2, spinning=spin)
    arms[f"ort-spin{int(spin)}"] = (lambda b=b: b(feeds))
# mmdit fusion
from onnxruntime.transformers.optimizer import optimize_model
cfgt = model.pipe.transformer.config
heads = cfgt.num_attention_heads
hidden = heads * cfgt.attention_head_dim
t = time.perf_counter()
opt = optimize_model(str(tmp / "amo" / "model.onnx"), model_type="mmdit", num_heads=heads, hidden_size=hidden, opt_level=0)
print("fusion time", time.perf_counter() - t, "ops:", {k: v for k, v in sorted(opt.get_operator_statistics().items()) if v})
fused_dir = tmp / "fused"
import shutil
shutil.copytree(tmp / "amo", fused_dir)
opt.save_model_to_file(str(fused_dir / "model.onnx"))
import onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 2
sess = ort.InferenceSession(str(fused_dir / "model.onnx"), so, providers=["CPUExecutionProvider"])
np_feeds = {i.name: feeds[i.name].numpy() for i in sess.get_inputs()}
arms["ort-mmdit-fused"] = lambda: sess.run(None, np_feeds)
out_a = OrtBackend(eng, threads=2)(feeds); out_b = sess.run(None, np_feeds)
print("fused parity velocity", float((out_a["velocity"] - torch.from_numpy(out_b[0])).abs().max()), "attn", float((out_a["attn"] - torch.from_numpy(out_b[1])).abs().max()))
stock = copy.deepcopy(model.pipe.transformer)
from amo_engine.bench.zoo import stock_feeds
sf = stock_feeds(feeds)
def eager():
    with torch.inference_mode(): stock(**sf, return_dict=False)
comp = torch.compile(copy.deepcopy(stock))
def compiled():
    with torch.inference_mode(): comp(**sf, return_dict=False)
compiled()
arms["eager"] = eager; arms["compile"] = compiled
watch = timing.ContentionWatch(2); watch.sample_before()
res = timing.interleaved(arms, 8, watch, warmup=2)
print(config, timing.cpu_facts()["name"], "GEMM", round(timing.gemm_gflops()), "verdict", watch.verdict()["contended"], watch.verdict()["reasons"])
for k, v in res.items():
    s = v.summary(set(watch.verdict()["contended_rounds"]))
    print(f"{k:18s} p50 {1000*s['p50']:8.1f} ms  min {1000*s['min']:8.1f}  cpu/wall {s['cpu_per_wall']:.2f}")
for k in arms:
    if k.startswith("ort"):
        print(k, "alone", round(1000 * timing.alone(arms[k], 6)["p50"], 1))
print("eager alone", round(1000 * timing.alone(eager, 6)["p50"], 1), "compile alone", round(1000 * timing.alone(compiled, 6)["p50"], 1))
