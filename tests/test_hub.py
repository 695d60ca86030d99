"""Hub model ids: models, config and both tokenizers load "org/name" from a Hub cache, offline.

The cache is built in tmp_path the way huggingface_hub lays it out (see hub_cache.py), from a tiny random
model saved by `save_pretrained` and the tiny test tokenizer. No test reaches the network: HF_HUB_OFFLINE
is set, and the Hub API calls snapshot_download would make online fail the test.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_cache import add_to_hub_cache

import rembert_fast
from rembert_fast.hub import PretrainedNotFoundError

REPO = "tiny-org/tiny-rembert"
DATA = Path(__file__).parent / "data"
CONFIG = dict(vocab_size=120, hidden_size=36, num_attention_heads=3, num_hidden_layers=2,
              intermediate_size=44, input_embedding_size=12, output_embedding_size=20,
              max_position_embeddings=32)
LINES = ["Hello world, this is RemBERT.", "Ein kleiner Satz auf Deutsch.", "un petit test"]
LOADERS = {
    "model": lambda name, **kw: rembert_fast.RemBertModel.from_pretrained(name, **kw),
    "config": lambda name, **kw: rembert_fast.RemBertConfig.from_pretrained(name, **kw),
    "slow": lambda name, **kw: rembert_fast.RemBertTokenizer.from_pretrained(name, **kw),
    "fast": lambda name, **kw: rembert_fast.RemBertTokenizerFast.from_pretrained(name, **kw),
}


def _save_checkpoint(directory: Path, seed: int, **save_options) -> Path:
    """A random RemBertModel (every weight random) and the tiny tokenizer, saved into `directory`."""
    torch.manual_seed(seed)
    model = rembert_fast.RemBertModel(rembert_fast.RemBertConfig(**CONFIG))
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param))
    model.save_pretrained(directory, **save_options)
    tokenizer = rembert_fast.RemBertTokenizerFast(vocab_file=str(DATA / "tiny_sentencepiece.model"))
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1, an empty working directory (no local "tiny-org/..."), and no Hub API call."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("a test reached for the Hub API")

    for name in ("repo_info", "model_info", "list_repo_tree", "list_repo_files"):
        monkeypatch.setattr(huggingface_hub.HfApi, name, refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("HF_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture
def checkpoints(tmp_path):
    """(cache, first checkpoint directory at "main", second at ref "v2" and commit hash)."""
    cache = tmp_path / "hub-cache"
    first, second = _save_checkpoint(tmp_path / "first", 0), _save_checkpoint(tmp_path / "second", 1)
    add_to_hub_cache(cache, REPO, first)
    commit = add_to_hub_cache(cache, REPO, second, ref="v2")
    return cache, first, second, commit


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _ids(tokenizer) -> list[list[int]]:
    return tokenizer(LINES)["input_ids"]


def test_everything_loads_by_id_from_the_cache_as_from_the_directory(checkpoints, monkeypatch):
    cache, first, second, _ = checkpoints
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    model = LOADERS["model"](REPO)
    assert _same_weights(model, LOADERS["model"](first))
    assert not _same_weights(model, LOADERS["model"](second))
    assert LOADERS["config"](REPO) == LOADERS["config"](first)
    for kind in ("slow", "fast"):
        assert _ids(LOADERS[kind](REPO)) == _ids(LOADERS[kind](first))
    # The weights were read through the snapshot's link into blobs/, as a real cache holds them.
    snapshot = next((cache / ("models--" + REPO.replace("/", "--")) / "snapshots").iterdir())
    assert (snapshot / "model.safetensors").is_symlink()
    # A head model loads the base checkpoint from the cache too (head initialised, as from a directory).
    head = rembert_fast.RemBertForMaskedLM.from_pretrained(REPO)
    embeddings = head.rembert.embeddings.word_embeddings.weight
    assert torch.equal(embeddings, model.embeddings.word_embeddings.weight)


@pytest.mark.parametrize("save_options", [{"safe_serialization": False}, {"max_shard_size": "20KB"},
                                          {"safe_serialization": False, "max_shard_size": "20KB"}])
def test_pickle_and_sharded_weights_load_from_the_cache(save_options, tmp_path):
    cache = tmp_path / "hub-cache"
    source = _save_checkpoint(tmp_path / "source", 3, **save_options)
    assert len(list(source.glob("*.index.json"))) == ("max_shard_size" in save_options)
    add_to_hub_cache(cache, REPO, source)
    assert _same_weights(LOADERS["model"](REPO, cache_dir=cache), LOADERS["model"](source))


def test_online_fetches_only_the_first_weights_format_the_repository_has(monkeypatch, tmp_path):
    """snapshot_download stood in for by a fake Hub repository holding .bin weights only: the keywords
    reach it, and only config.json and pytorch_model.bin are fetched (never safetensors patterns twice)."""
    import huggingface_hub

    source = _save_checkpoint(tmp_path / "source", 4, safe_serialization=False)
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        for path in source.iterdir():
            if any(fnmatch.fnmatch(path.name, pattern) for pattern in kwargs["allow_patterns"]):
                shutil.copy(path, snapshot / path.name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    model = LOADERS["model"](REPO, revision="v9", token="hf_x", force_download=True, cache_dir=tmp_path / "c")
    assert _same_weights(model, LOADERS["model"](source))
    assert sorted(path.name for path in snapshot.iterdir()) == ["config.json", "pytorch_model.bin"]
    assert [kwargs["allow_patterns"][-1] for _, kwargs in calls] == [
        "model.safetensors", "model-*-of-*.safetensors", "pytorch_model.bin"]
    for repo_id, kwargs in calls:
        assert repo_id == REPO and kwargs["allow_patterns"][0] == "config.json"
        assert (kwargs["revision"], kwargs["token"], kwargs["force_download"]) == ("v9", "hf_x", True)
        assert kwargs["cache_dir"] == str(tmp_path / "c") and kwargs["local_files_only"] is False


def test_revision_picks_the_ref_or_commit(checkpoints):
    cache, first, second, commit = checkpoints
    want_first, want_second = LOADERS["model"](first), LOADERS["model"](second)
    assert _same_weights(LOADERS["model"](REPO, cache_dir=cache), want_first)
    for revision in ("v2", commit):
        assert _same_weights(LOADERS["model"](REPO, cache_dir=cache, revision=revision), want_second)
        got = LOADERS["fast"](REPO, cache_dir=cache, revision=revision)
        assert _ids(got) == _ids(LOADERS["fast"](second))
    with pytest.raises(PretrainedNotFoundError, match="revision 'v3'"):
        LOADERS["model"](REPO, cache_dir=cache, revision="v3")


def test_subfolder_in_a_repository_and_in_a_local_directory(tmp_path):
    cache = tmp_path / "hub-cache"
    source = _save_checkpoint(tmp_path / "source" / "inner", 2).parent
    add_to_hub_cache(cache, REPO, source)
    want = LOADERS["model"](source / "inner")
    for name in (REPO, source):
        assert _same_weights(LOADERS["model"](name, cache_dir=cache, subfolder="inner"), want)
        assert LOADERS["config"](name, cache_dir=cache, subfolder="inner") == want.config
        for kind in ("slow", "fast"):
            got = LOADERS[kind](name, cache_dir=cache, subfolder="inner")
            assert _ids(got) == _ids(LOADERS[kind](source / "inner"))
    with pytest.raises(ValueError, match="no config.json"):
        LOADERS["config"](REPO, cache_dir=cache)  # the repository's root has none
    for kind in ("slow", "fast"):
        with pytest.raises(FileNotFoundError, match="absent' does not exist"):
            LOADERS[kind](source, subfolder="absent")
        with pytest.raises(NotADirectoryError, match="is a file"):
            LOADERS[kind](source / "inner", subfolder="config.json")


def test_cache_dir_keyword_wins_over_hf_hub_cache(checkpoints, monkeypatch, tmp_path):
    cache, first, _, _ = checkpoints
    empty = tmp_path / "empty-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(empty))
    assert _same_weights(LOADERS["model"](REPO, cache_dir=cache), LOADERS["model"](first))
    with pytest.raises(PretrainedNotFoundError, match=f"Hub cache '{empty}'"):
        LOADERS["model"](REPO)
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    with pytest.raises(PretrainedNotFoundError, match=f"Hub cache '{tmp_path / 'home' / 'hub'}'"):
        LOADERS["config"](REPO)


def test_local_files_only_without_hf_hub_offline(checkpoints, monkeypatch):
    cache, first, _, _ = checkpoints
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    model = LOADERS["model"](REPO, cache_dir=cache, local_files_only=True)
    assert _same_weights(model, LOADERS["model"](first))
    tokenizer = LOADERS["slow"](REPO, cache_dir=cache, local_files_only=True)
    assert _ids(tokenizer) == _ids(LOADERS["slow"](first))
    with pytest.raises(PretrainedNotFoundError, match="offline"):
        LOADERS["config"]("tiny-org/absent", cache_dir=cache, local_files_only=True)


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_unknown_id_offline_is_one_line_naming_id_cache_and_revision(kind, checkpoints):
    cache = checkpoints[0]
    with pytest.raises(PretrainedNotFoundError) as caught:
        LOADERS[kind]("tiny-org/absent", cache_dir=cache, revision="v2")
    error = caught.value
    assert isinstance(error, OSError) and isinstance(error, ValueError)
    message = str(error)
    assert "\n" not in message and error.__cause__ is None and error.__suppress_context__
    for part in ("'tiny-org/absent'", f"'{cache}'", "revision 'v2'", "offline"):
        assert part in message


@pytest.mark.parametrize("kind", sorted(LOADERS))
@pytest.mark.parametrize("name", ["tiny-org//double", "a/b/c/d", "bad name!"])
def test_malformed_id_is_one_line(kind, name):
    with pytest.raises(PretrainedNotFoundError) as caught:
        LOADERS[kind](name)
    message = str(caught.value)
    assert "\n" not in message and caught.value.__cause__ is None
    assert repr(name) in message and "does not exist" in message and "not a valid Hub model id" in message


def test_local_directory_wins_and_ignores_hub_keywords(checkpoints):
    cache, first, second, _ = checkpoints
    local = Path(REPO)  # relative to the working directory: the same name as the cached repository
    local.parent.mkdir()
    local.symlink_to(second, target_is_directory=True)
    hub_keywords = dict(cache_dir=cache, revision="no-such-ref", local_files_only=True, token="hf_unused",
                        force_download=True)
    model = LOADERS["model"](REPO, **hub_keywords)
    assert _same_weights(model, LOADERS["model"](second))
    config = LOADERS["config"](REPO, **hub_keywords, trust_remote_code=True)
    assert config == model.config
    assert not any(hasattr(config, name) for name in (*hub_keywords, "trust_remote_code"))
    for kind in ("slow", "fast"):
        assert _ids(LOADERS[kind](REPO, **hub_keywords)) == _ids(LOADERS[kind](second))


def test_id_without_huggingface_hub_says_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    for kind in sorted(LOADERS):
        with pytest.raises(PretrainedNotFoundError, match="needs huggingface_hub .pip install"):
            LOADERS[kind](REPO)
    with pytest.raises(PretrainedNotFoundError, match="does not exist"):  # a missing path is still named
        LOADERS["model"](tmp_path / "nowhere")


def test_transformers_loads_the_same_from_the_cache(checkpoints):
    transformers = pytest.importorskip("transformers")
    cache, first, _, commit = checkpoints
    for revision in ("main", commit):
        ours = LOADERS["model"](REPO, cache_dir=cache, revision=revision)
        theirs = transformers.RemBertModel.from_pretrained(REPO, cache_dir=cache, revision=revision,
                                                           local_files_only=True)
        want, got = theirs.state_dict(), ours.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[key], want[key]) for key in want)
        tokenizer = transformers.AutoTokenizer.from_pretrained(REPO, cache_dir=cache, revision=revision,
                                                               local_files_only=True)
        ours_tokenizer = LOADERS["fast"](REPO, cache_dir=cache, revision=revision)
        assert tokenizer(LINES)["input_ids"] == _ids(ours_tokenizer)


def test_unknown_id_in_a_fresh_process(tmp_path):
    """Nothing else imported huggingface_hub's submodules first (transformers does, in this process)."""
    code = "import rembert_fast; rembert_fast.RemBertModel.from_pretrained('tiny-org/absent')"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1
    assert last.startswith("rembert_fast.hub.PretrainedNotFoundError: 'tiny-org/absent'")
    assert "model.safetensors" in last and "pytorch_model.bin" in last and str(tmp_path) in last


