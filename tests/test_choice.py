"""`embtune run` deploys the retriever it measured best on dev: BM25 where words decide, dense where meaning does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embtune_utils import cli, data, pipeline

# Meaning without shared words: each question paraphrases its passage with none of its content words (after
# stemming and stop words), so BM25 has nothing to match and a dense model has everything.
PARAPHRASES = [
    ("Felines frequently doze through warm afternoons on sunny windowsills.", "When do cats sleep?"),
    ("Physicians recommend drinking plenty of water when running a fever.", "What should a sick person consume?"),
    ("The automobile would not start because its battery was completely drained.", "Why won't my car turn on?"),
    ("Heavy snowfall closed every mountain pass for the entire week.", "Why were roads through the peaks blocked?"),
    ("Bees gather nectar from blossoms to produce honey.", "How do insects make the sweet syrup found in hives?"),
    ("The surgeon set the broken bone and applied a plaster cast.", "How did the doctor treat the fractured arm?"),
    ("Interest rates climbed, so mortgages became more expensive.", "Why did home loans cost more?"),
    ("The toddler cried loudly until his mother picked him up.", "What calmed the upset child?"),
    ("Wolves hunt in packs across the frozen tundra.", "Where do wild canines chase prey in groups?"),
    ("She repaired the leaking faucet with a new rubber washer.", "How was the dripping tap fixed?"),
    ("Volcanic eruptions can blanket nearby towns in thick ash.", "What do exploding peaks do to villages?"),
    ("The orchestra performed a symphony by Beethoven last night.", "Which composer did musicians play yesterday?"),
    ("Tomatoes ripen faster when stored beside bananas.", "How can I make my red fruit mature more quickly?"),
    ("The spacecraft landed safely on the lunar surface.", "Did the rocket touch down on the moon?"),
    ("Unpaid invoices are piling up at the small bakery.", "Is the little pastry shop owed money by customers?"),
    ("Marathon runners replenish electrolytes with salty snacks.", "What do athletes eat to restore minerals?"),
    ("The judge sentenced the thief to three years in prison.", "How long will the burglar be locked up?"),
    ("Glaciers are shrinking as global temperatures rise.", "Why is ice melting in polar regions?"),
    ("The puppy chewed through the leather couch cushions.", "What did the young dog destroy on the sofa?"),
    ("Commuters endured long delays after the subway flooded.", "Why were train passengers late to work?"),
    ("Farmers irrigate wheat fields during dry summers.", "How do growers water grain crops in drought?"),
    ("The novelist finished her manuscript after a decade of writing.", "How long did the author spend on the book?"),
    ("Owls hunt mice silently at night.", "Which nocturnal birds catch rodents without noise?"),
    ("The chef seasoned the soup with garlic and thyme.", "What herbs did the cook add to the broth?"),
]

# Words that only BM25 sees: 90 words of a different COVID-QA article each, closed by an archive code, asked for
# by that code. BM25 matches the code exactly; in a dense embedding the code is a few of ~200 pieces (top-1 accuracy
# of the base model: 2 in 24, measured).
CODES = [f"{a}{b}{n}" for a, b, n in zip("bdfghjklmnpqrstvwxzbdfgh", "qxzvkwjyqxzvkwjyqxzvkwjy", range(4711, 4735))]


def archive_records() -> list[tuple[str, str]]:
    """(passage, question) pairs: article text plus its code, and the code alone."""
    articles = data.load_covidqa()[:24]
    return [(" ".join(a["text"].split()[200:290]) + f" Archive record {c}.", f"archive record {c}")
            for a, c in zip(articles, CODES)]  # fmt: skip


def write_corpus(folder: Path, pairs: list[tuple[str, str]]) -> Path:
    """A BEIR folder: one passage per pair, its question relevant to it; train, dev and test get a third each."""
    corpus = {f"d{i}": {"title": "", "text": text} for i, (text, _) in enumerate(pairs)}
    queries = {f"q{i}": question for i, (_, question) in enumerate(pairs)}
    splits = ("train", "dev", "test")
    qrels = {split: {f"q{i}": {f"d{i}": 1} for i in range(len(pairs)) if i % 3 == n} for n, split in enumerate(splits)}
    return data.write_beir(data.Beir(corpus, queries, qrels), folder)


def run(folder: Path, out: Path) -> dict:
    """`embtune run` in fast mode on the corpus's labelled questions; returns metrics.json."""
    args = ["run", "--corpus", str(folder), "--out", str(out), "--mode", "fast", "--train-queries", "real"]
    args += ["--epochs", "2"]  # the choice, not the training, is under test here
    assert cli.main(args) == 0
    return json.loads((out / "metrics.json").read_text())


