"""Training that fits and keeps fitting: the chunked loss, the memory budget, micro-batches that run
out of memory redone exactly, and compiled decoder layers that train as eager ones do."""

import json

import pytest
import torch
from transformers import TrainerCallback

import glmtune
import glmtune.training.compiling
import glmtune.training.job
import glmtune.training.loss
import glmtune.training.memory
from glmtune.core import device
from glmtune.core.errors import TrainingError
from glmtune.training.compiling import plan_training_compile, record_compile_cost
from glmtune.training.job import train
from glmtune.training.loss import chunked_loss
from glmtune.training.memory import CheckpointPlan, GradientSnapshot, split_rows

from conftest import tiny_config


def lora_weights(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


TWO_STEPS = ("--max-steps", "2", "--learning-rate", "5e-3")


@pytest.fixture(scope="module")
def eager(data_file, tmp_path_factory):
    """Two steps, nothing checkpointed or compiled, dropout on: the adapter that the checkpointed, the
    out-of-memory-recovered and the compiled runs below must each train as well."""
    out = tmp_path_factory.mktemp("eager")
    return train(tiny_config(data_file, out, *TWO_STEPS, "--gradient-checkpointing", "off", "--compile", "off")).model


def assert_same_adapter(a, b):
    a, b = lora_weights(a), lora_weights(b)
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)


# ---------- the chunked loss ----------

def test_chunked_loss_equals_the_models_loss_and_gradients(tiny_dir, monkeypatch):
    model = glmtune.load_model(tiny_dir, quantization=None, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (3, 40), generator=generator)
    labels = ids.clone()
    labels[:, :10] = -100  # the prompt
    labels[2, 30:] = -100  # padding
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    for count in (None, torch.tensor(50)):  # the row mean, and the Trainer's count over accumulated batches
        extra = {} if count is None else {"num_items_in_batch": count}
        expected = model(**batch, **extra).loss
        expected.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        monkeypatch.setattr(glmtune.training.loss, "CHUNK", 7)  # several chunks, the last one short
        with chunked_loss(model):
            loss = model(**batch, **extra).loss
        loss.backward()
        torch.testing.assert_close(loss, expected)
        for name, p in model.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(p.grad, grads[name], msg=name)
        model.zero_grad()
    # the output layer is back: logits over the vocabulary again
    assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size
    assert "_loss_function" not in vars(model)


# ---------- the budget and the plan ----------

def test_budget_is_free_memory_less_the_optimizer_state_and_a_margin(tiny_dir, monkeypatch):
    model = glmtune.load_model(tiny_dir, quantization=None, dtype=torch.float32)
    for p in model.parameters():
        p.requires_grad_(False)
    model.lm_head.weight.requires_grad_(True)
    adam = 2 * model.lm_head.weight.numel() * 4
    GiB = 2**30
    monkeypatch.setattr(device, "free_memory", lambda: 3 * GiB)
    assert glmtune.training.memory._budget(model) == 3 * GiB - adam - 0.3 * GiB
    monkeypatch.setattr(device, "free_memory", lambda: GiB)
    assert glmtune.training.memory._budget(model) == GiB - adam - 256 * 2**20  # the margin's floor


def test_checkpoint_plan_checkpoints_the_fewest_layers_that_fit():
    plan = CheckpointPlan(layers=28, budget_bytes=100, per_token_full=1.0, per_token_none=8.0)
    assert plan.layers_for(12) == 0  # 96 bytes fit without checkpointing
    # 20 tokens need 160 bytes: 60 too many; each checkpointed layer saves 20 * 7 / 28 = 5 bytes
    assert plan.layers_for(20) == 12
    assert plan.layers_for(100) == 28 and plan.layers_for(1000) == 28  # never more than all layers
    nothing_fits = CheckpointPlan(layers=28, budget_bytes=0.0, per_token_full=float("inf"),
                                  per_token_none=float("inf"))
    assert nothing_fits.layers_for(1) == 28
    unmeasured = CheckpointPlan(layers=28, budget_bytes=100, per_token_full=1.0, per_token_none=float("inf"))
    assert unmeasured.layers_for(10) == 28  # no probe without checkpointing fitted: checkpoint all


def test_a_plan_that_ran_out_of_memory_checkpoints_more():
    plan = CheckpointPlan(layers=28, budget_bytes=100, per_token_full=1.0, per_token_none=8.0)
    assert plan.layers_for(20) == 12
    more = plan.after_out_of_memory(20, 12)
    assert more > 12 and plan.layers_for(20) == more
    assert plan.bytes_for(20, more) < plan.bytes_for(20, 12)
    assert plan.layers_for(12) > 0  # batches that fitted the old budget exactly now checkpoint too
    assert plan.after_out_of_memory(20, 28) == 28  # all layers already: the trainer splits the batch instead


