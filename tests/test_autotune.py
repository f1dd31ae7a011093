"""The tuner and its tables: the lookup (buckets, nearest, unknown GPU, unknown triton version), the file's
round trip, a malformed file (launches warn and take the defaults, a write refuses it), the command without
a GPU, and a tuning pass that never writes the caller's tensors."""
import json
import re
import warnings

import pytest
import torch
import triton

from fusedoptim import autotune
from fusedoptim import optim
from fusedoptim.autotune import DEFAULT_CONFIGS, LaunchConfig, default_config, launch_config, size_bucket
from fusedoptim.tuner.__main__ import main as autotune_main
from fusedoptim.autotune.table import TuningTable, entry, read, write
from fusedoptim.tuner import scratch_copy, tune, tune_optimizer
from fusedoptim.optim.registry import RULES
from tests.conftest import make_params, random_grads
from tests.test_amp import assert_identical, snapshot

SMALL = LaunchConfig(block_size=512, blocks_per_program=1, num_warps=2, num_stages=1)
WIDE = LaunchConfig(block_size=4096, blocks_per_program=8, num_warps=8, num_stages=2)
H200 = ("NVIDIA H200", (9, 0))


def adamw_table():
    return TuningTable([entry("AdamW", torch.float32, 14, SMALL, 1.0, 2.0),
                        entry("AdamW", torch.float32, 22, WIDE, 1.0, 2.0)])


@pytest.mark.parametrize("numel, bucket", [(0, 0), (1, 0), (2, 1), (3, 2), (4096, 12), (4097, 13), (2**26, 26)])
def test_a_tensor_falls_in_the_bucket_of_the_next_power_of_two(numel, bucket):
    assert size_bucket(numel) == bucket


@pytest.mark.parametrize("numel, expected", [
    (2**14, SMALL), (2**13 + 1, SMALL),  # the tuned bucket itself
    (2**22, WIDE), (2**30, WIDE), (1, SMALL),  # beyond the tuned range: the nearest end
    (2**20, WIDE),  # bucket 20 is 2 from 22 and 6 from 14
    (2**18, SMALL),  # a tie (4 and 4): the smaller bucket, whose chunks make more programs
])
def test_lookup_takes_the_nearest_tuned_bucket(numel, expected):
    assert adamw_table().lookup("AdamW", torch.float32, numel) == expected


def test_lookup_of_an_untuned_rule_or_dtype_is_none_and_the_launch_takes_the_default(monkeypatch):
    table = adamw_table()
    assert table.lookup("Lion", torch.float32, 2**14) is None
    assert table.lookup("AdamW", torch.bfloat16, 2**14) is None
    monkeypatch.setattr(autotune, "device_table", lambda index: table)  # a GPU with this table
    gpu = torch.device("cuda", 0)
    assert launch_config("AdamW", torch.float32, 2**22, gpu) == WIDE
    assert launch_config("Lion", torch.float32, 2**22, gpu) == DEFAULT_CONFIGS[4]
    assert launch_config("AdamW", torch.bfloat16, 2**22, gpu) == DEFAULT_CONFIGS[2]
    monkeypatch.setattr(autotune, "device_table", lambda index: None)  # a GPU with no table
    assert launch_config("AdamW", torch.float32, 2**22, gpu) == DEFAULT_CONFIGS[4]


def test_the_table_file_round_trips_and_keeps_other_triton_versions(tmp_path):
    path = tmp_path / "nvidia-h200.json"
    first = [entry("AdamW", torch.float32, 14, SMALL, 0.5, 0.75), entry("Tiger", torch.bfloat16, 22, WIDE, 1.5, 2.0)]
    write(path, *H200, "3.6.0", {"date": "2026-11-22", "torch": "2.11.0"}, first)
    write(path, *H200, "3.9.0", {"date": "2026-11-23", "torch": "2.13.0"}, first[:1])
    write(path, *H200, "3.6.0", {"date": "2026-11-24", "torch": "2.11.0"}, [entry("AdamW", torch.float32, 14, WIDE, 0.4, 0.75)])
    stored = read(path)
    assert stored["device"] == "NVIDIA H200" and stored["capability"] == [9, 0]
    assert stored["tables"]["3.9.0"]["entries"] == first[:1]
    assert stored["tables"]["3.6.0"]["date"] == "2026-11-24"
    table = TuningTable.for_device(*H200, "3.6.0", path=path)
    assert table.lookup("AdamW", torch.float32, 2**14) == WIDE  # the later entry replaced the earlier
    assert table.lookup("Tiger", torch.bfloat16, 2**22) == WIDE  # the other entry kept


