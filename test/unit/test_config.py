import dataclasses
import re
import typing

import numpy as np
import pytest
import torch
from helpers import write_job_file

from tinytitan.config import ConfigError, DataSource, JobConfig, accumulation_steps, load_config, to_toml
from tinytitan.config.schedules import schedule_value


def test_no_arguments_gives_the_defaults():
    assert load_config([]) == JobConfig()


def test_command_line_overrides_the_file_and_later_flags_win(tmp_path):
    path = write_job_file(tmp_path, "[training]\nsteps = 5\nseq_len = 64\n[optimizer]\nlr = 1\n")
    config = load_config(
        [
            f"--job.config_file={path}",
            "--training.steps=7",
            "--training.steps",
            "9",
            "--lr_scheduler.warmup_steps=1",
            "--compile.enable",
            "--optimizer.beta2=0.5",
        ]
    )
    assert config.training.steps == 9  # the later of two flags
    assert config.training.seq_len == 64  # from the file
    assert config.optimizer.lr == 1.0 and isinstance(config.optimizer.lr, float)  # int accepted for float
    assert config.compile.enable is True  # a bare boolean flag
    assert config.optimizer.beta2 == 0.5


@pytest.mark.parametrize("key", ["job.name", "data.cache_dir", "training.steps", "optimizer.lr"])
def test_a_bare_flag_of_a_key_that_is_not_boolean_is_refused(key):
    with pytest.raises(ConfigError, match=rf"--{key} has no value: expected --{key}=VALUE"):
        load_config([f"--{key}", "--compile.enable"])  # the next argument is a flag, not the value
    assert load_config([f"--{key}", "70"]) != JobConfig()  # the same key with a value is fine


def test_data_sources_come_from_tables_or_an_inline_array(tmp_path):
    path = write_job_file(
        tmp_path,
        '[data]\ndataset = "sources"\n[[data.sources]]\nname = "slim"\npath = "/d/s"\nweight = 7\n'
        '[[data.sources]]\nname = "star"\npath = "/d/c"\nweight = 0.3\n',
    )
    assert load_config([f"--job.config_file={path}"]).data.sources == [
        DataSource("slim", "/d/s", 7.0),
        DataSource("star", "/d/c", 0.3),
    ]
    inline = load_config([f"--job.config_file={path}", '--data.sources=[{name="x", path="/x"}]'])
    assert inline.data.sources == [DataSource("x", "/x", 1.0)]  # replaces the file's list; default weight


def test_saved_config_loads_back_to_the_same_config(tmp_path):
    config = load_config(
        [
            "--training.steps=3",
            "--lr_scheduler.warmup_steps=2",
            '--job.name=a "quoted" name',
            "--metrics.enable_tensorboard=false",
            "--optimizer.lr=0.00123",
            "--lr_scheduler.min_lr=1e-5",
            "--data.dataset=sources",
            '--data.sources=[{name="a", path="/p q", weight=2}, {name="b", path="/r", weight=[[0, 0], [30, 1.5]]}]',
        ]
    )
    assert config.data.sources[1].weight == [[0, 0.0], [30, 1.5]]
    path = write_job_file(tmp_path, to_toml(config))
    reloaded = load_config([f"--job.config_file={path}"])
    assert dataclasses.replace(reloaded, job=dataclasses.replace(reloaded.job, config_file="")) == config


