"""Deliberate breakages: bugs that once passed every test, or plausibly would, each with the tests that
must now catch it. A test nobody has seen fail guards nothing; this puts each bug in, runs its tests
and reports caught (a test failed) or missed (all passed).

    python scripts/breakages.py            # every entry
    python scripts/breakages.py scales     # the entries whose name contains "scales"

Each run works in a temporary copy of the checkout (its tracked and untracked, not ignored, files),
so the checkout is never changed, even when a run is interrupted. Not part of the suite (minutes of
CPU); tests/test_breakages.py only checks that every entry's text is still in its file, once.
"""
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Breakage:
    name: str
    path: str  # relative to the checkout's root
    text: str  # exactly once in the file
    replacement: str
    tests: tuple  # pytest node ids (or files, -k expressions after "::-k ")
    why: str  # what a user would suffer


BREAKAGES = (
    Breakage("compiled-step-without-amp", "fusedoptim/optim/base.py",
             "        ops.step(self._key, self._params, inv_scale, found_inf)",
             "        ops.step(self._key, self._params, None, None)",
             ("tests/test_amp.py::test_a_compiled_step_under_grad_scaler_unscales_and_skips_as_the_eager_one",),
             "torch.compile(optimizer.step) under GradScaler: an inf gradient's step moves the params"),
    Breakage("partial-launch-keeps-old-gradients", "fusedoptim/optim/plan.py",
             "                if whole:\n                    launch.set_grads(grads, pointers)\n"
             "                else:\n"
             "                    launch.set_grads([grads[i] for i in members], [pointers[i] for i in members])",
             "                if whole:\n                    launch.set_grads(grads, pointers)",
             ("tests/test_step_plan.py::test_a_group_of_two_launches_reads_each_steps_fresh_gradients",),
             "fp32 and bf16 params in one group: the bf16 launch steps with a freed gradient"),
    Breakage("loaded-scales-shared-with-the-source", "fusedoptim/optim/checkpoint.py",
             "state[name], state[scale_name(name)] = codes.copy_(value), scales.clone().contiguous()",
             "state[name], state[scale_name(name)] = codes.copy_(value), scales.contiguous()",
             ("tests/test_quantized_state.py::test_loading_a_live_state_dict_leaves_the_source_optimizer_alone",),
             "opt2.load_state_dict(opt1.state_dict()): stepping opt2 changes opt1's scales"),
    Breakage("tiger-nan-counts-not-summed-over-shards", "fusedoptim/optim/sums.py",
             "                if sharded[i]:",
             "                if sharded[i] and j == declared[-1]:",
             ("tests/test_distributed.py::test_fsdp2_tiger_skips_a_nan_in_one_ranks_shard_on_every_rank",),
             "FSDP2 Tiger, a NaN in one rank's shard: the ranks disagree on skipping the step"),
    Breakage("declared-sums-not-zeroed", "fusedoptim/optim/sums.py",
             "        for buffer in self.clears:\n            buffer.zero_()",
             "        for buffer in self.clears:\n            pass",
             ("tests/test_adding_a_rule.py::-k ClippedTrust", "tests/test_tiger.py"),
             "each step's sums add onto the last step's: norms and NaN counts grow without bound"),
    Breakage("group-sum-of-shards-not-added-up", "fusedoptim/optim/sums.py",
             "        shards.sum_([partial], [first_sharded])  # Shards.of",
             "        pass  # Shards.of",
             ("tests/test_distributed.py::test_every_rule_steps_fsdp2_shards_as_the_whole_tensors",),
             "FSDP2 SGDHD: each rank learns its own α from its own shards' ⟨g, g_prev⟩"),
    Breakage("kernel-rounding-bits-shared-by-neighbours", "fusedoptim/kernels/rounding.py",
             "_pick(words, (j * STORES + STORE) % 8)[:, None]",
             "_pick(words, STORE % 8)[:, None]",
             ("tests/test_stochastic_rounding.py::test_neighbouring_elements_round_independently",),
             "neighbouring elements round up or down together: the rounding noise is correlated"),
    Breakage("reference-rounding-bits-shared-by-pairs", "fusedoptim/optim/rounding.py",
             "random16 = torch.randint(0, 2**16, value.shape, generator=generator, dtype=torch.int64).to(value.device)",
             "random16 = torch.randint(0, 2**16, ((value.numel() + 1) // 2,), generator=generator, "
             "dtype=torch.int64).repeat_interleave(2)[:value.numel()].view(value.shape).to(value.device)",
             ("tests/test_stochastic_rounding.py::test_neighbouring_elements_round_independently",),
             "the reference's neighbouring elements round together"),
    Breakage("kernel-stores-the-clamped-scale", "fusedoptim/kernels/quantization.py",
             "tl.store(scale_ptr + block, scale, mask=block * QUANT_BLOCK < numel)",
             "tl.store(scale_ptr + block, safe, mask=block * QUANT_BLOCK < numel)",
             ("tests/test_quantized_state.py::test_scales_are_each_blocks_absmax_exactly",),
             "a saved scale differs from the block's max |x|: a checkpoint's scales are wrong"),
    Breakage("reference-stores-the-clamped-scale", "fusedoptim/optim/quantization.py",
             "    scales.copy_(scale.view(-1))",
             "    scales.copy_(safe.view(-1))",
             ("tests/test_quantized_state.py::test_scales_are_each_blocks_absmax_exactly",),
             "the reference's scales differ from the block's max |x|"),
    Breakage("eg-reference-half-the-lr", "fusedoptim/optim/reference/eg.py",
             "torch.exp(-lr * upcast(grad))", "torch.exp(-lr * upcast(grad) * 0.5)",
             ("tests/test_rules.py::-k eg_first_steps_in_closed_form and reference",),
             "EG's oracle steps half as far, and the kernel checked against it would be believed"),
    Breakage("egstepsize-kernel-grows-on-g-squared", "fusedoptim/kernels/egstepsize.py",
             "step_size * tl.exp(hyper.gamma * prev_grad * grad)", "step_size * tl.exp(hyper.gamma * grad * grad)",
             ("tests/test_rules.py::-k egstepsize_first_steps_in_closed_form and triton",),
             "EGStepSize's step sizes grow on every coordinate instead of where gradients agree"),
    Breakage("signum-kernel-decays-after-the-step", "fusedoptim/kernels/signum.py",
             "decoupled_decay(param, lr, hyper.weight_decay) - lr * sign(exp_avg)",
             "decoupled_decay(param - lr * sign(exp_avg), lr, hyper.weight_decay)",
             ("tests/test_rules.py::-k signum_first_steps_in_closed_form and triton",),
             "Signum's decoupled decay applied to the stepped θ, not before the step"),
    Breakage("signsgd-reference-decay-without-the-lr", "fusedoptim/optim/reference/signsgd.py",
             "upcast(param) * (1 - lr * weight_decay)", "upcast(param) * (1 - weight_decay)",
             ("tests/test_rules.py::-k signsgd_first_steps_in_closed_form and reference",),
             "SignSGD's oracle decays by λ, not η·λ, a step"),
    Breakage("sgd-nesterov-ignored", "fusedoptim/kernels/sgd.py",
             "            grad = grad + momentum * buffer", "            grad = buffer",
             ("tests/test_torch_twins.py::-k SGD and nesterov and triton",),
             "existing: Nesterov SGD steps as plain momentum"),
    Breakage("tiger-nan-guard-shrinks-toward-zero", "fusedoptim/kernels/tiger.py",
             "shrunk = (param - center) * hyper.shrink_ratio + center", "shrunk = param * hyper.shrink_ratio",
             ("tests/test_nonfinite.py::-k Tiger",),
             "existing: a NaN gradient shrinks a normalization weight toward 0 instead of 1"),
    Breakage("non-finite-lr-accepted", "fusedoptim/optim/hyperparameters.py",
             "    if finite and not math.isfinite(result):",
             "    if False:",
             ("tests/test_bad_input.py::-k non_finite or inf",),
             "lr=inf is accepted and the first step turns every param to inf or NaN"),
    Breakage("checkpoint-hyperparameters-unchecked", "fusedoptim/optim/checkpoint.py",
             'check_hyperparameters(rule, group, f"param group {index} of the checkpoint")',
             "pass",
             ("tests/test_bad_input.py::-k non_finite",),
             "a checkpoint's lr=tensor(nan) loads and steps NaN into the params"),
    Breakage("meta-params-stepped", "fusedoptim/optim/validation.py",
             '    if param.device.type == "meta":',
             "    if False:",
             ("tests/test_bad_input.py::-k meta_params",),
             "meta params: the reference makes their states, then fails half-way"),
    Breakage("class-help-leaves-an-argument-out", "fusedoptim/optim/base.py",
             "    for spec in rule.arguments:\n        tensor", "    for spec in rule.arguments[:-1]:\n        tensor",
             ("tests/test_docs.py::test_each_class_help_explains_every_argument_and_option_from_its_declaration",),
             "help(fo.Tiger) says nothing of param_kind"),
    Breakage("rule-sheet-edited-by-hand", "docs/rules.md",
             "`lr=0.002, betas=(0.9, 0.999), eps=1e-08, weight_decay=0, maximize=False`",
             "`lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0, maximize=False`",
             ("tests/test_docs.py::test_the_rule_sheet_is_current",),
             "docs/rules.md tells a reader Adamax's lr is 0.001; the class defaults to 0.002"),
    Breakage("rule-sheet-not-regenerated-after-a-default", "fusedoptim/optim/registry.py",
             'lr(1.0, "scales the step', 'lr(2.0, "scales the step',
             ("tests/test_docs.py::test_the_rule_sheet_is_current",),
             "Adadelta's default lr changed in the registry; docs/rules.md still says 1.0"),
    Breakage("rule-sheet-not-regenerated-after-a-summary", "fusedoptim/optim/registry.py",
             'summary="Exponentiated gradient θ ← θ·exp(−ηg)',
             'summary="Exponentiated gradient θ ← θ·exp(ηg)',
             ("tests/test_docs.py::test_the_rule_sheet_is_current",),
             "help(fo.EG) and docs/rules.md say different things about what EG does"),
    Breakage("rule-sheet-ignores-the-rules-given", "scripts/rule_sheet.py",
             "for rule in rules.values()]", "for rule in RULES.values()]",
             ("tests/test_adding_a_rule.py::test_their_rows_of_the_rule_sheet_are_generated_from_their_declarations",),
             "a sheet asked for other rows (a new rule's, before it is registered) shows only the registry's"),
    Breakage("readme-class-list-edited-by-hand", "README.md", "`SGDHD`, `Tiger`.", "`SGDHD`.",
             ("tests/test_docs.py::test_the_rule_sheet_is_current",),
             "the README's list of classes forgets Tiger, which the registry still holds"),
    Breakage("adafactor-state-bytes-without-its-step", "fusedoptim/optim/adafactor.py",
             "        total += 4 + values * element", "        total += values * element",
             ("tests/test_shaped_rules.py::-k state_bytes and Adafactor",),
             "the memory model (and the rule sheet) leave out Adafactor's step, 4 bytes a param tensor"),
    Breakage("lbfgs-state-bytes-count-one-vector-per-pair", "fusedoptim/optim/lbfgs.py",
             "(2 + 2 * history) * numel", "(2 + history) * numel",
             ("tests/test_shaped_rules.py::test_lbfgs_declared_state_bytes_are_what_a_full_history_keeps",),
             "L-BFGS's memory model keeps s and forgets y: half its history"),
    Breakage("tuner-copy-drops-the-master", "fusedoptim/tuner/__init__.py",
             'if name not in ("impl", "gradient_release")}',
             'if name not in ("impl", "gradient_release", "master_weight_bits")}',
             ("tests/test_autotune.py::test_the_scratch_copy_steps_as_the_callers_optimizer_with_every_option",),
             "tune_optimizer times a step without the master's residual, not the caller's step"),
    Breakage("impl-change-ignored", "fusedoptim/optim/base.py",
             "        self.runtime.forget_plans()\n", "\n",
             ("tests/test_behaviour.py::test_impl_set_after_steps_is_honoured_from_the_next_step_and_a_bad_one_refused",),
             "opt.impl = 'reference' after a step keeps running the kernel, silently"),
    Breakage("op-keeps-dead-optimizers", "fusedoptim/optim/ops.py",
             "    weakref.finalize(step.__self__, _steps.pop, key, None)\n", "\n",
             ("tests/test_compile.py::test_the_op_keeps_no_entry_for_an_optimizer_that_is_gone",),
             "a sweep that builds optimizers in one process keeps every one of them alive"),
    Breakage("kernel-code-draws-keyed-by-the-shard", "fusedoptim/kernels/quantization.py",
             "_uniform(key, first + offsets)", "_uniform(key, offsets)",
             ("tests/test_distributed_checkpoint.py::-k 1_2_and_3",),
             "FSDP2 Adagrad int8: the stochastically rounded codes change with the number of ranks"),
    Breakage("reference-code-draws-keyed-by-the-shard", "fusedoptim/optim/quantization.py",
             "uniforms(count, column, flat.numel(), first)", "uniforms(count, column, flat.numel())",
             ("tests/test_distributed_checkpoint.py::-k 1_2_and_3",),
             "FSDP2 Adagrad int8 under the reference: codes change with the number of ranks"),
    Breakage("dcp-sees-plain-codes", "fusedoptim/optim/saved_states.py",
             "    if length is None:\n        return state\n", "    return state\n",
             ("tests/test_distributed_checkpoint.py::-k 2_ranks_resume",),
             "get_state_dict + dcp.save of int8 state: every rank resumes with another rank's codes"),
    Breakage("weight-matrices-stepped-whole", "fusedoptim/optim/saved_states.py",
             "    return length if length and length % fmt.block == 0 else None",
             "    return None",
             ("tests/test_distributed_checkpoint.py::-k 2_ranks_resume",),
             "FSDP2 int8 weight matrices stepped whole on every rank: their state and step on every rank"),
    Breakage("whole-params-not-written-back", "fusedoptim/optim/whole.py",
             "            local(p).copy_(theta.narrow(dim, first, length))", "            pass",
             ("tests/test_distributed.py::-k unaligned",),
             "FSDP2 biases with int8 state never move: the whole step is not written to the shard"),
    Breakage("whole-params-written-back-along-dim-0", "fusedoptim/optim/whole.py",
             "            local(p).copy_(theta.narrow(dim, first, length))",
             "            local(p).copy_(theta.narrow(0, first, local(p).shape[0]))",
             ("tests/test_distributed_checkpoint.py::-k second",),
             "matrices FSDP2 splits on dim 1: each rank writes another part of the whole step into its shard"),
    Breakage("legacy-shard-states-not-gathered", "fusedoptim/optim/checkpoint.py",
             "    return bool(saved) and (legacy or any(isinstance(value, DTensor) for value in saved.values()))",
             "    return False",
             ("tests/test_distributed_checkpoint.py::-k per_rank",),
             "a per-rank checkpoint of quantized bias states, saved as the docs advised, no longer loads"),
    Breakage("dcp-format-unchecked", "fusedoptim/optim/saved_states.py",
             "    if saved_format_value not in FORMATS:\n        return\n", "    return\n",
             ("tests/test_distributed_checkpoint.py::-k refused",),
             "an int8 DCP checkpoint loaded by a float optimizer: its codes read, silently, as the values"),
    Breakage("learned-lr-checked-as-given", "fusedoptim/optim/checkpoint.py",
             '            group["lr"] = abs(group["lr"])', "            pass",
             ("tests/test_bad_input.py::-k learned",),
             "SGDHD whose α went below 0: its own checkpoint is refused (lr must be >= 0)"),
    Breakage("nadam-momentum-term-with-this-steps-mu", "fusedoptim/kernels/nadam.py",
             "    exp_avg_coefficient = (-lr * mu_next) / (1.0 - mu_product * mu_next)",
             "    exp_avg_coefficient = (-lr * mu) / (1.0 - mu_product * mu_next)",
             ("tests/test_torch_twins.py::-k NAdam",),
             "NAdam's momentum term weighted by μ_t instead of μ_{t+1}: not torch's NAdam"),
    Breakage("radam-rectified-from-step-5", "fusedoptim/kernels/radam.py",
             "    if rho_t > 5.0:", "    if rho_t > 4.0:",
             ("tests/test_torch_twins.py::-k RAdam",),
             "RAdam rectifies the step while ρ_t ≤ 5, where torch takes plain momentum"),
    Breakage("adamax-without-eps", "fusedoptim/kernels/adamax.py",
             "tl.abs(grad) + eps, propagate_nan", "tl.abs(grad), propagate_nan",
             ("tests/test_nonfinite.py::-k Adamax",),
             "Adamax divides by a running max of 0 where a gradient is 0 from the start: NaN params"),
    Breakage("asgd-steps-with-the-new-eta", "fusedoptim/optim/registry.py",
             "advance_eta_and_mu, after_update=True)", "advance_eta_and_mu, after_update=False)",
             ("tests/test_torch_twins.py::-k ASGD",),
             "ASGD steps with the step size of the next step: not torch's ASGD"),
    Breakage("rprop-keeps-the-flipped-gradient", "fusedoptim/kernels/rprop.py",
             "    grad = tl.where(agreement < 0, 0.0, grad)", "    grad = grad",
             ("tests/test_torch_twins.py::-k Rprop",),
             "Rprop moves where the gradient's sign flipped, and remembers it: not torch's Rprop"),
    Breakage("rprop-compared-with-torchs-cpu-sign-of-nan", "tests/test_nonfinite.py",
             'CUDA_SIGN_OF_NAN = {"Rprop"}', "CUDA_SIGN_OF_NAN = set()",
             ("tests/test_nonfinite.py::-k Rprop",),
             "(a test's own premise) torch's CPU Rprop leaves θ where a gradient is NaN; ours makes it NaN"),
    Breakage("radam-log2-in-fp64-per-block", "fusedoptim/kernels/radam.py",
             "tl.exp2(step_64 * tl.log2(beta2).to(tl.float64))", "tl.exp2(step_64 * tl.log2(beta2_64))",
             ("tests/test_alu_budget.py",),
             "RAdam with int4 states issues more instructions per element than H200's bandwidth leaves time for"),
    Breakage("step-overhead-twin-ratio-against-fused", "scripts/step_overhead_rows.py",
             'row["ratio_to_twin_foreach"] = row["median_ms"] / twin',
             'row["ratio_to_twin_foreach"] = row["median_ms"] / baseline',
             ("tests/test_step_overhead.py",),
             "the step-overhead report's ratio to torch's foreach twin is the ratio to fused AdamW again"),
    Breakage("lbfgs-second-loop-adds-beta", "fusedoptim/optim/reference/lbfgs.py",
             "vectors.add_scaled_(r, al[i] - be_i, old_stps[i])",
             "vectors.add_scaled_(r, al[i] + be_i, old_stps[i])",
             ("tests/test_lbfgs.py::-k test_steps_like_torch and reference",),
             "L-BFGS's second loop adds β_i: the direction is no quasi-Newton one, the steps wander"),
    Breakage("lbfgs-history-drops-the-newest-pair", "fusedoptim/optim/reference/lbfgs.py",
             "                    old_dirs.pop(0)\n                    old_stps.pop(0)\n                    ro.pop(0)",
             "                    old_dirs.pop()\n                    old_stps.pop()\n                    ro.pop()",
             ("tests/test_lbfgs.py::-k test_steps_like_torch and history and reference",),
             "a full L-BFGS history keeps its oldest pairs and forgets the curvature it just measured"),
    Breakage("lbfgs-closure-evaluated-after-the-last-iteration", "fusedoptim/optim/reference/lbfgs.py",
             "            if n_iter != max_iter:  # the last iteration's f and g would go unused: torch skips them",
             "            if True:",
             ("tests/test_lbfgs.py::-k test_steps_like_torch and max-iter and reference",),
             "one closure evaluation more per step than torch's LBFGS: func_evals and the cost differ"),
    Breakage("lbfgs-fused-previous-gradient-kept", "fusedoptim/kernels/lbfgs.py",
             "return grad - states[0], (grad,)",
             "return grad - states[0], (states[0],)",
             ("tests/test_lbfgs.py::-k test_steps_like_torch and quadratic and triton",),
             "the fused L-BFGS keeps the first gradient as g_prev: every y after the first is wrong"),
    Breakage("lbfgs-fused-dot-reads-one-vector", "fusedoptim/kernels/lbfgs.py",
             "return (param * grad,)  # ⟨x, y⟩",
             "return (grad * grad,)  # ⟨x, y⟩",
             ("tests/test_lbfgs.py::-k test_steps_like_torch and quadratic and triton",),
             "the fused L-BFGS's dot products read one vector twice: ⟨y, y⟩ for ⟨y, s⟩"),
    Breakage("muon-gram-tiles-not-mirrored", "fusedoptim/kernels/newton_schulz.py",
             "        tl.store(out_ptr + rows_j[None, :] * stride_out_row + rows_i[:, None] * stride_out_col, value, "
             "mask=mask)",
             "        pass",
             ("tests/test_muon.py::test_the_gram_product_computes_the_upper_tiles_and_mirrors_them",
              "tests/test_muon.py::-k test_newton_schulz_kernel_matches_the_oracle and two-tiles"),
             "X·Xᵀ's tiles below the diagonal are left unwritten: Newton–Schulz multiplies by garbage"),
    Breakage("muon-polynomial-without-b", "fusedoptim/kernels/newton_schulz.py",
             "        value = beta * c.to(tl.float32) + value",
             "        value = value",
             ("tests/test_muon.py::-k test_newton_schulz_kernel_matches_the_oracle",),
             "the fused Newton–Schulz drops b·A from B = b·A + c·A·A: its update is no orthogonalization"),
    Breakage("muon-fused-nesterov-ignored", "fusedoptim/kernels/muon.py",
             "    if FLAGS.NESTEROV:",
             "    if False:",
             ("tests/test_muon.py::-k test_steps_like_torch and defaults and triton",),
             "fo.Muon(impl='triton') orthogonalizes B instead of (1 − μ)g + μB under the default nesterov=True"),
    Breakage("muon-match-rms-adamw-without-0.2", "fusedoptim/optim/reference/muon.py",
             "    return lr * 0.2 * math.sqrt(max(rows, cols))",
             "    return lr * math.sqrt(max(rows, cols))",
             ("tests/test_muon.py::-k test_steps_like_torch and match-rms",),
             "adjust_lr_fn='match_rms_adamw' steps 5× too far: AdamW's lr no longer carries over"),
    Breakage("adafactor-column-gathered-by-row", "fusedoptim/kernels/multi_tensor.py",
             "    columns = (offsets // matrix_numel) * row_length + offsets % row_length",
             "    columns = (offsets // matrix_numel) * row_length + offsets // row_length % row_length",
             ("tests/test_adafactor.py::-k test_steps_like_torch and default and triton",),
             "the fused Adafactor reads the wrong column statistic: V̂ is no longer R·C, the steps are mis-scaled"),
    Breakage("adafactor-stack-columns-of-the-first-matrix", "fusedoptim/kernels/multi_tensor.py",
             "    columns = (offsets // matrix_numel) * row_length + offsets % row_length",
             "    columns = offsets % row_length",
             ("tests/test_adafactor.py::-k test_steps_like_torch and default and triton",),
             "a 3-D param (a stack of matrices) reads every matrix's columns from the first one's statistics"),
    Breakage("adafactor-column-sums-of-g", "fusedoptim/kernels/adafactor.py",
             "tl.sum(grad * grad, axis=0)", "tl.sum(grad, axis=0)",
             ("tests/test_adafactor.py::-k test_steps_like_torch and default and triton",),
             "col_var averages g instead of g²: a negative second moment, NaN steps"),
    Breakage("adafactor-no-clipping", "fusedoptim/optim/adafactor.py",
             "        denom = max(1.0, math.sqrt(update_square) / ((numel ** 0.5) * group[\"d\"]))",
             "        denom = 1.0",
             ("tests/test_adafactor.py::-k test_steps_like_torch and clipped and triton",),
             "the fused Adafactor never clips its update by d: early steps are too large"),
    Breakage("adafactor-decay-after-the-rms", "fusedoptim/optim/reference/adafactor.py",
             "        alpha = max(eps2, param.norm(2).item()",
             "        param.mul_(1 - lr * group[\"weight_decay\"])\n        alpha = max(eps2, param.norm(2).item()",
             ("tests/test_adafactor.py::-k test_steps_like_torch and weight-decay and reference",),
             "the oracle decays θ before measuring RMS(θ) (and twice): α_t and θ differ from torch's"),
    Breakage("adafactor-eps1-unsquared", "fusedoptim/optim/adafactor.py",
             "eps1_squared=eps1 * eps1", "eps1_squared=eps1",
             ("tests/test_adafactor.py::-k test_steps_like_torch and eps-pair and triton",),
             "the fused Adafactor floors V̂ at ε₁ instead of ε₁²: updates of small gradients shrink"),
    Breakage("adafactor-maximize-ignored", "fusedoptim/kernels/adafactor.py",
             "    if FLAGS.MAXIMIZE:\n        update = -update", "    if False:\n        update = -update",
             ("tests/test_adafactor.py::-k test_steps_like_torch and maximize and triton",),
             "maximize=True descends"),
    Breakage("adafactor-fsdp2-column-sums-of-the-shard", "fusedoptim/optim/adafactor.py",
             "                     + [column_sums[i] for i in split_matrices] + [row_totals[i]",
             "                     + [row_totals[i]",
             ("tests/test_adafactor_fsdp2.py::test_fsdp2_shards_step_as_the_whole_tensors",),
             "FSDP2 Adafactor: each rank's col_var averages its own rows only; the ranks' C differ"),
    Breakage("adafactor-fsdp2-mean-row-of-the-shard", "fusedoptim/optim/adafactor.py",
             "[column_sums[i] for i in split_matrices] + [row_totals[i] for i in split_matrices], shard_group)",
             "[column_sums[i] for i in split_matrices], shard_group)",
             ("tests/test_adafactor_fsdp2.py::test_fsdp2_shards_step_as_the_whole_tensors",),
             "FSDP2 Adafactor: mean(R) of a shard's rows only: V̂ mis-scaled on each rank"),
    Breakage("adafactor-fsdp2-update-norm-of-the-shard", "fusedoptim/optim/adafactor.py",
             "    _sum_over_shards([update_squares[i] for i in factored if sharded[i]], shard_group)",
             "",
             ("tests/test_adafactor_fsdp2.py::test_fsdp2_shards_step_as_the_whole_tensors",),
             "FSDP2 Adafactor: RMS(U) of a matrix from one shard: each rank clips its rows differently"),
    Breakage("adafactor-fsdp2-theta-norm-of-the-shard", "fusedoptim/optim/adafactor.py",
             "    _sum_over_shards([theta_squares[i] for i in range(len(params)) if sharded[i]]\n"
             "                     + [update_squares[i] for i in vectors if sharded[i]]\n",
             "    _sum_over_shards(",
             ("tests/test_adafactor_fsdp2.py::test_fsdp2_shards_step_as_the_whole_tensors",),
             "FSDP2 Adafactor: α from RMS(θ) of one shard, and vectors clipped by one shard's RMS(U)"),
    Breakage("adafactor-fsdp2-column-statistics-sharded", "fusedoptim/optim/adafactor.py",
             "    columns = [Replicate()] if param.dim() == 2 else param.placements",
             "    columns = param.placements",
             ("tests/test_adafactor_fsdp2.py::test_fsdp2_statistics_are_placed_as_their_shards_and_column_statistics_replicated",),
             "a matrix's col_var, the same on every rank, described as split: DCP would save and load its rows apart"),
    Breakage("adafactor-fsdp2-reference-on-shards", "fusedoptim/optim/adafactor.py",
             '            if impl == "reference" and any(isinstance(p, DTensor) for p in params):',
             '            if False:',
             ("tests/test_adafactor_fsdp2.py::test_fsdp2_reference_is_refused_before_any_change",),
             "Adafactor's reference on FSDP2 shards: DTensor ops of unknown placement instead of a clear error"),
    Breakage("adafactor-claims-amp-scaling", "fusedoptim/optim/adafactor.py",
             '    STATE = ("step", "row_var", "col_var", "variance")',
             '    STATE = ("step", "row_var", "col_var", "variance")\n    _step_supports_amp_scaling = True',
             ("tests/test_adafactor.py::-k grad_scaler",),
             "GradScaler hands Adafactor its scaled gradients and never skips: inf steps write NaN, statistics 2^20× too large"),
    Breakage("adafactor-half-column-sums-in-the-params-dtype", "fusedoptim/optim/adafactor.py",
             'column_sums = {i: torch.zeros(states[i]["col_var"].shape, dtype=torch.float32, device=device)',
             'column_sums = {i: torch.zeros_like(states[i]["col_var"])',
             ("tests/test_adafactor.py::-k half_precision",),
             "bf16/fp16 Adafactor sums Σ_i g² into a buffer of the param's dtype (the interpreter refuses the bf16 "
             "atomic add; a GPU would round each tile's add)"),
    Breakage("unregistered-checks-group-by-group", "fusedoptim/optim/unregistered.py",
             "            stepped.append((group, params, self.chosen_impl(params)))",
             "            yield group, params, self.chosen_impl(params)",
             ("tests/test_adafactor.py::-k refused_before_any_change and complex",
              "tests/test_muon.py::test_a_bad_group_is_refused_before_any_group_changes"),
             "a complex param in a second group is refused after the first group has stepped (Adafactor, Muon)"),
    Breakage("sparse-adam-decays-absent-rows", "fusedoptim/optim/reference/sparse_adam.py",
             'state["exp_avg"][held] = exp_avg.to(state["exp_avg"].dtype)',
             'state["exp_avg"].mul_(beta1)[held] = exp_avg.to(state["exp_avg"].dtype)',
             ("tests/test_torch_optim_db.py::-k sparse_gradients_step_like_torch and SparseAdam",),
             "SparseAdam as dense Adam would do it: the momentum of embedding rows no batch named fades"),
    Breakage("sparse-adam-takes-impl-triton", "fusedoptim/optim/validation.py",
             'if impl not in ("auto", *rule.impls):', "if False:",
             ("tests/test_torch_optim_db.py::-k dense_gradient_is_refused",),
             "SparseAdam(impl='triton') silently runs the reference: a user measuring the kernel times the oracle"),
    Breakage("sparse-adam-takes-a-dense-gradient", "fusedoptim/optim/validation.py",
             "if rule.only_sparse_gradients and not grad.is_sparse:", "if False:",
             ("tests/test_torch_optim_db.py::-k dense_gradient_is_refused",
              "tests/test_bad_input.py::-k layout and SparseAdam"),
             "SparseAdam given nn.Embedding(sparse=False)'s gradient: an obscure error from inside the oracle"),
    Breakage("sparse-adam-takes-quantized-states", "fusedoptim/optim/validation.py",
             "if is_quantized(state_dtype) and not rule.quantized_states:", "if False:",
             ("tests/test_quantized_state.py::-k cannot_be_quantized",),
             "SparseAdam(state_dtype='int8'): the rows no batch names drift as their blocks are requantized"),
    Breakage("a-switch-the-twin-lacks-is-taken", "fusedoptim/optim/torch_switches.py",
             "        if unknown:  # torch's own words", "        if False:  # torch's own words",
             ("tests/test_torch_optim_db.py::-k twin_does_not_take",),
             "SparseAdam(fused=True) fails with another error than torch's, ASGD(fused=True) works here only"),
    Breakage("sparse-adam-takes-lr-zero", "fusedoptim/optim/registry.py", "lr(1e-3, zero=False)", "lr(1e-3)",
             ("tests/test_torch_twins.py::-k refuse and SparseAdam",),
             "SparseAdam(lr=0), which torch refuses: code that relied on that check silently trains nothing"),
    Breakage("sparse-adam-takes-eps-zero", "fusedoptim/optim/registry.py", '√v + eps", zero=False)', '√v + eps")',
             ("tests/test_torch_twins.py::-k refuse and SparseAdam",),
             "SparseAdam(eps=0), which torch refuses: a held zero gradient on a fresh row divides 0 by 0"),
)


