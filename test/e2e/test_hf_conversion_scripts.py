"""Hugging Face interop as a user meets it, through the scripts: a checkpoint trained on 2 ranks
exported and loaded by transformers (weights, logits, tokenizer ids), Hugging Face folders imported
and exported back bit for bit, generation against transformers' generate and by scripts/generate.py,
and bad input refused in one line."""

import json
import shutil

import pytest
import torch
import torch.distributed.checkpoint as dcp
from helpers import LLAMA2_TOKENIZER, ONE_THREAD, awkward_hf_model, run_command, run_python

from tinytitan import dcp_reader
from tinytitan.data.builtin_corpus import code_documents, prose_documents
from tinytitan.data.tokenizer import Tokenizer
from tinytitan.generation import Sampling, generate
from tinytitan.hf.mapping import to_hf_name
from tinytitan.hf.tokenizer import write_hf_tokenizer
from tinytitan.model_files import MODEL_ARGS_FILE, load_model
from tinytitan.models.llama import FLAVORS, build_model

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

STEPS = 6
# Two shared CPU cores: one thread per process is many times faster than two contending ones.
EXPORT = "scripts/convert_dcp_to_hf.py"
IMPORT = "scripts/convert_hf_to_dcp.py"
GENERATE = "scripts/generate.py"

