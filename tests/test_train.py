from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embtune_utils import config, data, models, negatives, train


def test_training_pairs_sources(tiny_beir, model, monkeypatch):
    monkeypatch.setattr(train.synth, "course_pairs", lambda beir, m: [{"query": "s", "chunk_id": "x"}])
    experts = train.training_pairs(tiny_beir, model, "experts")
    assert experts == data.expert_pairs(tiny_beir, "train") and all("answer" in p for p in experts)
    assert train.training_pairs(tiny_beir, model, "synthetic") == [{"query": "s", "chunk_id": "x"}]
    assert len(train.training_pairs(tiny_beir, model, "both")) == len(experts) + 1
    with pytest.raises(train.TrainError, match="choose one of"):
        train.training_pairs(tiny_beir, model, "wiki")


def test_precision_flags():
    assert train.precision_flags("bf16") == {"bf16": True, "fp16": False}
    assert train.precision_flags("fp16") == {"bf16": False, "fp16": True}
    assert train.precision_flags("fp32") == {"bf16": False, "fp16": False}


def test_training_args_defaults(tmp_path):
    args = train.training_args(tmp_path, batch_size=8, learning_rate=1e-4, max_steps=3)
    assert args.per_device_train_batch_size == 8 and args.max_steps == 3
    assert args.batch_sampler == "no_duplicates" and not args.fp16 and not args.bf16  # CPU here
    with pytest.raises(train.TrainError, match="at least 2"):
        train.training_args(tmp_path, batch_size=1)


def test_loader_flags_keep_a_gpu_fed_and_leave_a_cpu_alone(monkeypatch):
    assert train.loader_flags("cpu") == {"dataloader_num_workers": 0, "dataloader_pin_memory": False}
    monkeypatch.setattr(config.os, "cpu_count", lambda: 16)
    gpu = train.loader_flags("cuda")
    assert gpu["dataloader_num_workers"] == config.MAX_LOADER_WORKERS == 8 and gpu["dataloader_persistent_workers"]
    assert gpu["dataloader_pin_memory"] and gpu["optim"] == "adamw_torch_fused"
    assert gpu["accelerator_config"] == {"non_blocking": True} and gpu["logging_nan_inf_filter"] is False  # no waits
    assert train.logging_steps("cpu") == 1 and train.logging_steps("cuda") == train.GPU_LOGGING_STEPS > 1
    monkeypatch.setattr(config.os, "cpu_count", lambda: 2)  # a Colab T4: one worker, one core for the main process
    assert config.loader_workers("cuda") == 1
    monkeypatch.setattr(config.os, "cpu_count", lambda: 1)
    assert "dataloader_persistent_workers" not in train.loader_flags("cuda")


def test_track_resources_sees_time_and_memory():
    with train.track_resources(device="cpu") as usage:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB
        block.sum()
    assert usage.peak_mb > 40 and usage.seconds > 0 and "resident" in usage.memory
    del block


def test_short_run_trains_and_reports(tiny_beir, tmp_path):
    model = models.load_model(verbose=False)
    rows = negatives.bm25_negatives(data.expert_pairs(tiny_beir, "train")[:8], tiny_beir.corpus, n=1)
    dataset = negatives.to_dataset(rows, tiny_beir.corpus)
    before = [p.detach().clone() for p in model.parameters()]
    args = train.training_args(tmp_path, batch_size=4, learning_rate=1e-4)
    result = train.short_run(model, _mnrl(model), dataset, args)
    assert result["steps"] == 2 and len(result["losses"]) == 2 and all(np.isfinite(result["losses"]))
    assert result["seconds"] > 0 and result["peak_mb"] >= 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(train.TrainError, match="less than one batch"):
        train.short_run(model, _mnrl(model), dataset.select(range(3)), args)


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8589934592 bytes"),
    ],
)
def test_out_of_memory_names_the_fixes(tiny_beir, tmp_path, monkeypatch, error):
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer

    def run_out(self, **kwargs):
        raise error

    monkeypatch.setattr(SentenceTransformerTrainer, "train", run_out)
    model = models.load_model(verbose=False)
    dataset = negatives.to_dataset(data.expert_pairs(tiny_beir, "train")[:8], tiny_beir.corpus, n=0)
    args = train.training_args(tmp_path, batch_size=8)
    with pytest.raises(
        train.TrainError, match="Out of memory at batch size 8: use a smaller batch_size .e.g. 4."
    ) as err:
        train.short_run(model, _mnrl(model), dataset, args)
    assert "cached_mnrl" in str(err.value) and err.value.__cause__ is error
    monkeypatch.setattr(
        SentenceTransformerTrainer, "train", lambda self, **kw: (_ for _ in ()).throw(RuntimeError("other"))
    )
    with pytest.raises(RuntimeError, match="^other$"):  # other errors pass through unchanged
        train.short_run(model, _mnrl(model), dataset, args)


