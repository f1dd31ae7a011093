"""Which impl runs a param group, and why a step cannot be captured in a CUDA graph: checks of a
``GroupPlan`` (``optim.plan``) made while it is built, before any tensor changes."""
import torch

from fusedoptim.kernels.launcher import INTERPRETED
from fusedoptim.kernels.slots import layout_problem
from fusedoptim.optim.quantization import FORMATS


def real_view(tensor: torch.Tensor) -> torch.Tensor:
    """A complex tensor as torch.optim steps it: its real and imaginary parts, torch.view_as_real."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def resolve_impl(plan, impl: str, existing: list) -> str:
    """The impl that will run ``plan``'s group: "auto" takes the kernel where it can run every param as it
    is laid out, and the reference elsewhere; "triton" refuses, naming the param, what it cannot run."""
    rule = plan.rule
    if impl == "reference" or not plan.params or not rule.has_kernel:  # "triton" without a kernel: check_options
        return "reference"
    runnable = kernels_run_on({p.device for p in plan.locals})
    # int4 codes are packed flat, two a byte, not laid out as the param: checked by check_quantized_state
    walked = () if plan.kinds and FORMATS[plan.state_dtype].bits == 4 else plan.state_names
    for param, grad, state, name in zip(plan.locals, plan.grads, existing, plan.names):
        problem, param = None, real_view(param)
        if grad.is_sparse:
            problem = RuntimeError(f"the gradient of {name} is sparse; the fused kernel reads dense gradients")
        elif not runnable:
            problem = RuntimeError(f"impl='triton' needs the params of param group {plan.index} on a CUDA device, "
                                   "or on the CPU with TRITON_INTERPRET=1 set before triton is imported")
        elif param.dtype not in rule.dtypes:
            problem = TypeError(f"{name} has dtype {param.dtype}; the Triton kernels support {list(rule.dtypes)}")
        else:
            for what, tensor in (("param", param), ("gradient", real_view(grad)),
                                 *((f"state {n!r}", real_view(state[n])) for n in (*walked, *plan.master_names)
                                   if n in state)):
                text = layout_problem(f"{what} of {name}", tensor, param)
                if text:
                    problem = ValueError(text)
                    break
        if problem is not None:
            return fall_back(impl, problem, rule.name)
    return "triton"


def kernels_run_on(devices) -> bool:
    """Whether the kernels run on ``devices``: all CUDA, or all the CPU under the Triton interpreter."""
    return all(d.type == "cuda" for d in devices) or (INTERPRETED and all(d.type == "cpu" for d in devices))


def fall_back(impl: str, problem: Exception, name: str) -> str:
    """What the kernels cannot run: under impl="auto" the reference runs it; under impl="triton"
    ``problem`` is raised, with its type, in ``name``'s words and the way out."""
    if impl == "auto":
        return "reference"
    raise type(problem)(f"{name}: {problem}; or use impl='reference' (or impl='auto', which takes the reference "
                        "for such params)")

def check_capturable(plan, existing) -> None:
    """Why ``plan``'s group cannot be captured as it is. A step recorded into a CUDA graph must neither ask the host anything nor make its state:
    a state made during capture would be made again, zeroed, at every replay."""
    rule = plan.rule
    if plan.impl != "triton":
        raise RuntimeError(f"{rule.name}: a CUDA graph can capture only the fused step; the reference reads its "
                           f"step counter on the host. Use impl='triton' (or 'auto' with params of a dtype in "
                           f"{list(rule.dtypes)})")
    names = (*rule.scalar_states, *plan.state_names, *plan.master_names)
    if any(name not in state for state in existing for name in names):
        raise RuntimeError(f"{rule.name}: the optimizer state does not exist yet; run a few steps eagerly (on a "
                           "side stream, as torch.cuda.graphs' recipe warms up) before capturing step(), so that "
                           "every state tensor is made outside the graph")
    raise RuntimeError(f"{rule.name}: the step's launch plan changed since the last eager step (other params, "
                       "states or options), and building it would copy tables from the host into the graph; run "
                       "one eager step with what the captured step will see before capturing it")
