"""Export the course data (default mode) to plain JSON for GPU exploration runs."""
import json, shutil
from pathlib import Path
from embtune_utils import config, data, models, negatives, train, synth
out = Path(".devcarry/exp"); out.mkdir(parents=True, exist_ok=True)
m = models.load_model()
beir = data.course_data(m.tokenizer)
split = data.doc_split(beir)
json.dump({"corpus": {k: {"text": v["text"], "title": v.get("title", ""), "article": v["metadata"]["doc_id"], "split": split.get(v["metadata"]["doc_id"], "train")} for k, v in beir.corpus.items()},
           "queries": beir.queries, "qrels": beir.qrels}, open(out / "beir.json", "w"))
json.dump(data.expert_pairs(beir, "train"), open(out / "experts.json", "w"))
json.dump(synth.course_pairs(beir, m), open(out / "synthetic.json", "w"))
json.dump(train.course_negatives(beir, m, "both"), open(out / "recipe.json", "w"))
print("ok", len(beir.corpus))