def _mnrl(model):
    from embtune_utils import losses

    return losses.make_loss("mnrl", model)


def test_dev_scores_per_query(tiny_beir, model):
    scores = train.dev_scores(model, tiny_beir, split="test")
    assert set(scores) == set(tiny_beir.qrels["test"]) and all(0 <= s <= 1 for s in scores.values())


def test_course_negatives_mined_once_then_read(tiny_beir, model, home, monkeypatch):
    pairs = data.expert_pairs(tiny_beir, "train")[:6]
    monkeypatch.setattr(train, "training_pairs", lambda beir, m, source: pairs)
    first = train.course_negatives(tiny_beir, model, "experts")
    assert (home / "artifacts").exists() and negatives.load_rows(negatives.recipe_name("experts")) == first
    monkeypatch.setattr(negatives, "recipe_negatives", lambda *a: pytest.fail("mined again"))
    assert train.course_negatives(tiny_beir, model, "experts") == first


# ---------------------------------------------------------------- full training


def _tiny_dataset(beir, n_rows=16):
    rows = negatives.bm25_negatives(data.expert_pairs(beir, "train")[:n_rows], beir.corpus, n=1)
    return negatives.to_dataset(rows, beir.corpus, n=0)


def test_ir_evaluator_names_its_metric(tiny_beir, model):
    evaluator = train.ir_evaluator(tiny_beir, "test")
    scores = evaluator(model)
    key = train.metric_key(evaluator)
    assert key == "eval_test_cosine_ndcg@10" and key.removeprefix("eval_") in scores
    with pytest.raises(train.TrainError, match="no questions"):
        train.ir_evaluator(tiny_beir, "nosuchsplit")


def test_per_query_log_on_another_rank_is_empty_not_missing(tiny_beir, tmp_path, monkeypatch):
    """Under torchrun only rank 0 writes and reads the dev rankings; the other ranks' fit() still returns a result
    (two H200s, 2026-11-30: rank 1 failed on `dev_log.scores` after training)."""
    from types import SimpleNamespace

    monkeypatch.setenv("RANK", "1")
    evaluator = train.ir_evaluator(tiny_beir, "test")
    assert not evaluator.write_predictions
    log = train.per_query_log(evaluator)
    log.on_evaluate(SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(global_step=2), None)
    assert log.scores == {}


def test_fit_evaluates_and_keeps_the_best(tiny_beir, tmp_path):
    model = models.load_model(verbose=False)
    evaluator = train.ir_evaluator(tiny_beir, "test")
    args = train.fit_args(tmp_path / "run", evaluator, eval_steps=1, batch_size=4, learning_rate=1e-4, max_steps=3)
    result = train.fit(model, _mnrl(model), _tiny_dataset(tiny_beir), args, evaluator, patience=3)
    assert result["steps"] == 3 and [s for s, _ in result["dev"]] == [1, 2, 3]
    assert result["best"] == pytest.approx(max(v for _, v in result["dev"]))
    # load_best_model_at_end: the model in hand scores the best dev value
    assert evaluator(model)[train.metric_key(evaluator).removeprefix("eval_")] == pytest.approx(
        result["best"], abs=1e-6
    )


def test_fit_stops_early(tiny_beir, tmp_path):
    model = models.load_model(verbose=False)
    evaluator = train.ir_evaluator(tiny_beir, "test")
    args = train.fit_args(tmp_path / "run", evaluator, eval_steps=1, batch_size=4, learning_rate=0.0, max_steps=6)
    result = train.fit(model, _mnrl(model), _tiny_dataset(tiny_beir), args, evaluator, patience=2)
    assert result["steps"] == 3  # learning rate 0: the score never improves after step 1, so 2 more evaluations


KILLED_RUN = """
import sys, time
from pathlib import Path
from transformers import TrainerCallback
from embtune_utils import data, models, negatives, train, losses

class Hang(TrainerCallback):
    def on_save(self, args, state, control, **kw):
        if state.global_step == 4:
            Path(sys.argv[2]).write_text("saved")
            time.sleep(600)  # killed here, as by a power cut

m = models.load_model(verbose=False)
beir, _ = data.covidqa_beir(data.load_covidqa()[:4], m.tokenizer)
rows = negatives.bm25_negatives(data.expert_pairs(beir, "train")[:24], beir.corpus, n=1)
ds = negatives.to_dataset(rows, beir.corpus, n=0)
ev = train.ir_evaluator(beir, "test")
args = train.fit_args(sys.argv[1], ev, eval_steps=2, batch_size=4, learning_rate=1e-4, max_steps=6)
train.fit(m, losses.make_loss("mnrl", m), ds, args, ev, callbacks=[Hang()])
"""