# Prose and code with what tokenizers get wrong: indentation, whitespace runs, leading spaces,
# tabs, CRLF, digits, non-Latin text, emoji (byte fallback) and special-token text inside code.
MIXED_TEXTS = [
    "Hello world\n    def f(x): return 1",
    "  two leading spaces, trailing   ",
    "class A:\n    def __init__(self):\n        self.x = [1, 22, 333]\n\n\treturn  {'a': 3.14}\r\n",
    "if x:\n" + "".join(" " * n + "y\n" for n in range(40)),
    "café naïve 日本語 🙂 — «quotes»",
    "pattern = re.compile(r'(?P<s>\\w+)</s><unk>')",
    " ",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def check_ok(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def check_refused(result, message: str):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def leftovers(folder) -> list[str]:
    """Temporary folders a conversion left behind."""
    return [path.name for path in folder.iterdir() if ".tmp-" in path.name or ".old-" in path.name]


def dcp_model(checkpoint, args) -> dict[str, torch.Tensor]:
    """The model tensors of a checkpoint, read independently of the scripts."""
    state = {"model": build_model(args, "cpu").state_dict()}
    dcp.load(state, checkpoint_id=str(checkpoint), no_dist=True)
    return state["model"]


def hf_tensors(folder) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(safetensors_torch.load_file(str(file)))
    return tensors


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_cache):
    """The debug model trained a few steps on 2 ranks: its run folder and last checkpoint."""
    root = tmp_path_factory.mktemp("run")
    check_ok(
        run_command(
            "./run_train.sh",
            f"--job.dump_folder={root}",
            f"--data.cache_dir={corpus_cache}",
            f"--training.steps={STEPS}",
            "--training.seq_len=64",
            "--training.global_batch_tokens=512",
            "--training.micro_batch_size=4",
            "--optimizer.lr=3e-3",
            "--lr_scheduler.warmup_steps=1",
            "--checkpoint.enable",
            f"--checkpoint.interval={STEPS}",
            "--validation.eval_freq=0",
            "--data.num_workers=0",
            "--metrics.enable_tensorboard=false",
            env={"NGPU": "2", **ONE_THREAD},
        )
    )
    checkpoint = root / "debug" / "checkpoints" / f"step-{STEPS}"
    assert len(list(checkpoint.glob("*.distcp"))) == 2, "expected a checkpoint written by 2 ranks"
    return checkpoint


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hf"
    stdout = check_ok(run_python(EXPORT, str(trained), str(out), "--dtype", "fp32", env=ONE_THREAD))
    return out, stdout


# ---- export of a 2-rank training checkpoint ----


def test_export_of_a_two_rank_checkpoint_loads_in_transformers_with_the_same_logits(trained, exported):
    out, stdout = exported
    assert f"wrote {out}" in stdout and "flavor 'debug'" in stdout and "float32" in stdout
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.model",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ):
        assert (out / name).is_file(), name

    ours = dcp_model(trained, FLAVORS["debug"])
    theirs = hf_tensors(out)
    assert set(theirs) == {to_hf_name(name) for name in ours}
    assert all(torch.equal(theirs[to_hf_name(name)], tensor) for name, tensor in ours.items())

    hf = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.dtype == torch.float32
    assert hf.generation_config.eos_token_id == 2
    model = build_model(FLAVORS["debug"], "cpu").eval()
    model.load_state_dict(ours)
    tokens = torch.randint(0, 4096, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = hf(tokens).logits, model(tokens)
    assert (got - expected).abs().max().item() <= 1e-4
    assert expected.abs().max().item() > 0.1


@pytest.mark.parametrize("which", ["exported", "llama2"])
def test_hf_tokenizer_gives_the_ids_of_sentencepiece_on_prose_and_code(which, exported, tmp_path):
    if which == "exported":
        folder = exported[0]
    else:
        if not LLAMA2_TOKENIZER.is_file():
            pytest.skip(f"no Llama 2 tokenizer at {LLAMA2_TOKENIZER}")
        folder = tmp_path
        write_hf_tokenizer(LLAMA2_TOKENIZER, folder, max_length=2048)
    ours = Tokenizer(folder / "tokenizer.model")
    theirs = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    texts = MIXED_TEXTS + prose_documents()[:25] + code_documents()[:25]
    for text in texts:
        ids = ours.encode(text)
        assert theirs.encode(text, add_special_tokens=False) == ids, text[:200]
        assert theirs.decode(ids) == ours.decode(ids)
    assert theirs("x y").input_ids == ours.encode("x y", bos=True)  # <s> first, as in training
    assert theirs.decode(ours.encode("x", bos=True, eos=True), skip_special_tokens=True) == "x"
    assert (theirs.bos_token_id, theirs.eos_token_id) == (ours.bos_id, ours.eos_id)


# ---- import, and the round trip ----


def test_round_trip_hf_to_dcp_to_hf_is_bit_identical(awkward_folder, small_tokenizer, tmp_path):
    imported, back = tmp_path / "dcp", tmp_path / "back"
    stdout = check_ok(run_python(IMPORT, str(awkward_folder), str(imported), env=ONE_THREAD))
    assert "matches no flavor" in stdout and "derived" in stdout
    stdout = check_ok(run_python(EXPORT, str(imported), str(back), "--max-shard-size", "150KB", env=ONE_THREAD))
    assert "model_args.json" in stdout and "320 pieces" in stdout

    original, returned = hf_tensors(awkward_folder), hf_tensors(back)
    assert len(list(back.glob("*.safetensors"))) > 1 and (back / "model.safetensors.index.json").is_file()
    assert set(returned) == set(original)
    for name, tensor in original.items():
        assert returned[name].dtype == tensor.dtype and torch.equal(returned[name], tensor), name
    before, after = (json.loads((folder / "config.json").read_text()) for folder in (awkward_folder, back))
    config = transformers.AutoConfig.from_pretrained(back, local_files_only=True)
    for key in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "vocab_size",
        "rms_norm_eps",
        "max_position_embeddings",
        "tie_word_embeddings",
    ):
        assert after[key] == before[key], key
    assert config.rope_parameters["rope_theta"] == 5000.0
    assert (back / "tokenizer.model").read_bytes() == small_tokenizer.read_bytes()


def test_import_of_pytorch_bin_weights_keeps_their_dtype(tmp_path):
    folder = tmp_path / "hf"
    model = awkward_hf_model(seed=1).to(torch.bfloat16)
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    stdout = check_ok(run_python(IMPORT, str(folder), str(tmp_path / "dcp"), env=ONE_THREAD))
    assert "bfloat16" in stdout and "no tokenizer.model" in stdout
    metadata = dcp.FileSystemReader(str(tmp_path / "dcp")).read_metadata().state_dict_metadata
    state = {
        "model": {
            name: torch.empty(value.size, dtype=value.properties.dtype)
            for name, value in ((key[len("model.") :], value) for key, value in metadata.items())
        }
    }
    dcp.load(state, checkpoint_id=str(tmp_path / "dcp"), no_dist=True)
    original = model.state_dict()
    assert {to_hf_name(name) for name in state["model"]} == set(original)
    for name, tensor in state["model"].items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, original[to_hf_name(name)]), name


