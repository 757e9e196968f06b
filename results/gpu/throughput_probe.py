"""Issue 9 probe (run on an H100 with PYTHONPATH=repo root; --model copy in .devcarry/minilm): where does the bare bf16 loop lose against ~7,600 pairs/s? Variants timed on one GPU."""
import time, sys
import torch
sys.path.insert(0, ".")
from embtune_utils import losses, models
sys.path.insert(0, "benchmarks")
import train_throughput as tt

tt.MODEL = ".devcarry/minilm"
B, STEPS, WARM = 512, 15, 3
rows = tt.course_pairs((STEPS + WARM) * B)

def run(label, dtype_weights=None, autocast=True, attn=None, maxlen=256, compile_=False, fwd_only=False):
    model = models.load_model(tt.MODEL, verbose=False)
    model.max_seq_length = maxlen
    am = model[0].auto_model
    if attn:
        am.set_attn_implementation(attn) if hasattr(am, "set_attn_implementation") else setattr(am.config, "_attn_implementation", attn)
    if dtype_weights is not None:
        model.to(dtype_weights)
    loss_fn = losses.make_loss("mnrl", model)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    tok = model.preprocess
    batches = []
    for s in range(0, (STEPS + WARM) * B, B):
        ch = rows[s:s + B]
        batches.append([{k: v.cuda() for k, v in tok([r[c] for r in ch]).items() if torch.is_tensor(v)} for c in ("anchor", "positive")])
    lens = [b[1]["input_ids"].shape[1] for b in batches]
    fwd = model
    if compile_:
        model[0].auto_model = torch.compile(am)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast)
    def step(f):
        with ctx:
            l = loss_fn(f, None)
        if not fwd_only:
            l.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    for f in batches[:WARM]: step(f)
    torch.cuda.synchronize(); t = time.perf_counter()
    for f in batches[WARM:]: step(f)
    torch.cuda.synchronize(); dt = time.perf_counter() - t
    print(f"{label:<40} {STEPS*B/dt:8.0f} pairs/s  attn={am.config._attn_implementation} poslen={sum(lens)/len(lens):.0f} anclen={batches[0][0]['input_ids'].shape[1]}", flush=True)

import gc
for label, kw in [("fp32", {"autocast": False}), ("autocast bf16", {}), ("autocast bf16, eager attn", {"attn": "eager"}),
                  ("bf16 weights, no autocast", {"dtype_weights": torch.bfloat16, "autocast": False}),
                  ("autocast bf16, fwd only", {"fwd_only": True}), ("autocast bf16, max len 128", {"maxlen": 128}),
                  ("autocast bf16, torch.compile", {"compile_": True})]:
    try:
        run(label, **kw)
    except Exception as e:
        print(label, "failed:", type(e).__name__, str(e)[:150], flush=True)
    gc.collect(); torch.cuda.empty_cache()
    print("  peak GiB", round(torch.cuda.max_memory_allocated() / 2**30, 1), flush=True); torch.cuda.reset_peak_memory_stats()
