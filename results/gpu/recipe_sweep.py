"""GPU exploration for issue 6: which training recipe moves test NDCG@10 of all-MiniLM-L6-v2 on COVID-QA.

Plain torch loop (AdamW, linear warmup/decay, InfoNCE scale 20, no duplicate texts per batch) so that it runs on
whatever sentence-transformers the device has. Usage: python exp6.py '{"name": ..., ...}' ...
"""

import json
import math
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer

D = ".devcarry/exp/"
beir = json.load(open(D + "beir.json"))
corpus, queries, qrels = beir["corpus"], beir["queries"], beir["qrels"]
ids = list(corpus)
texts = [corpus[i]["text"] for i in ids]
art = {i: corpus[i]["article"] for i in ids}
train_ids = [i for i in ids if corpus[i]["split"] == "train"]
experts = json.load(open(D + "experts.json"))
synthetic = json.load(open(D + "synthetic.json"))
recipe = json.load(open(D + "recipe.json"))
dev = torch.device("cuda")


def load():
    m = SentenceTransformer(".devcarry/minilm", device="cuda")
    m.float()
    return m


@torch.no_grad()
def enc(m, t, bs=512):
    m.eval()
    return torch.tensor(m.encode(t, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True), device=dev)


def ndcg10(ranked, rel):
    dcg = sum(1 / math.log2(r + 2) for r, d in enumerate(ranked[:10]) if d in rel)
    idcg = sum(1 / math.log2(r + 2) for r in range(min(10, len(rel))))
    return dcg / idcg


def evaluate(m, doc=None):
    doc = enc(m, texts) if doc is None else doc
    out = {}
    for split in ("dev", "test"):
        qids = list(qrels[split])
        q = enc(m, [queries[x] for x in qids])
        top = (q @ doc.T).topk(10).indices.cpu().numpy()
        out[split] = float(np.mean([ndcg10([ids[j] for j in top[k]], qrels[split][qid]) for k, qid in enumerate(qids)]))
    return out


def mine(m, pairs, n, how, cand=30, rel_margin=0.05):
    """Negatives for each pair from the training chunks: how = other (other articles) | any | answer (experts: drop chunks with the answer)."""
    doc = enc(m, [corpus[i]["text"] for i in train_ids])
    qs = enc(m, [p["query"] for p in pairs])
    pos_of = {}
    for p in pairs:
        pos_of.setdefault(p["query"], set()).add(p["chunk_id"])
    idx = {c: k for k, c in enumerate(train_ids)}
    sims = qs @ doc.T
    top = sims.topk(cand + 10).indices.cpu().numpy()
    rows = []
    for k, p in enumerate(pairs):
        pos_sim = float(sims[k, idx[p["chunk_id"]]])
        negs = []
        for j in top[k]:
            c = train_ids[j]
            if c in pos_of[p["query"]]:
                continue
            if float(sims[k, j]) > (1 - rel_margin) * pos_sim:
                continue
            if how == "other" and art[c] == art[p["chunk_id"]]:
                continue
            if how == "answer" and p.get("answer") and len(p["answer"]) >= 3 and p["answer"].lower() in corpus[c]["text"].lower():
                continue
            negs.append(c)
            if len(negs) == n:
                break
        if len(negs) == n:
            rows.append({"query": p["query"], "chunk_id": p["chunk_id"], "negatives": negs})
    return rows


def batches(rows, bs, seed):
    rng = random.Random(seed)
    rows = rows[:]
    rng.shuffle(rows)
    out, cur, seen = [], [], set()
    pending = rows
    while pending:
        rest = []
        for r in pending:
            keys = {r["query"], r["chunk_id"], *r.get("negatives", [])}
            if keys & seen:
                rest.append(r)
                continue
            cur.append(r)
            seen |= keys
            if len(cur) == bs:
                out.append(cur)
                cur, seen = [], set()
        if cur and rest == pending:
            out.append(cur)
            cur, seen = [], set()
        elif not rest and cur:
            out.append(cur)
        pending = rest if rest != pending else []
    return out


def embed(m, t, msl):
    f = (m.preprocess if hasattr(m, "preprocess") else m.tokenize)(t)
    f = {k: v.to(dev) for k, v in f.items() if isinstance(v, torch.Tensor)}
    return F.normalize(m(f)["sentence_embedding"], dim=-1)


def train(m, rows, n_neg=0, epochs=1, lr=5e-5, bs=64, scale=20.0, msl=256, bf16=True, warmup=0.1, seed=42):
    torch.manual_seed(seed)
    m.max_seq_length = msl
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.01)
    plan = [b for e in range(epochs) for b in batches(rows, bs, seed + e)]
    total = len(plan)
    wu = int(warmup * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / max(1, wu) if s < wu else max(0.0, (total - s) / max(1, total - wu)))
    m.train()
    t0 = time.time()
    for b in plan:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            q = embed(m, [r["query"] for r in b], msl)
            docs = [corpus[r["chunk_id"]]["text"] for r in b]
            for j in range(n_neg):
                docs += [corpus[r["negatives"][j]]["text"] for r in b]
            d = embed(m, docs, msl)
        logits = scale * q.float() @ d.float().T
        loss = F.cross_entropy(logits, torch.arange(len(b), device=dev))
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return {"steps": total, "sec": round(time.time() - t0, 1), "last_loss": round(loss.item(), 4)}


def source(name):
    return {"experts": experts, "synthetic": synthetic, "both": experts + synthetic}[name]


def set_titles(on):
    global texts
    for i in ids:
        c = corpus[i]
        c.setdefault("raw", c["text"])
        c["text"] = (c["title"] + ". " + c["raw"]) if on and c["title"] and not c["raw"].startswith(c["title"]) else c["raw"]
    texts = [corpus[i]["text"] for i in ids]


def run(cfg):
    set_titles(cfg.get("title", False))
    cfg = {"source": "both", "n_neg": 0, "mine": "recipe", "epochs": 1, "lr": 5e-5, "bs": 64, "scale": 20.0, "msl": 256, "rounds": 1} | cfg
    m = load()
    pairs = source(cfg["source"])
    for rnd in range(cfg["rounds"]):
        if cfg["n_neg"] == 0:
            rows = [dict(p) for p in pairs]
        elif cfg["mine"] == "recipe" and rnd == 0:
            keep = {p["query"] for p in pairs}
            rows = [r for r in recipe if r["query"] in keep]
        else:
            rows = mine(m if rnd else load(), pairs, cfg["n_neg"], cfg["mine"])
        info = train(m, rows, cfg["n_neg"], cfg["epochs"], cfg["lr"], cfg["bs"], cfg["scale"], cfg["msl"], seed=cfg.get("seed", 42))
    res = evaluate(m)
    print(json.dumps({"cfg": cfg, "rows": len(rows), **info, **{k: round(v, 4) for k, v in res.items()}}), flush=True)
    return res


if __name__ == "__main__":
    base = load()
    set_titles(True)
    print(json.dumps({"cfg": "base+title", **{k: round(v, 4) for k, v in evaluate(base).items()}}), flush=True)
    set_titles(False)
    print(json.dumps({"cfg": "base", **{k: round(v, 4) for k, v in evaluate(base).items()}}), flush=True)
    args = [line for a in sys.argv[1:] for line in (open(a[1:]).read().split("\n") if a.startswith("@") else [a]) if line.strip()]
    for a in args:
        try:
            run(json.loads(a))
        except Exception as e:  # keep going
            print("FAIL", a, repr(e), flush=True)