@pytest.mark.parametrize(
    "toml, flags, expected",
    [
        ("[trainin]\nsteps = 1\n", [], ["job.toml", "unknown section 'trainin'", "training"]),
        ("[training]\nstepz = 1\n", [], ["job.toml", "unknown key 'training.stepz'", "training.steps"]),
        ('[training]\nsteps = "ten"\n', [], ["job.toml", 'training.steps = "ten"', "expected an integer >= 1"]),
        ("[training]\nsteps = true\n", [], ["job.toml", "training.steps = true", "expected an integer"]),
        ("[training]\nsteps = 0\n", [], ["job.toml", "training.steps = 0", "expected an integer >= 1"]),
        ("[optimizer]\nlr = 0.0\n", [], ["job.toml", "optimizer.lr = 0.0", "expected a number > 0.0"]),
        ("[optimizer]\nbeta2 = 1.0\n", [], ["optimizer.beta2 = 1.0", "< 1.0"]),
        ('[model]\nflavor = "huge"\n', [], ['model.flavor = "huge"', "one of 'debug', 'llama_20m'"]),
        ("[training]\n[training.nested]\nx = 1\n", [], ["training.nested", "expected a value, got a table"]),
        ("steps = 3\n", [], ["top-level key 'steps'", "expected a [section] table"]),
        ("[training\n", [], ["job.toml", "not valid TOML"]),
        ("", ["--training.steps=-3"], ["command line", 'training.steps = "-3"', "expected an integer >= 1"]),
        ("", ["--optimizer.lr=nan"], ['optimizer.lr = "nan"', "expected a finite number > 0.0"]),
        ("", ["--compile.enable=maybe"], ['compile.enable = "maybe"', "expected a boolean"]),
        ("", ["--training.seq_len=4096"], ["training.seq_len = 4096", "at most 1024", "'debug'"]),
        ("", ["--lr_scheduler.min_lr=1", "--optimizer.lr=0.1"], ["lr_scheduler.min_lr = 1.0", "at most optimizer.lr"]),
        ("", ["training.steps=3"], ["argument 'training.steps=3'", "--section.key=value"]),
        ("", ["--data.dataset=sources"], ["data.sources is empty", "[[data.sources]]"]),
        ("", ["--data.document_masking"], ["data.document_masking = true", 'expected model.attention = "flex"']),
        ("", ["--model.attention=flesh"], ['model.attention = "flesh"', "'sdpa', 'flex', 'flash'"]),
        ('[[data.sources]]\nname = "a"\npat = "/x"\n', [], ["job.toml", "unknown key 'data.sources[0].pat'"]),
        ('[[data.sources]]\nname = "a"\npath = "/x"\nweight = 0\n', [], ["data.sources[0].weight = 0", "> 0.0"]),
        ("", ["--data.sources=[1, 2]"], ["data.sources: expected an array of tables with the keys name"]),
        # a weight schedule: steps in order, values >= 0, never every source at 0
        (
            '[[data.sources]]\nname = "a"\npath = "/x"\nweight = [[10, 1.0], [5, 2.0]]\n',
            [],
            ["data.sources[0].weight = [[10, 1.0], [5, 2.0]]", "> 0.0, or a schedule [[step, value], ...]"],
        ),
        ('[[data.sources]]\nname = "a"\npath = "/x"\nweight = [[0, -1]]\n', [], ["weight = [[0, -1]]", "values >= 0"]),
        (
            "",
            [
                "--data.dataset=sources",
                '--data.sources=[{name="a", path="/x", weight=[[0, 1], [4, 0], [9, 1]]}, '
                '{name="b", path="/y", weight=[[4, 0], [8, 1]]}]',
            ],
            ["data.sources: every weight is 0 at step 4"],
        ),
        ("", ["--checkpoint.initial_load_optimizer"], ["initial_load_optimizer = true", "initial_load_path"]),
        (
            "",
            ["--data.dataset=sources", '--data.sources=[{name="a", path="/x"}, {name="a", path="/y"}]'],
            ['data.sources[1].name = "a"', "unique"],
        ),
        ("", ["--data.dataset=sources", '--data.sources=[{name="a"}]'], ["data.sources[0]", "expected both to be set"]),
        # numbers beyond what the code takes: named with the limit, never a traceback
        ("", [f"--training.seed={2**64}"], [f'training.seed = "{2**64}"', f"<= {2**64 - 1}"]),
        (f"[training]\nseed = {2**64}\n", [], [f"training.seed = {2**64}", f"<= {2**64 - 1}"]),
        (
            "",
            [f"--training.steps={2**63}"],
            [f'training.steps = "{2**63}"', f"expected an integer >= 1 and <= {2**63 - 1}"],
        ),
        ("[optimizer]\nlr = 1" + "0" * 400 + "\n", [], ["job.toml", "optimizer.lr = 1000", "expected a number > 0.0"]),
        ("[optimizer]\nlr = inf\n", [], ["optimizer.lr = inf", "expected a finite number > 0.0"]),
        ("", ["--optimizer.eps=-inf"], ['optimizer.eps = "-inf"', "expected a finite number > 0.0"]),
        # a warmup that leaves out the decay to min_lr, or the peak too
        (
            "",
            ["--training.steps=10", "--lr_scheduler.warmup_steps=10"],
            ["lr_scheduler.warmup_steps = 10", "fewer than training.steps = 10", "cosine decay reaches min_lr"],
        ),
        (
            "",
            ["--training.steps=10", "--lr_scheduler.decay_type=constant", "--lr_scheduler.warmup_steps=11"],
            ["lr_scheduler.warmup_steps = 11", "at most training.steps = 10", "reaches its peak"],
        ),
        ("", ["--training.steps=10"], ["lr_scheduler.warmup_steps = 20", "fewer than training.steps = 10"]),
    ],
)
def test_bad_config_names_source_key_value_and_expectation(tmp_path, toml, flags, expected):
    path = write_job_file(tmp_path, toml)
    with pytest.raises(ConfigError) as error:
        load_config([f"--job.config_file={path}", *flags])
    for fragment in expected:
        assert fragment in str(error.value)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="no_such.toml: no such file"):
        load_config([f"--job.config_file={tmp_path / 'no_such.toml'}"])