def test_fit_resumes_after_a_kill(tiny_beir, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out, marker = tmp_path / "run", tmp_path / "saved"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(out), str(marker)])
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert marker.exists(), "the training subprocess never reached its step-4 checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert train.last_checkpoint(out).endswith("checkpoint-4")

    model = models.load_model(verbose=False)
    evaluator = train.ir_evaluator(tiny_beir, "test")
    args = train.fit_args(out, evaluator, eval_steps=2, batch_size=4, learning_rate=1e-4, max_steps=6)
    result = train.fit(model, _mnrl(model), _tiny_dataset(tiny_beir, 24), args, evaluator)
    assert result["resumed_from"].endswith("checkpoint-4") and result["steps"] == 6
    assert [s for s, _ in result["losses"]] == [1, 2, 3, 4, 5, 6]  # history restored, no step run twice


# ---------------------------------------------------------------- partial fine-tuning


def test_freeze_lower_layers_and_counts():
    model = models.load_model(verbose=False)
    trainable, total = train.trainable_parameters(model)
    assert trainable == total
    train.freeze_lower_layers(model, 3)
    frozen_trainable, _ = train.trainable_parameters(model)
    assert 0 < frozen_trainable < trainable
    assert all(not p.requires_grad for p in train.encoder_layers(model)[2].parameters())
    assert all(p.requires_grad for p in train.encoder_layers(model)[3].parameters())
    with pytest.raises(train.TrainError, match="choose 0..6"):
        train.freeze_lower_layers(model, 7)


def test_llrd_optimizer_decays_downwards(model):
    opt = train.llrd_optimizer(model, 1e-4, decay=0.5)
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == sorted(lrs) and lrs[-1] == pytest.approx(1e-4) and lrs[0] == pytest.approx(1e-4 * 0.5**6)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_add_lora_trains_few_parameters():
    pytest.importorskip("peft")
    model = models.load_model(verbose=False)
    train.add_lora(model, r=4)
    trainable, total = train.trainable_parameters(model)
    assert 0 < trainable < 0.05 * total


def test_save_model_writes_card_atomically(model, tmp_path):
    path = train.save_model(model, tmp_path / "finetuned", {"loss": "MNRL", "dev ndcg@10": 0.5})
    card = (path / "README.md").read_text()
    assert "embtune training record" in card and "| loss | MNRL |" in card
    assert (path / "embtune_training.json").exists() and not (tmp_path / "finetuned.partial").exists()
    assert models.load_model(str(path), verbose=False).encode(["x"]).shape == (1, 384)


def test_probe_loss_is_a_fixed_yardstick(tiny_beir, model):
    dataset = _tiny_dataset(tiny_beir)
    first = train.probe_loss(model, dataset, batch_size=4, n_rows=8)
    assert first > 0 and train.probe_loss(model, dataset, batch_size=4, n_rows=8) == pytest.approx(first)


def test_restart_if_changed_keeps_only_matching_checkpoints(tmp_path):
    out = tmp_path / "run"
    assert not train.restart_if_changed(out, {"lr": 1e-4})
    (out / "checkpoint-3").mkdir()
    assert not train.restart_if_changed(out, {"lr": 1e-4}) and (out / "checkpoint-3").exists()  # same run: resume
    assert train.restart_if_changed(out, {"lr": 5e-5}) and not (out / "checkpoint-3").exists()  # changed: start over


def test_script_main_trains_and_saves_with_a_card(tiny_beir, model, tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_train_model(beir, out, **kwargs):
        seen.update(kwargs, out=out)
        return model, {"best": 0.5, "seconds": 1.0, "steps": 2, "source": kwargs["source"], "losses": [], "dev": []}

    monkeypatch.setenv("EMBTUNE_MODE", "fast")  # main() sets it from --mode; monkeypatch restores it afterwards
    monkeypatch.setattr(train, "train_model", fake_train_model)
    monkeypatch.setattr(train.data, "course_data", lambda tokenizer: tiny_beir)
    monkeypatch.setattr(train, "finetuned_path", lambda: tmp_path / "finetuned")
    assert train.main(["--mode", "fast", "--source", "experts", "--epochs", "2", "--out", str(tmp_path / "ck")]) == 0
    assert seen["source"] == "experts" and seen["epochs"] == 2 and seen["out"] == tmp_path / "ck"
    card = (tmp_path / "finetuned" / "README.md").read_text()
    assert "the experts' training questions" in card and '"saved"' in capsys.readouterr().out


def test_step_timer_leaves_out_steps_followed_by_evaluation(monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 10.0, 11.0])  # step ends; an evaluation runs between 2.0 and the next step
    monkeypatch.setattr(train.time, "perf_counter", lambda: next(clock))
    timer = train.step_timer()
    for n in range(5):
        timer.on_step_end(None, None, None)
        if n == 2:
            timer.on_evaluate(None, None, None)
    assert (timer.steps, timer.seconds) == (3, 3.0)  # 0→1, 1→2 and 10→11; 2→10 held the evaluation
    assert timer.pairs_per_s(32) == 32.0 and train.step_timer().pairs_per_s(32) is None