def test_an_imported_export_matches_its_flavor_and_starts_a_run(trained, exported, corpus_cache, tmp_path):
    imported = tmp_path / "imported"
    stdout = check_ok(run_python(IMPORT, str(exported[0]), str(imported), env=ONE_THREAD))
    assert "matches flavor 'debug'" in stdout and "--model.flavor=debug" in stdout
    reference = dcp_model(trained, FLAVORS["debug"])
    got = dcp_model(imported, FLAVORS["debug"])
    assert all(torch.equal(got[name], tensor) for name, tensor in reference.items())
    output = check_ok(
        run_command(
            "./run_train.sh",
            f"--job.dump_folder={tmp_path / 'run'}",
            f"--data.cache_dir={corpus_cache}",
            "--training.steps=1",
            "--lr_scheduler.warmup_steps=0",
            "--training.seq_len=64",
            "--training.global_batch_tokens=256",
            "--training.micro_batch_size=4",
            "--validation.eval_freq=0",
            "--data.num_workers=0",
            "--metrics.enable_tensorboard=false",
            f"--checkpoint.initial_load_path={imported}",
            env=ONE_THREAD,
        )
    )
    assert f"model initialised from {imported}" in output


# ---- generation ----


def test_greedy_generation_equals_transformers_generate(awkward_folder, exported):
    for folder, prompt in (
        (awkward_folder, [1, 45, 7, 200, 33, 120]),
        (exported[0], [1] + Tokenizer(exported[0] / "tokenizer.model").encode("The list")),
    ):
        ours, _ = load_model(folder, "cpu", torch.float32)
        hf = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
        new = generate(ours, prompt, 40, eos_id=2)
        expected = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=40,
            do_sample=False,
            eos_token_id=2,
            pad_token_id=2,
        )
        assert new == expected[0, len(prompt) :].tolist()
        if folder == awkward_folder:
            assert len(set(new)) > 5, "the random model should not repeat itself: the test would be weak"