def test_an_unknown_gpu_or_triton_version_or_capability_has_no_table(tmp_path):
    path = tmp_path / "nvidia-h200.json"
    assert TuningTable.for_device(*H200, "3.6.0", path=path) is None  # no file: a GPU never tuned
    write(path, *H200, "3.6.0", {}, [entry("AdamW", torch.float32, 14, SMALL, 1.0, 1.0)])
    with pytest.warns(UserWarning, match="not 3.9.0"):
        assert TuningTable.for_device(*H200, "3.9.0", path=path) is None
    with pytest.warns(UserWarning, match="compute capability"):
        assert TuningTable.for_device("NVIDIA H200", (10, 0), "3.6.0", path=path) is None
    with pytest.raises(ValueError, match="capability"):
        write(path, "NVIDIA H200", (10, 0), "3.6.0", {}, [])


VERSION = triton.__version__  # the table a launch reads


def tuned_h200(tables_dir):
    """A well-formed table of the H200 in ``tables_dir``: WIDE for AdamW fp32 at 2^22 (whose default_ms is
    null, as tune_optimizer writes it when the default config was not among the candidates)."""
    path = tables_dir / "nvidia-h200.json"
    write(path, *H200, VERSION, {}, [entry("AdamW", torch.float32, 14, SMALL, 1.0, 2.0),
                                     entry("AdamW", torch.float32, 22, WIDE, 1.0, None)])
    return path


def drop(field):
    def edit(stored):
        del stored["tables"][VERSION]["entries"][1][field]
    return edit


def set_field(field, value):
    def edit(stored):
        stored["tables"][VERSION]["entries"][1][field] = value
    return edit


def drop_tables(stored):
    del stored["tables"]


# (how the well-formed file is spoiled, what the message must name)
MALFORMED = {
    "not JSON": (None, r"not valid JSON: .* at line \d+, column \d+"),
    "an entry without num_warps": (drop("num_warps"), re.escape(
        f'tables["{VERSION}"].entries[1].num_warps is missing')),
    "a block_size not an integer": (set_field("block_size", "big"), re.escape(
        f'tables["{VERSION}"].entries[1].block_size must be a positive integer, got "big"')),
    "a bucket of true": (set_field("bucket", True), re.escape(
        f'tables["{VERSION}"].entries[1].bucket must be a non-negative integer, got true')),
    "no tables": (drop_tables, "tables is missing"),
}


def spoil(path, case: str) -> None:
    edit, _ = MALFORMED[case]
    if edit is None:
        path.write_text(path.read_text()[:-20])  # cut short, as by a full disk or an interrupted copy
        return
    stored = json.loads(path.read_text())
    edit(stored)
    path.write_text(json.dumps(stored, indent=1))


@pytest.fixture
def an_h200(monkeypatch, tmp_path):
    """cuda:0 is an H200 whose table file lives in tmp_path; the per-device table cache starts and ends empty."""
    monkeypatch.setattr("fusedoptim.autotune.table.TABLES", tmp_path)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: H200[0])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: H200[1])
    autotune.device_table.cache_clear()
    yield torch.device("cuda", 0)
    autotune.device_table.cache_clear()


def test_a_gpu_with_a_well_formed_table_launches_its_tuned_config_silently(an_h200, tmp_path):
    tuned_h200(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert launch_config("AdamW", torch.float32, 2**22, an_h200) == WIDE


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_table_warns_once_naming_file_and_field_and_launches_take_the_default(case, an_h200, tmp_path):
    spoil(tuned_h200(tmp_path), case)
    with pytest.warns(UserWarning, match=r"nvidia-h200\.json: " + MALFORMED[case][1]) as caught:
        assert launch_config("AdamW", torch.float32, 2**22, an_h200) == default_config(torch.float32)
        assert launch_config("AdamW", torch.float32, 2**14, an_h200) == default_config(torch.float32)
    assert len(caught) == 1, [str(w.message) for w in caught]  # once per device, not once per launch
    message = str(caught[0].message)
    assert "take the default configuration" in message and "python -m fusedoptim.tuner" in message


@pytest.mark.parametrize("case", MALFORMED)
def test_writing_into_a_malformed_table_raises_naming_the_field_and_leaves_the_file(case, tmp_path):
    path = tuned_h200(tmp_path)
    spoil(path, case)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"nvidia-h200\.json: " + MALFORMED[case][1] + ".*not overwritten"):
        write(path, *H200, VERSION, {}, [entry("Lion", torch.float32, 14, SMALL, 1.0, 2.0)])
    assert path.read_bytes() == before


