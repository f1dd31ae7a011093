"""Hugging Face's Trainer as a tested client: ``fo.AdamW`` handed to ``Trainer(optimizers=(optimizer,
scheduler))`` trains a tiny GPT-2 (built from a GPT2Config: nothing is downloaded) loss for loss like
``torch.optim.AdamW``, through the Trainer's gradient accumulation, gradient clipping and an
lr_scheduler, and a run resumed from the Trainer's checkpoint (optimizer.pt: our ``state_dict()``,
loaded back with ``torch.load(weights_only=True)`` into ``load_state_dict``; scheduler.pt; the RNG
states) equals the uninterrupted run bit for bit.

tests/test_wheel.py runs this file again against the package installed from a wheel in a fresh virtual
environment: it imports nothing from the checkout but conftest.py."""
import math
import os

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="HF Trainer is a tested client: pip install transformers accelerate (the test extra)")
pytest.importorskip("accelerate", reason="HF Trainer needs accelerate: pip install accelerate (the test extra)")

import fusedoptim as fo  # noqa: E402

# 32 sequences of 16 tokens in batches of 4, two batches accumulated per step: 4 steps an epoch, so 8 steps
# cross an epoch's end and the checkpoint at step 5 resumes inside the second epoch, where the Trainer
# must skip the batch already seen. Under the Triton interpreter a step of the fused kernel takes ~0.4 s.
STEPS, SAVED_AT = 8, 5
MAX_GRAD_NORM = 1.0
# Large enough for the optimizer to show in the losses: the kernel's lr × 1.001 moves them by 1.3e-4
# relative within 8 steps, while the fp32 rounding in which the kernel's arithmetic differs from torch's
# moves them by 1e-6 at most (both measured, triton 3.9 interpreter, torch 2.13). LOSS_RTOL lies between.
LR = 3e-2
LOSS_RTOL = 1e-5


def tiny_gpt2():
    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def token_dataset():
    tokens = torch.randint(0, 64, (32, 16), generator=torch.Generator().manual_seed(1))
    return [{"input_ids": sequence, "labels": sequence} for sequence in tokens]


def train(make_optimizer, output_dir, resume_from=None):
    """Trains the tiny GPT-2 for STEPS steps with the Trainer, saving a checkpoint every SAVED_AT steps
    (or resuming from ``resume_from``). Returns the Trainer's log of every step (loss, grad_norm,
    learning_rate) and the final params."""
    model = tiny_gpt2()
    optimizer = make_optimizer(model.parameters(), lr=LR, weight_decay=0.1)
    # Warm-up over 2 steps, then linear decay to 0 at STEPS: get_linear_schedule_with_warmup's shape.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / 2, 1.0) * (1 - step / STEPS))
    arguments = transformers.TrainingArguments(
        output_dir, max_steps=STEPS, per_device_train_batch_size=4, gradient_accumulation_steps=2,
        max_grad_norm=MAX_GRAD_NORM, logging_steps=1, save_strategy="steps", save_steps=SAVED_AT, seed=0,
        use_cpu=True, report_to=[], dataloader_num_workers=0, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=arguments, train_dataset=token_dataset(),
                                   optimizers=(optimizer, scheduler))
    trainer.train(resume_from_checkpoint=resume_from)
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    return steps, {name: param.detach().clone() for name, param in model.named_parameters()}


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory):
    return train(torch.optim.AdamW, tmp_path_factory.mktemp("torch"))


def ours(impl):
    def make_optimizer(params, **hyperparameters):
        return fo.AdamW(params, impl=impl, **hyperparameters)
    return make_optimizer


@pytest.fixture(scope="module", params=["auto", "reference"])
def our_run(request, tmp_path_factory):
    """impl="auto" is the fused kernel here (on the CPU under the interpreter, which conftest sets)."""
    output_dir = tmp_path_factory.mktemp(f"ours-{request.param}")
    return request.param, output_dir, train(ours(request.param), output_dir)


def test_trainer_with_fused_adamw_steps_like_torch_adamw(torch_run, our_run):
    _, _, (steps, _) = our_run
    torch_steps, _ = torch_run
    assert [logged["step"] for logged in steps] == list(range(1, STEPS + 1)), "the Trainer did not log every step"
    assert any(logged["grad_norm"] > MAX_GRAD_NORM for logged in torch_steps), "no step was clipped (step 1 is, at 1.06)"
    for ours_logged, torch_logged in zip(steps, torch_steps):
        step = ours_logged["step"]
        assert ours_logged["learning_rate"] == torch_logged["learning_rate"], f"step {step}: the scheduler's lr differs"
        assert math.isclose(ours_logged["loss"], torch_logged["loss"], rel_tol=LOSS_RTOL), (
            f"step {step}: loss {ours_logged['loss']!r}, torch.optim.AdamW's {torch_logged['loss']!r}")


def test_trainer_resumed_from_checkpoint_equals_the_uninterrupted_run(our_run, tmp_path):
    impl, output_dir, (steps, params) = our_run
    checkpoint = output_dir / f"checkpoint-{SAVED_AT}"
    assert (checkpoint / "optimizer.pt").is_file(), f"the Trainer saved no optimizer state: {os.listdir(checkpoint)}"
    resumed_steps, resumed_params = train(ours(impl), tmp_path, resume_from=str(checkpoint))
    assert len(resumed_steps) == len(steps) == STEPS, f"logged {len(resumed_steps)} steps resumed, {len(steps)} not"
    for resumed, uninterrupted in zip(resumed_steps[SAVED_AT:], steps[SAVED_AT:]):
        assert resumed == uninterrupted, (f"step {uninterrupted['step']}, resumed at {SAVED_AT}: {resumed}; "
                                          f"uninterrupted: {uninterrupted}")
    for name, param in params.items():
        assert torch.equal(resumed_params[name], param), f"{name} after the resumed run differs from the uninterrupted one"