def test_split_rows_cuts_each_part_to_its_own_longest_row():
    mask = torch.tensor([[1] * 30 + [0] * 10, [1] * 9 + [0] * 31, [1] * 40, [1] * 3 + [0] * 37])
    batch = {"input_ids": torch.arange(160).view(4, 40), "attention_mask": mask, "labels": torch.zeros(4, 40)}
    first, second = split_rows(batch, 2)
    assert first["input_ids"].shape == (2, 32) and second["input_ids"].shape == (2, 40)
    assert torch.equal(first["input_ids"], batch["input_ids"][:2, :32])


def test_gradient_snapshot_puts_back_what_was_accumulated():
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    model = torch.nn.ParameterList(params)
    snapshot = GradientSnapshot(model)
    snapshot.take()  # the first micro-batch of a step: no gradients yet
    params[0].grad = torch.full((3,), 5.0)
    snapshot.restore()
    assert params[0].grad is None and params[1].grad is None
    for p in params:
        p.grad = torch.full(p.shape, 2.0)
    snapshot.take()
    for p in params:
        p.grad += 7  # half a backward pass, then out of memory
    snapshot.restore()
    assert all(torch.equal(p.grad, torch.full(p.shape, 2.0)) for p in params)


class CyclingPlan(CheckpointPlan):
    """Checkpoints 0, 1, 2, 0, ... layers on successive micro-batches, whatever their size."""

    def layers_for(self, tokens):
        return sum(self.used.values()) % (self.layers + 1)


def test_checkpointing_changes_memory_not_numbers(eager, data_file, tmp_path, monkeypatch):
    every = train(tiny_config(data_file, tmp_path / "on", *TWO_STEPS, "--gradient-checkpointing", "on")).model
    assert_same_adapter(eager, every)
    plan = CyclingPlan(layers=2, budget_bytes=0.0, per_token_full=1.0, per_token_none=1.0)
    monkeypatch.setattr(glmtune.training.job, "uses_checkpointing", lambda setting: True)  # auto is off without a GPU
    monkeypatch.setattr(glmtune.training.memory, "plan_checkpointing", lambda *args: plan)
    planned = train(tiny_config(data_file, tmp_path / "auto", *TWO_STEPS, "--gradient-checkpointing", "auto")).model
    assert plan.used == {0: 2, 1: 1, 2: 1}  # 2 steps x 2 micro-batches, in the order the plan gave
    assert_same_adapter(eager, planned)
    run = json.loads((tmp_path / "auto" / "train_metrics.json").read_text())
    assert run["checkpoint_plan"]["checkpointed_layers_per_micro_batch"] == {"0": 2, "1": 1, "2": 1}


# ---------- out of memory in the middle of a run ----------