def top_hit(out: Path, question: str, capsys) -> str:
    """The id of `embtune search`'s first hit, from the printed lines."""
    capsys.readouterr()  # what the run printed
    assert cli.main(["search", question, "--artifact", str(out), "-k", "1"]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    return line.split("[", 1)[1].split("]", 1)[0]


def test_bm25_wins_on_codes_and_the_run_serves_bm25(tmp_path, capsys):
    metrics = run(write_corpus(tmp_path / "archive", archive_records()), tmp_path / "out")
    dev = metrics["dev"]["ndcg@10"]
    assert dev["bm25"] > max(dev["base"], dev["finetuned"]) + 0.2, dev  # the corpus is what it claims to be
    assert metrics["chosen"] in ("bm25", "hybrid", "hybrid weighted"), metrics["chosen"]
    assert metrics["deployed"]["minus_bm25"]["hi"] >= 0  # never significantly worse than BM25
    meta = json.loads((tmp_path / "out" / "index" / "metadata.json").read_text())
    assert meta["retriever"]["served"] == pipeline.SERVES[metrics["chosen"]] and (tmp_path / "out/index/bm25").is_dir()
    assert top_hit(tmp_path / "out", f"archive record {CODES[2]}", capsys) == "d2"  # a test question (i % 3 == 2)
    assert "**Use " in (tmp_path / "out" / "report.md").read_text().split("\n")[2]


def test_dense_wins_on_paraphrases_and_the_run_serves_dense(tmp_path, capsys):
    metrics = run(write_corpus(tmp_path / "paraphrases", PARAPHRASES), tmp_path / "out")
    dev = metrics["dev"]["ndcg@10"]
    assert max(dev["base"], dev["finetuned"]) > dev["bm25"] + 0.2, dev
    assert metrics["chosen"] in ("base", "finetuned"), metrics["chosen"]
    meta = json.loads((tmp_path / "out" / "index" / "metadata.json").read_text())
    assert meta["retriever"]["served"] == "dense" and not (tmp_path / "out/index/bm25").exists()
    assert (tmp_path / "out" / meta["model"].removeprefix("../") / "modules.json").is_file()
    assert top_hit(tmp_path / "out", PARAPHRASES[5][1], capsys) == "d5"  # a test question


@pytest.mark.parametrize(
    ("dev", "chosen"),
    [
        ({"bm25": 0.50, "base": 0.40, "finetuned": 0.45, "hybrid": 0.52, "hybrid weighted": 0.55}, "hybrid weighted"),
        ({"bm25": 0.5502, "base": 0.4, "finetuned": 0.45, "hybrid": 0.52, "hybrid weighted": 0.5499}, "bm25"),
        ({"bm25": 0.30, "base": 0.61, "finetuned": 0.6104, "hybrid": 0.55, "hybrid weighted": 0.6101}, "base"),
        ({"bm25": 0.30, "base": 0.50, "finetuned": 0.6104, "hybrid": 0.55, "hybrid weighted": 0.6101}, "finetuned"),
    ],
)
def test_choice_takes_the_best_dev_score_and_the_simpler_of_equals(dev, chosen):
    assert pipeline.choose(dev) == chosen


def test_training_budget_is_sized_to_the_pairs():
    small, large = pipeline.training_budget(120, "default"), pipeline.training_budget(30_000, "default")
    assert small["pairs"] == 120 and small["epochs"] > 1 and small["batch_size"] == 15  # 8 steps per pass
    assert large["pairs"] == pipeline.PAIRS_SEEN["default"] and large["epochs"] == 1 and large["batch_size"] == 32
    assert small["learning_rate"] < large["learning_rate"] == 5e-5  # the rate follows the batch's square root
    for budget in (small, large):
        assert budget["steps"] // budget["eval_steps"] >= pipeline.EVALUATIONS  # enough evaluations to stop early
    assert pipeline.training_budget(3, "default")["batch_size"] == 3  # never a batch larger than the data
    fixed = pipeline.training_budget(120, "default", epochs=2, batch_size=8)
    assert (fixed["epochs"], fixed["batch_size"]) == (2, 8)