def pytest_arguments(tests) -> list:
    arguments = []
    for test in tests:
        path, _, expression = test.partition("::-k ")
        arguments += [path, "-k", expression] if expression else [test]
    return arguments


def copy_of_checkout(destination: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def run(breakage: Breakage, copy: Path) -> str:
    """caught, missed, or error (the tests could not run: pytest's exit status 2 to 5)."""
    path = copy / breakage.path
    original = path.read_text()
    if original.count(breakage.text) != 1:
        return f"error: the text is in {breakage.path} {original.count(breakage.text)} times, not once"
    path.write_text(original.replace(breakage.text, breakage.replacement))
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                                 *pytest_arguments(breakage.tests)], cwd=copy, capture_output=True, text=True)
    finally:
        path.write_text(original)
    return {0: "MISSED", 1: "caught"}.get(result.returncode, f"error (pytest exit {result.returncode}):\n"
                                                             + result.stdout[-2000:])


def main(names) -> int:
    chosen = [b for b in BREAKAGES if not names or any(name in b.name for name in names)]
    results = {}
    with tempfile.TemporaryDirectory(prefix="breakages-") as directory:
        copy_of_checkout(Path(directory))
        for breakage in chosen:
            start = time.monotonic()
            results[breakage.name] = run(breakage, Path(directory))
            print(f"{results[breakage.name].splitlines()[0]:8} {breakage.name} ({time.monotonic() - start:.0f} s): "
                  f"{breakage.why}", flush=True)
            if "\n" in results[breakage.name]:
                print(results[breakage.name])
    missed = [name for name, result in results.items() if result != "caught"]
    print(f"{len(results) - len(missed)} of {len(results)} caught" + (f"; not caught: {missed}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