def test_inference_engine_takes_a_hub_id_like_the_cli(checkpoints, monkeypatch):
    from rembert_fast.inference import InferenceEngine

    cache, first, second, commit = checkpoints
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    by_id = InferenceEngine(REPO, "embed", device="cpu")
    by_directory = InferenceEngine(str(first), "embed", device="cpu")
    assert by_id.model_dir.parent.name == "snapshots" and by_id.model_dir.name != commit
    assert _same_weights(by_id.model, by_directory.model)
    texts = ["a b", "in the", "e"]  # pieces inside the tiny checkpoint's 120-word vocabulary
    for got, expected in zip(by_id.run(texts), by_directory.run(texts), strict=True):
        assert torch.equal(torch.from_numpy(got["embedding"]), torch.from_numpy(expected["embedding"]))
    # the Hub keywords, as from_pretrained takes them
    at_v2 = InferenceEngine(REPO, "embed", device="cpu", revision="v2")
    assert at_v2.model_dir.name == commit and _same_weights(at_v2.model, LOADERS["model"](second))
    with pytest.raises(PretrainedNotFoundError) as caught:
        InferenceEngine("tiny-org/absent", "embed", device="cpu", cache_dir=cache)
    assert "\n" not in str(caught.value) and "'tiny-org/absent'" in str(caught.value)
    with pytest.raises(TypeError, match="unexpected keyword 'revison'"):
        InferenceEngine(REPO, "embed", device="cpu", revison="v2")