def test_tinyllama_recipe_carries_the_published_hyperparameters():
    for recipe, ranks, accumulation in (("tinyllama_1b.toml", 16, 8), ("tinyllama_1b_1gpu.toml", 1, 128)):
        config = load_config([f"--job.config_file=train_configs/{recipe}"])
        t, o, s = config.training, config.optimizer, config.lr_scheduler
        assert (config.model.flavor, t.seq_len, t.global_batch_tokens, t.steps) == (
            "tinyllama_1b",
            2048,
            2_097_152,
            1_430_512,
        )
        assert t.steps * t.global_batch_tokens >= 3e12 > (t.steps - 1) * t.global_batch_tokens  # 3T tokens
        assert (o.lr, s.min_lr, s.warmup_steps, s.decay_type) == (4e-4, 4e-5, 2000, "cosine")
        assert (o.weight_decay, o.beta1, o.beta2, t.max_norm) == (0.1, 0.9, 0.95, 1.0)
        assert [(d.name, d.weight) for d in config.data.sources] == [("slimpajama", 0.693584), ("starcoder", 0.306416)]
        assert config.checkpoint.interval == 5000 and t.mixed_precision == "bfloat16" and config.compile.enable
        assert accumulation_steps(config.training, ranks) == accumulation


def test_continued_pretraining_recipes_carry_their_sources_numbers():
    code = load_config(["--job.config_file=train_configs/tinyllama_1b_code_continue.toml"])
    t, s = code.training, code.lr_scheduler
    assert (t.global_batch_tokens, t.steps, code.optimizer.lr, s.min_lr, s.warmup_steps) == (
        360 * 2048,
        10000,
        2e-4,
        2e-5,
        0,
    )
    assert accumulation_steps(t, 6) == 10 and [d.name for d in code.data.sources] == ["starcoder"]
    stage2 = load_config(["--job.config_file=train_configs/tinyllama_1b_v1_1_stage2.toml"])
    weights = [d.weight for d in stage2.data.sources]
    ramp_end = weights[1][-1][0]
    assert ramp_end * stage2.training.global_batch_tokens == pytest.approx(6e9, rel=1e-3)  # "the first ~6B tokens"
    for step, shares in ((0, [1.0, 0.0, 0.0]), (ramp_end // 2, [0.875, 0.075, 0.05]), (ramp_end, [0.75, 0.15, 0.1])):
        values = [schedule_value(w, step) for w in weights]
        assert [v / sum(values) for v in values] == pytest.approx(shares, abs=2e-4)
    assert accumulation_steps(stage2.training, 16) == 7


def _keys():
    """(key, type, flag template) for every scalar key, and each key of a table in an array of tables."""
    for section in dataclasses.fields(JobConfig):
        for f in dataclasses.fields(section.type):
            key = f"{section.name}.{f.name}"
            if typing.get_origin(f.type) is not list:
                yield key, f.type, f"--{key}={{}}"
                continue
            for g in dataclasses.fields(typing.get_args(f.type)[0]):
                yield f"{key}[0].{g.name}", g.type, f'--{key}=[{{{{name="a", path="/a", {g.name}={{}}}}}}]'


KEYS = list(_keys())


@pytest.mark.parametrize("key, flag", [(k, flag) for k, t, flag in KEYS if t is float])
@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e999"])
def test_every_number_key_refuses_what_is_not_finite(key, flag, text):
    with pytest.raises(ConfigError, match=rf"{re.escape(key)} = .*: expected a finite number"):
        load_config([flag.format(text)])


@pytest.mark.parametrize("key, flag", [(k, flag) for k, t, flag in KEYS if t is int])
def test_every_integer_key_refuses_what_no_int64_holds(key, flag):
    with pytest.raises(ConfigError, match=rf"{re.escape(key)} = .*: expected an integer .*<= "):
        load_config([flag.format(2**64)])


def test_the_largest_seed_accepted_is_one_torch_and_numpy_take():
    largest = load_config([f"--training.seed={2**64 - 1}"]).training.seed
    torch.Generator().manual_seed(largest)  # as torch.manual_seed seeds the default one
    np.random.default_rng([largest, 0])  # as the data streams seed theirs
    with pytest.raises((RuntimeError, ValueError)):  # the limit is torch's own
        torch.Generator().manual_seed(largest + 1)
