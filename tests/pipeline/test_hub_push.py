"""Saving a dataset in Hub layout (real Parquet, loaded back with `datasets`) and pushing it to a local Hub double.

The pushes go through the real huggingface_hub client (create_repo + upload_folder) against tests/hub_double.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import datasets
import huggingface_hub.constants
import pyarrow.parquet as pq
import pytest
from hub_double import HubDouble

from rlaif.pipeline.arrow import SchemaConflictError
from rlaif.pipeline.dataset_card import DatasetCardInfo, render_dataset_card
from rlaif.pipeline.dataset_writer import write_dataset
from rlaif.pipeline.push import PushError, push_dataset

TOKEN = "hf_" + "Tk9x" * 8  # looks like a real token, so both scrubbing rules (env value, hf_ pattern) apply
PIPELINE_YAML = """\
name: quickstart
models:
  policy: {backend: vllm, model: builtin:smollm2-135m-instruct, temperature: 0.8}
steps:
  - {name: seeds, type: load, path: pipelines/data/seed_prompts.jsonl}
  - {name: pairs, type: make_pairs, from: seeds, strategy: best_vs_worst}
# someone pasted a token here by mistake: TOKEN
output: {save: runs/quickstart/dataset, push_to_hub: me/quickstart}
""".replace("TOKEN", TOKEN)
STEPS = [
    {"name": "seeds", "type": "load", "records_in": 0, "records_out": 12, "dropped": {}, "quarantined": {},
     "tokens_in": 0, "tokens_out": 0, "wall_s": 0.01},
    {"name": "pairs", "type": "make_pairs", "records_in": 12, "records_out": 10, "dropped": {"tie": 2},
     "quarantined": {"parse_error": 1}, "tokens_in": 3400, "tokens_out": 1200, "wall_s": 12.5},
]  # fmt: skip


def make_info(**overrides: object) -> DatasetCardInfo:
    values: dict = dict(
        pipeline_name="quickstart",
        pipeline_yaml=PIPELINE_YAML,
        steps=STEPS,
        models={"policy": "builtin:smollm2-135m-instruct"},
        file_hashes={"prompts/judge.jinja": "ab" * 32},
        rlaif_version="0.1.0",
        repo_id="me/quickstart",
    )
    return DatasetCardInfo(**(values | overrides))


def load(path: Path, **kwargs: object) -> datasets.DatasetDict | datasets.Dataset:
    # A cache beside the data: the test never reads or writes the user's ~/.cache/huggingface/datasets.
    return datasets.load_dataset(str(path), cache_dir=str(path.parent / "hf-datasets-cache"), **kwargs)


def row(i: int, note: str | None = None) -> dict:
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"question {i}"}]
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": f"good answer {i}"}],
        "rejected": [{"role": "assistant", "content": f"bad answer {i}"}],
        "note": note,
        "id": i,
    }


def conversational_batches(n_batches: int = 3, size: int = 4) -> Iterator[list[dict]]:
    # The first batch has `note` all None (null type), the others text: the writer must unify them.
    for b in range(n_batches):
        yield [row(b * size + j, None if b == 0 else f"note {b}") for j in range(size)]


def test_write_then_load_dataset_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    counts = write_dataset(
        {"train": conversational_batches(), "test": iter([[row(100, "only")]])}, out, make_info(), jsonl=True
    )

    assert counts == {"train": 12, "test": 1}
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "test-00000-of-00001.parquet",
        "train-00000-of-00001.parquet",
    ]
    loaded = load(out)
    assert {split: ds.num_rows for split, ds in loaded.items()} == {"train": 12, "test": 1}
    assert loaded["train"].column_names == ["prompt", "chosen", "rejected", "note", "id"]
    first, fifth = loaded["train"][0], loaded["train"][4]
    assert first["prompt"] == row(0)["prompt"] and first["chosen"] == row(0)["chosen"]
    assert first["note"] is None and fifth["note"] == "note 1"
    assert [json.loads(line)["id"] for line in (out / "train.jsonl").read_text().splitlines()] == list(range(12))


def test_shards_roll_over_and_keep_order(tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    counts = write_dataset({"train": conversational_batches(5, 5)}, out, make_info(), max_rows_per_shard=10)

    assert counts == {"train": 25}
    shards = sorted((out / "data").iterdir())
    assert [p.name for p in shards] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert [pq.read_metadata(p).num_rows for p in shards] == [10, 10, 5]
    assert len({pq.read_schema(p).to_string() for p in shards}) == 1  # one schema although batch 0's note is null
    assert load(out, split="train")["id"] == list(range(25))


def test_message_structs_with_extra_keys_and_missing_columns_unify(tmp_path: Path) -> None:
    first = [{"prompt": [{"role": "user", "content": "hi"}], "id": 0}]
    later = [{"prompt": [{"role": "user", "content": "yo", "name": "bob"}], "id": 1, "score": 0.5}]
    write_dataset({"train": iter([first, later])}, tmp_path / "dataset", make_info())

    rows = load(tmp_path / "dataset", split="train").to_list()
    assert rows[0] == {"prompt": [{"role": "user", "content": "hi", "name": None}], "id": 0, "score": None}
    assert rows[1] == {"prompt": [{"role": "user", "content": "yo", "name": "bob"}], "id": 1, "score": 0.5}


def test_same_folder_name_with_new_rows_is_not_served_from_datasets_cache(tmp_path: Path) -> None:
    # datasets 5.2 keys its cache for a local folder with `configs:` on the card only, not on the data files: the
    # card's dataset_info (sizes) is what tells round 2's rows apart from round 1's under one shared cache.
    cache = str(tmp_path / "shared-cache")
    first, second = tmp_path / "round1" / "dataset", tmp_path / "round2" / "dataset"
    write_dataset({"train": iter([[{"x": 1}, {"x": 2}]])}, first, make_info())
    write_dataset({"train": iter([[{"x": 30}, {"x": 40}, {"x": 50}]])}, second, make_info())

    assert datasets.load_dataset(str(first), split="train", cache_dir=cache)["x"] == [1, 2]
    assert datasets.load_dataset(str(second), split="train", cache_dir=cache)["x"] == [30, 40, 50]


def test_bad_split_name_fails_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split names"):
        write_dataset({"../train": iter([[row(0)]])}, tmp_path / "dataset", make_info())
    assert list(tmp_path.iterdir()) == []


def test_conflicting_column_types_name_the_column(tmp_path: Path) -> None:
    batches = iter([[{"id": 1, "score": 1}], [{"id": 2, "score": "high"}]])
    with pytest.raises(SchemaConflictError, match="score"):
        write_dataset({"train": batches}, tmp_path / "dataset", make_info())
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_nothing_and_keeps_the_old_dataset(tmp_path: Path) -> None:
    def failing() -> Iterator[list[dict]]:
        yield [row(0)]
        yield [row(1)]
        raise RuntimeError("engine died")

    with pytest.raises(RuntimeError, match="engine died"):
        write_dataset({"train": failing()}, tmp_path / "fresh", make_info(), jsonl=True, max_rows_per_shard=1)
    assert list(tmp_path.iterdir()) == []  # no out_dir, no .partial directory

    old = tmp_path / "dataset"
    write_dataset({"train": iter([[row(7)]])}, old, make_info())
    before = {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()}
    with pytest.raises(RuntimeError, match="engine died"):
        write_dataset({"train": failing()}, old, make_info())
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]
    assert {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()} == before


def test_card_has_provenance_and_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-a-real-key-123456")
    card = render_dataset_card(make_info(splits={"train": 10}, columns=["prompt", "chosen", "rejected"]))

    assert TOKEN not in card
    assert PIPELINE_YAML.replace(TOKEN, "[REDACTED]") in card  # verbatim, apart from the scrubbed token
    assert "| pairs | make_pairs | 12 | 10 | 2 (tie: 2) | 1 (parse_error: 1) | 3400 | 1200 | 12.50 |" in card
    assert "`policy`: `builtin:smollm2-135m-instruct`" in card and "ab" * 32 in card
    assert "rlaif 0.1.0" in card and 'load_dataset("me/quickstart")' in card
    assert card.startswith("---\n") and "path: data/train-*.parquet" in card


@pytest.fixture(scope="module")
def hub_server() -> Iterator[HubDouble]:
    with HubDouble(TOKEN) as hub:
        yield hub


@pytest.fixture
def hub(hub_server: HubDouble, monkeypatch: pytest.MonkeyPatch) -> HubDouble:
    hub_server.reset()
    # conftest turns offline mode on for the whole session. huggingface_hub reads HF_HUB_OFFLINE once, at import,
    # into constants.HF_HUB_OFFLINE, so removing the variable alone would not reach the already-imported client.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return hub_server


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    out = tmp_path / "run" / "dataset"
    write_dataset({"train": conversational_batches(3, 4), "test": iter([[row(100, "x")]])}, out, make_info(),
                  max_rows_per_shard=5)  # fmt: skip
    return out


# Both of huggingface_hub 2.4's upload paths: the streamed pipeline (hf_xet installed, the default here) and the
# single create_commit (HF_HUB_DISABLE_XET). The preupload answer "regular" keeps both off Xet and LFS.
@pytest.mark.parametrize("disable_xet", [False, True], ids=["pipelined", "create_commit"])
def test_push_uploads_the_hub_layout(
    hub: HubDouble, dataset_dir: Path, disable_xet: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", disable_xet)  # read at call time
    url = push_dataset(dataset_dir, "me/quickstart", private=True, endpoint=hub.endpoint)

    repo = hub.state.repos["me/quickstart"]
    assert repo.private and repo.repo_type == "dataset"
    local = {p.relative_to(dataset_dir).as_posix(): p.read_bytes() for p in dataset_dir.rglob("*") if p.is_file()}
    assert sorted(local) == ["README.md", "data/test-00000-of-00001.parquet"] + [
        f"data/train-0000{i}-of-00003.parquet" for i in range(3)
    ]
    assert repo.files == local  # exactly the shards + card, byte for byte
    assert len(hub.state.commits) == 1 and url.endswith(hub.state.commits[0].oid)
    card = repo.files["README.md"].decode()
    assert TOKEN not in card and PIPELINE_YAML.replace(TOKEN, "[REDACTED]") in card
    assert "| seeds | load |" in card and "builtin:smollm2-135m-instruct" in card and "rlaif 0.1.0" in card


def test_repush_with_fewer_shards_removes_stale_shards(hub: HubDouble, tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    write_dataset({"train": conversational_batches(3, 4)}, out, make_info(), max_rows_per_shard=4)
    push_dataset(out, "me/quickstart", endpoint=hub.endpoint)
    write_dataset({"train": conversational_batches(3, 4)}, out, make_info(), max_rows_per_shard=100)
    push_dataset(out, "me/quickstart", endpoint=hub.endpoint)

    repo = hub.state.repos["me/quickstart"]
    assert not repo.private
    assert sorted(repo.files) == ["README.md", "data/train-00000-of-00001.parquet"]


def test_push_with_wrong_token_fails_with_retry_advice(hub: HubDouble, dataset_dir: Path) -> None:
    wrong = "hf_" + "Wr0ng" * 6
    with pytest.raises(PushError) as caught:
        push_dataset(dataset_dir, "me/quickstart", token=wrong, endpoint=hub.endpoint, run_dir=dataset_dir.parent)

    message = str(caught.value)
    assert f"rlaif push {dataset_dir.parent} --repo me/quickstart" in message
    assert f"safe on disk at {dataset_dir}" in message
    assert wrong not in message and TOKEN not in message
    assert hub.state.repos == {} and hub.state.commits == []
    assert all(r.endswith("-> 401") for r in hub.state.requests)