class OutOfMemoryAt(TrainerCallback):
    """Makes the allocator fail once, halfway through the backward pass of the `nth` micro-batch (the
    second of its optimizer step, so earlier gradients are there and later layers' are half added),
    while the micro-batch has more than `rows_over` rows."""

    def __init__(self, nth: int, rows_over: int = 0):
        self.nth, self.rows_over, self.seen, self.fired = nth, rows_over, 0, False

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        first_layer = glmtune.training.memory.decoder_layers(model)[0]
        first_layer.register_forward_hook(self.arm)

    def arm(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if not module.training or not hidden.requires_grad:
            return
        self.seen += 1
        if self.seen == self.nth and not self.fired and hidden.shape[0] > self.rows_over:
            self.fired = True
            hidden.register_hook(self.fail)

    def fail(self, grad):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


def test_a_micro_batch_out_of_memory_is_redone_in_halves_with_the_same_result(data_file, tmp_path, capsys):
    flags = ("--max-steps", "2", "--learning-rate", "5e-3", "--lora-dropout", "0")
    straight = train(tiny_config(data_file, tmp_path / "a", *flags)).model
    failing = OutOfMemoryAt(nth=4)
    recovered = train(tiny_config(data_file, tmp_path / "b", *flags), callbacks=[failing]).model
    assert failing.fired
    assert_same_adapter(straight, recovered)
    events = json.loads((tmp_path / "b" / "train_metrics.json").read_text())["out_of_memory_recoveries"]
    assert len(events) == 1 and "micro-batches of at most 2 rows" in events[0]
    assert events[0] in capsys.readouterr().err


def test_more_checkpointing_redoes_the_micro_batch_exactly_dropout_included(eager, data_file, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setattr(glmtune.training.job, "uses_checkpointing", lambda setting: True)  # auto is off without a GPU
    plans = []

    def plan(*args):  # nothing checkpointed until a micro-batch runs out of memory
        plans.append(CheckpointPlan(layers=2, budget_bytes=1e12, per_token_full=1.0, per_token_none=2.0))
        return plans[-1]

    monkeypatch.setattr(glmtune.training.memory, "plan_checkpointing", plan)
    failing = OutOfMemoryAt(nth=4)
    recovered = train(tiny_config(data_file, tmp_path / "b", *TWO_STEPS, "--gradient-checkpointing", "auto"),
                      callbacks=[failing]).model
    assert failing.fired
    assert_same_adapter(eager, recovered)
    events = json.loads((tmp_path / "b" / "train_metrics.json").read_text())["out_of_memory_recoveries"]
    assert events == [events[0]] and "with 0 of 2 layers checkpointed; redoing it with" in events[0]
    assert plans[0].budget_bytes < 1e12


def test_one_row_that_never_fits_is_one_clear_error(data_file, tmp_path):
    failing = OutOfMemoryAt(nth=1)
    config = tiny_config(data_file, tmp_path / "a", "--max-steps", "2", "--batch-size", "1")
    with pytest.raises(TrainingError, match=r"out of GPU memory on a micro-batch of 1 row \(\d+ tokens\)\. Use "
                                            r"--gradient-checkpointing on .*--max-length.*--resume continues"):
        train(config, callbacks=[failing])


# ---------- compiled decoder layers ----------

def test_compiled_layers_train_the_same_adapter_as_eager_and_checkpointed_ones_run_eagerly(eager, data_file,
                                                                                          tmp_path, monkeypatch):
    # aot_eager traces and partitions forward and backward as inductor does, without generating code
    # (and draws dropout masks as eager code does, so the runs must agree with dropout on)
    monkeypatch.setattr(glmtune.training.compiling, "BACKEND", "aot_eager")
    monkeypatch.setattr(glmtune.training.job, "uses_checkpointing", lambda setting: True)  # auto is off without a GPU
    plan = CyclingPlan(layers=2, budget_bytes=0.0, per_token_full=1.0, per_token_none=1.0)
    monkeypatch.setattr(glmtune.training.memory, "plan_checkpointing", lambda *args: plan)
    job = train(tiny_config(data_file, tmp_path / "compiled", *TWO_STEPS, "--gradient-checkpointing", "auto",
                            "--compile", "on"))
    assert plan.used == {0: 2, 1: 1, 2: 1}  # none, one and both layers checkpointed
    assert_same_adapter(eager, job.model)
    layers = glmtune.training.memory.decoder_layers(job.model)
    glmtune.training.memory.checkpoint_layers(layers, 1)
    assert layers[0]._compiled_call_impl is None and layers[1]._compiled_call_impl is layers[1].compiled_call
    metrics = json.loads((tmp_path / "compiled" / "train_metrics.json").read_text())
    assert metrics["compile"]["chosen"] == "compiled (--compile on)" and metrics["compile"]["compile_seconds"] > 0
    run = json.loads((tmp_path / "compiled" / "run_config.json").read_text())
    assert run["resolved"]["compile"] == "compiled (--compile on)"


def test_auto_compiles_only_where_the_run_gains_more_than_the_compile_costs(monkeypatch, tmp_path):
    monkeypatch.setenv("GLMTUNE_CACHE", str(tmp_path))
    assert not plan_training_compile("auto", 1e9, "m", on_gpu=False).on  # never on CPU
    short = plan_training_compile("auto", 2e5, "m", on_gpu=True)  # the default run on financial_data.txt
    assert not short.on and "a first compile" in short.reason
    long = plan_training_compile("auto", 5e6, "m", on_gpu=True)  # ~10 min of training
    assert long.on and long.reason.startswith("compiled (auto:")
    record_compile_cost(short.key, 4.0)  # torch's cache made the compile cheap here before
    assert plan_training_compile("auto", 2e5, "m", on_gpu=True).on
    assert plan_training_compile("on", 1, "m", on_gpu=False).on and not plan_training_compile("off", 1e9, "m", True).on
    every_layer = plan_training_compile("on", 1e9, "m", True, checkpointing="on")
    assert not every_layer.on and "recomputed layers run eagerly" in every_layer.reason