def test_step_timer_waits_for_a_gpu_only_where_a_timed_stretch_starts_or_ends(monkeypatch):
    from types import SimpleNamespace

    import torch

    waits = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: waits.append(len(waits)))
    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr(train.time, "perf_counter", lambda: next(clock))
    timer = train.step_timer()
    synced = []
    for step in range(1, 7):  # an evaluation follows step 3; step 6 is the last
        control = SimpleNamespace(should_evaluate=step == 3, should_save=False, should_training_stop=False)
        before = len(waits)
        timer.on_step_end(None, SimpleNamespace(global_step=step, max_steps=6), control)
        synced += [step] * (len(waits) > before)
        if step == 3:
            timer.on_evaluate(None, None, None)
    assert synced == [1, 3, 4, 6]  # the first step, before and after the evaluation, the last
    assert (timer.steps, timer.seconds) == (4, 4.0)  # 1→2, 2→3, 4→5, 5→6; 3→4 held the evaluation


# ---------------------------------------------------------------- the recipe's pieces (notebook 05 builds them)


def test_plumbing_args_are_what_training_args_uses(tmp_path):
    flags = train.plumbing_args()
    assert flags["seed"] == flags["data_seed"] == config.SEED and flags["disable_tqdm"] and flags["report_to"] == "none"
    assert not train.plumbing_args(progress=True)["disable_tqdm"]
    args = train.training_args(tmp_path, batch_size=4)
    assert all(getattr(args, k) == (v if k != "report_to" else []) for k, v in flags.items())


def test_stop_at_ends_training_with_the_full_schedule(tiny_beir, tmp_path):
    model = models.load_model(verbose=False)
    args = train.training_args(tmp_path, batch_size=4, learning_rate=1e-4)
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer

    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=_tiny_dataset(tiny_beir), loss=_mnrl(model), callbacks=[train.stop_at(2)]
    )
    train.quiet(trainer)
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.state.max_steps == 4  # stopped at 2 of the run's 4 steps


def test_dev_scores_by_dim_cuts_one_encoding(tiny_beir, model):
    by_dim = train.dev_scores_by_dim(model, tiny_beir, (384, 64), split="test", cache=False)
    full = train.dev_scores(model, tiny_beir, "test")
    assert by_dim[384] == pytest.approx(full) and set(by_dim[64]) == set(full)
    assert by_dim[64] != by_dim[384]  # 64 of 384 dimensions rank differently


def test_resume_point_starts_a_finished_run_over(tmp_path):
    args = train.training_args(tmp_path / "run", batch_size=4)
    rows = [{"query": "q", "chunk_id": "c"}]
    assert train.resume_point(args, rows, "mnrl") is None
    for step, max_steps in ((2, 4), (4, 4)):
        (tmp_path / "run" / f"checkpoint-{step}").mkdir()
        state = {"global_step": step, "max_steps": max_steps}
        (tmp_path / "run" / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps(state))
        resumed = train.resume_point(args, rows, "mnrl")
        if step < max_steps:  # interrupted: resume
            assert resumed.endswith("checkpoint-2")
        else:  # finished: start over, with the run's stamp kept
            assert resumed is None and (tmp_path / "run" / "run_config.json").exists()
    assert train.resume_point(args, rows, "matryoshka") is None  # another loss: never resumed


def test_paired_verdict_reads_the_interval():
    assert train.paired_verdict({"mean": 0.02, "lo": 0.01, "hi": 0.03}) == "ahead beyond the noise"
    assert train.paired_verdict({"mean": -0.02, "lo": -0.03, "hi": -0.01}) == "behind beyond the noise"
    assert "spans 0" in train.paired_verdict({"mean": 0.02, "lo": -0.01, "hi": 0.05})
    assert train.format_diff({"mean": 0.0123, "lo": -0.01, "hi": 0.034}) == "+0.012 [-0.010, +0.034]"