def recording_timer(times: dict, seen: list):
    """Runs the step three times (as a benchmark would) and returns a made-up time per forced config."""
    def timer(step):
        config = autotune.forced_now()
        seen.append((config, step.__self__))
        for _ in range(3):
            step()
        return times[config]
    return timer


@pytest.mark.parametrize("name", ["AdamW", "Tiger", "SGDHD"])
def test_a_tuning_pass_leaves_the_callers_tensors_bit_identical(name):
    rule = RULES[name]
    params = make_params([(1023,), (3, 7, 5)], torch.float32, rule=rule)
    optimizer = getattr(optim, name)(params, lr=torch.tensor(1e-2), impl="triton")
    for seed in range(2):
        for p, g in zip(params, random_grads(params, seed)):
            p.grad = g
        optimizer.step()
    before = snapshot(optimizer, params) + [p.grad.clone() for p in params]
    seen = []
    entries = tune_optimizer(optimizer, recording_timer({SMALL: 2.0, WIDE: 1.0, DEFAULT_CONFIGS[4]: 3.0}, seen),
                             candidates=[SMALL, WIDE, DEFAULT_CONFIGS[4]])
    assert_identical(snapshot(optimizer, params) + [p.grad for p in params], before, f"{name}: the caller's tensors")
    assert [config for config, _ in seen] == [SMALL, WIDE, DEFAULT_CONFIGS[4]]
    scratch = seen[0][1]
    assert scratch is not optimizer
    assert not torch.equal(scratch.param_groups[0]["params"][0], params[0]), "the timed steps ran on the copy"
    assert entries == [entry(name, torch.float32, size_bucket(1023), WIDE, 1.0, 3.0)]


def test_the_scratch_copy_steps_as_the_callers_optimizer_with_every_option():
    """What is timed is the caller's step: a bf16 AdamW with int8 states and 24-bit masters, copied,
    steps to the same params and states as the original (a copy without the master's residual would
    time, and step, another update)."""
    params = make_params([(1023,)], torch.bfloat16)
    optimizer = optim.AdamW(params, lr=1e-2, state_dtype="int8", master_weight_bits=24, impl="triton")
    for seed in range(2):
        params[0].grad = random_grads(params, seed)[0]
        optimizer.step()
    scratch = scratch_copy(optimizer)
    assert scratch.master_weight_bits == 24 and scratch.state_dtype == "int8"
    copy = scratch.param_groups[0]["params"][0]
    optimizer.step()
    scratch.step()
    assert_identical(snapshot(scratch, [copy]), snapshot(optimizer, params), "the copy's step against the caller's")


def test_tune_times_every_candidate_on_a_scratch_tensor_of_the_bucket():
    seen = []
    result = tune(RULES["Lion"], torch.bfloat16, 12, torch.device("cpu"),
                  recording_timer({SMALL: 2.0, WIDE: 3.0, DEFAULT_CONFIGS[2]: 4.0}, seen), candidates=[SMALL, WIDE])
    assert [config for config, _ in seen] == [SMALL, WIDE, DEFAULT_CONFIGS[2]]  # the default, timed for reference
    assert seen[0][1].param_groups[0]["params"][0].numel() == 2**12
    assert result == entry("Lion", torch.bfloat16, 12, SMALL, 2.0, 4.0)


@pytest.mark.parametrize("interpreted", [True, False])
def test_the_command_without_a_gpu_times_nothing_and_says_so(interpreted, monkeypatch, capsys, tmp_path):
    if interpreted:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert autotune_main(["--rules", "AdamW", "--out", str(tmp_path / "table.json")]) == 0
    printed = capsys.readouterr().out
    assert "nothing benchmarked" in printed
    assert ("interpreter" if interpreted else "no CUDA GPU") in printed
    assert str(DEFAULT_CONFIGS[4]) in printed
    assert not (tmp_path / "table.json").exists()