def test_the_export_encodes_and_generates_in_batches(exported):
    """Padded batches (Llama 2 has no pad piece: the export pads with <unk>, on the left): each row's
    greedy continuation, batched, equals that row's alone and ours, so the attention mask is honoured."""
    out = exported[0]
    tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    ours, _ = load_model(out, "cpu", torch.float32)
    sentencepiece = Tokenizer(out / "tokenizer.model")
    assert (tokenizer.pad_token, tokenizer.padding_side) == ("<unk>", "left")
    assert hf.generation_config.pad_token_id == tokenizer.pad_token_id == 0
    texts = ["The", "Once upon a time, in a land far away, there", "def add(a, b):"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    width = batch["input_ids"].shape[1]
    for row, text in enumerate(texts):
        ids = sentencepiece.encode(text, bos=True)
        assert batch["input_ids"][row].tolist() == [0] * (width - len(ids)) + ids
        assert batch["attention_mask"][row].tolist() == [0] * (width - len(ids)) + [1] * len(ids)
    with torch.no_grad():
        batched = hf.generate(**batch, max_new_tokens=12, do_sample=False)[:, width:]
    for row, text in enumerate(texts):
        alone = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            single = hf.generate(**alone, max_new_tokens=12, do_sample=False)[0, alone["input_ids"].shape[1] :]
        new = batched[row].tolist()[: len(single)]
        assert new == single.tolist() == generate(ours, sentencepiece.encode(text, bos=True), 12, eos_id=2), text
    pipe = transformers.pipeline("text-generation", model=hf, tokenizer=tokenizer)
    settings = {"max_new_tokens": 6, "do_sample": False}
    assert pipe(texts, batch_size=3, **settings) == [pipe(text, **settings) for text in texts]


def test_generate_script_from_a_checkpoint_and_from_its_export(trained, exported):
    tokenizer = Tokenizer(exported[0] / "tokenizer.model")
    model, _ = load_model(trained, "cpu", torch.float32)
    prompt = tokenizer.encode("The list of", bos=True)
    greedy = tokenizer.decode(prompt + generate(model, prompt, 12, eos_id=tokenizer.eos_id))
    result = run_python(GENERATE, str(trained), "--prompt", "The list of", "--max-new-tokens", "12", env=ONE_THREAD)
    assert check_ok(result) == greedy + "\n"
    assert "generated" in result.stderr and "tokens/s" in result.stderr

    sampling = Sampling(temperature=1.0, top_p=0.9)
    sampled = generate(model, prompt, 12, sampling, torch.Generator().manual_seed(7), eos_id=tokenizer.eos_id)
    result = run_python(
        GENERATE,
        str(exported[0]),
        "--prompt",
        "The list of",
        "--max-new-tokens",
        "12",
        "--temperature",
        "1.0",
        "--top-p",
        "0.9",
        "--seed",
        "7",
        env=ONE_THREAD,
    )
    assert check_ok(result) == tokenizer.decode(prompt + sampled) + "\n"


# ---- bad input ----


def test_a_folder_that_is_not_a_checkpoint_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    check_refused(run_python(EXPORT, str(tmp_path), str(tmp_path.parent / "out-x"), env=ONE_THREAD), "not a checkpoint")
    assert not (tmp_path.parent / "out-x").exists()


def test_a_checkpoint_missing_a_rank_shard_is_refused(trained, tmp_path):
    # In a run folder (copied with its config.toml), so that only the missing shard is wrong.
    checkpoint = tmp_path / "debug" / "checkpoints" / trained.name
    shutil.copytree(trained, checkpoint)
    shutil.copyfile(trained.parent.parent / "config.toml", tmp_path / "debug" / "config.toml")
    (checkpoint / "__1_0.distcp").unlink()
    check_refused(run_python(EXPORT, str(checkpoint), str(tmp_path / "out"), env=ONE_THREAD), "__1_0.distcp is missing")
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_a_checkpoint_of_another_flavor_and_one_without_a_run_folder_are_refused(trained, tmp_path, builtin_corpus):
    check_refused(
        run_python(EXPORT, str(trained), str(tmp_path / "out"), "--flavor", "tinyllama_1b", env=ONE_THREAD),
        "dim = 256 in the checkpoint's model_args.json, 2048 in flavor 'tinyllama_1b' from --flavor; n_layers = 4",
    )
    # A checkpoint carries its model arguments: outside its run folder it still says what it is...
    loose = tmp_path / "loose"
    shutil.copytree(trained, loose)
    tokenizer = f"--tokenizer={builtin_corpus.tokenizer_path}"
    check_ok(run_python(EXPORT, str(loose), str(tmp_path / "out"), tokenizer, env=ONE_THREAD))
    # ...and one saved before checkpoints carried them needs --flavor, or the shapes are checked against it.
    (loose / MODEL_ARGS_FILE).unlink()
    dcp_reader.seal(loose)
    check_refused(run_python(EXPORT, str(loose), str(tmp_path / "out2"), env=ONE_THREAD), "pass --flavor")
    check_refused(
        run_python(EXPORT, str(loose), str(tmp_path / "out2"), "--flavor", "tinyllama_1b", env=ONE_THREAD),
        "do not fit the model of flavor 'tinyllama_1b'",
    )
    assert not (tmp_path / "out2").exists() and not leftovers(tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 5000.0}}, "rope type 'dynamic'"),
        ({"attention_bias": True}, "attention_bias=true"),
    ],
)
def test_an_hf_config_that_fits_no_model_is_refused(awkward_folder, tmp_path, change, message):
    folder = tmp_path / "hf"
    shutil.copytree(awkward_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    check_refused(run_python(IMPORT, str(folder), str(tmp_path / "out"), env=ONE_THREAD), message)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_an_existing_output_folder_is_refused_unless_overwrite(trained, awkward_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    # Both scripts refuse through model_files.require_replaceable; the export's own file list is
    # checked below (an import's folder refused, an earlier export replaced).
    check_refused(run_python(IMPORT, str(awkward_folder), str(out), env=ONE_THREAD), "already exists")
    assert [path.name for path in out.iterdir()] == ["keep.txt"]
    # --overwrite replaces only an earlier output of the same script: never a folder of something else.
    check_refused(run_python(IMPORT, str(awkward_folder), str(out), "--overwrite", env=ONE_THREAD), "holds keep.txt")
    assert [path.name for path in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    check_ok(run_python(IMPORT, str(awkward_folder), str(out), "--overwrite", env=ONE_THREAD))
    check_ok(run_python(IMPORT, str(awkward_folder), str(out), "--overwrite", env=ONE_THREAD))  # an earlier import
    assert (out / ".metadata").is_file() and (out / "manifest.json").is_file() and not leftovers(tmp_path)
    check_refused(run_python(EXPORT, str(trained), str(out), "--overwrite", env=ONE_THREAD), "holds .metadata")
    exported = tmp_path / "exported"
    check_ok(run_python(EXPORT, str(trained), str(exported), env=ONE_THREAD))
    check_ok(run_python(EXPORT, str(trained), str(exported), "--overwrite", env=ONE_THREAD))  # an earlier export
