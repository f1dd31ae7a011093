r"""The race's three CPU-sized tasks, each with held-out data: a tiny character GPT, an MLP regression and a
small conv net on synthetic images.

Every task's data comes from a fixed data seed (the same for every rule and run seed); a run's seed
draws the model's initial weights and the order of its minibatches, so that two seeds differ by what
training luck alone changes. The validation set is disjoint from the training set: the GPT's is the
corpus's last tenth (tiny_transformer's split), the others' are fresh draws of the same distribution.

Sizes and steps are set by the race's time budget (every rule × 3 tasks × 5 lrs × 2 seeds, fp32 then
int8, under 20 minutes on 2 CPU cores): a run costs about 0.9 CPU-seconds on average here, the GPT's
most (scripts/reproductions/race.py has the measurement).

``target`` is each task's "steps to reach" level, fixed once so that it means the same for every rule:
a level AdamW at its default lr reaches within the run (measured while writing this: GPT at step ~240 of
600, conv ~240 of 400, MLP ~40 of 400, as the MLP learns fast and its noise floor, 0.01, is near); what
it stands against is written beside each.
"""
import functools
from typing import Callable, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from scripts.gpt import GPT, GPTConfig
from scripts.reproductions import tiny_transformer

DATA_SEED = 1234  # the data of every task: one draw, the same for every run


class Data(NamedTuple):
    train_inputs: torch.Tensor
    train_targets: torch.Tensor
    validation_inputs: torch.Tensor
    validation_targets: torch.Tensor


class Task(NamedTuple):
    name: str
    description: str
    data: Callable  # () -> Data
    model: Callable  # seed -> nn.Module
    loss: Callable  # (model, inputs, targets) -> scalar loss
    batch: int
    steps: int  # the budget of every entry on this task
    target: float  # validation loss that "steps to reach" counts to


class GPTData(NamedTuple):
    """The GPT's 'inputs' are token windows of context + 1 characters; its targets are within them."""
    windows: torch.Tensor


GPT_CONFIG = dict(context=16, width=32, blocks=1, heads=2)
VALIDATION_WINDOWS = 128  # of 16 + 1 characters: 2,048 predicted characters, enough to rank the rules


def gpt_data() -> Data:
    corpus = tiny_transformer.load_corpus()
    context = GPT_CONFIG["context"]
    count = (len(corpus.train) - 1) // context  # non-overlapping windows; a run draws its batches from them
    train = corpus.train[torch.arange(count).unsqueeze(-1) * context + torch.arange(context + 1)]
    validation = tiny_transformer.validation_windows(corpus.validation, context)[:VALIDATION_WINDOWS]
    return Data(train, train, validation, validation)


def gpt_model(seed: int) -> nn.Module:
    vocabulary = len(tiny_transformer.load_corpus().vocabulary)
    return tiny_transformer.make_model(GPTConfig(vocab=vocabulary, **GPT_CONFIG), seed)


def gpt_loss(model: GPT, inputs, targets) -> torch.Tensor:
    return model(inputs)


def regression_data(inputs: int = 16, train: int = 512, validation: int = 512, noise: float = 0.1) -> Data:
    """y = a fixed random two-layer tanh network of x (the teacher) plus Gaussian noise of ``noise``."""
    generator = torch.Generator().manual_seed(DATA_SEED)
    first, second = torch.randn(inputs, 32, generator=generator), torch.randn(32, 1, generator=generator)
    x = torch.randn(train + validation, inputs, generator=generator)
    y = torch.tanh(x @ first / inputs ** 0.5) @ second / 32 ** 0.5 + noise * torch.randn(len(x), 1, generator=generator)
    return Data(x[:train], y[:train], x[train:], y[train:])


def regression_model(seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))


def regression_loss(model, inputs, targets) -> torch.Tensor:
    return F.mse_loss(model(inputs), targets)


IMAGE_SIZE, CLASSES = 12, 4


def image_data(train: int = 512, validation: int = 512) -> Data:
    """Each class a fixed random pattern (smoothed noise), drawn shifted by up to 2 pixels either way and
    under noise as large as the pattern: a conv net must find the shape wherever it is."""
    generator = torch.Generator().manual_seed(DATA_SEED)
    patterns = F.avg_pool2d(torch.randn(CLASSES, 1, IMAGE_SIZE + 4, IMAGE_SIZE + 4, generator=generator), 3, 1, 1)
    patterns = patterns / patterns.std(dim=(1, 2, 3), keepdim=True)
    total = train + validation
    labels = torch.randint(CLASSES, (total,), generator=generator)
    rows, columns = (torch.randint(5, (total,), generator=generator) for _ in range(2))
    crops = torch.stack([patterns[label, :, row:row + IMAGE_SIZE, column:column + IMAGE_SIZE]
                         for label, row, column in zip(labels, rows, columns)])
    images = crops + torch.randn(crops.shape, generator=generator)
    return Data(images[:train], labels[:train], images[train:], labels[train:])


def conv_model(seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(16, CLASSES))


def conv_loss(model, inputs, targets) -> torch.Tensor:
    return F.cross_entropy(model(inputs), targets)


TASKS = {task.name: task for task in (
    # target: the unigram (character frequencies) loss is 3.41 on this text, ln 96 = 4.56 uniform
    Task("gpt", "character GPT (1 block, width 32, context 16) on the Docutils FAQ, batch 16",
         gpt_data, gpt_model, gpt_loss, 16, steps=600, target=3.0),
    # target: predicting the mean gives about 0.55; the noise floor is 0.01
    Task("mlp", "MLP 16-64-64-1 (tanh) regressing a random teacher network plus noise, batch 32",
         regression_data, regression_model, regression_loss, 32, steps=400, target=0.1),
    # target: chance is ln 4 = 1.39
    Task("conv", "2-layer conv net classifying 4 shifted noisy 12×12 patterns, batch 32",
         image_data, conv_model, conv_loss, 32, steps=400, target=1.0),
)}


@functools.lru_cache(maxsize=None)
def data_of(make: Callable) -> Data:
    """A task's data (``make`` its ``data``), made once per process (the race's workers each make their own)."""
    return make()


def with_batch(task: Task, factor: int) -> Task:
    """``task`` with ``factor`` times its batch for 1/``factor`` of its steps (the same examples): the
    large-batch variant a claim asks for."""
    return task._replace(name=f"{task.name} ×{factor} batch", batch=task.batch * factor,
                         steps=max(1, task.steps // factor),
                         description=f"{task.description} ×{factor}")


def batches(task: Task, steps: int, seed: int, batch: int = None) -> list:
    """``steps`` minibatches of the training set, (inputs, targets), drawn with replacement by ``seed``."""
    data = data_of(task.data)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(data.train_inputs), (steps, batch or task.batch), generator=generator)
    return [(data.train_inputs[pick], data.train_targets[pick]) for pick in picks]


def validation_loss(task: Task, model) -> float:
    data = data_of(task.data)
    with torch.no_grad():
        return task.loss(model, data.validation_inputs, data.validation_targets).item()
