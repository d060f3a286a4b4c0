"""Ray Data pipeline: sources, rejects with reasons, counts that add up, streaming under a small object store."""

import json
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from orpo.data import assign_split
from orpo.synthetic import make_preference_records
from orpo.trainer_config import DataConfig
from pipelines import data as data_pipeline
from pipelines.config import DataPipelineSettings

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


BAD = [
    {"prompt": "p", "chosen": "", "rejected": "r"},                     # empty_chosen
    {"prompt": "p", "chosen": "same", "rejected": "same"},              # identical_responses
    {"prompt": "p", "rejected": "r"},                                   # missing_field (chosen)
    {"prompt": "p", "chosen": 5, "rejected": "r"},                      # wrong_type
]


def test_rejects_are_written_with_reasons_and_counts_add_up(tmp_path, tiny_model_dir, local_ray):
    source = tmp_path / "in"
    source.mkdir()
    good = make_preference_records(30, seed=1)
    lines = [json.dumps(r) for r in good[:15] + BAD[:2]] + ["{not json"] + [json.dumps(r) for r in good[15:]]
    (source / "a.jsonl").write_text("\n".join(lines) + "\n")
    pq.write_table(pa.Table.from_pylist([{"q": r["prompt"], "good": r["chosen"], "bad": r["rejected"]}
                                         for r in good[:10]] + [{"q": "p", "good": "", "bad": "r"}]),
                   source / "b.parquet")
    cfg = DataConfig(source=str(source / "a.jsonl"), eval_fraction=0.2, max_length=256, max_prompt_length=128)
    stats = data_pipeline.preprocess(cfg, DataPipelineSettings(tokenize_batch_size=8), str(tiny_model_dir), False,
                                     tmp_path / "run")
    assert stats["read"] == 33 and stats["accepted"] == 30 and stats["rejected"] == 3
    assert stats["train_pairs"] + stats["eval_pairs"] == 30 and stats["eval_pairs"] > 0
    assert stats["rejected_by_reason"] == {"empty_chosen": 1, "identical_responses": 1, "not_json": 1}
    assert stats["prompt_trimmed"] == 0  # the Zephyr template never merges across the prompt boundary
    rejects = [json.loads(x) for x in (tmp_path / "run" / "rejects.jsonl").read_text().splitlines()]
    by_row = {r["index"]: r for r in rejects}
    assert set(by_row) == {15, 16, 17}  # source positions (line numbers) of the bad records
    assert by_row[15]["field"] == "chosen" and by_row[15]["source"].endswith("a.jsonl")
    assert "not valid JSON" in by_row[17]["detail"]

    mapped = DataConfig(source=str(source / "b.parquet"), eval_fraction=0.0, max_length=256,
                        columns=data_pipeline.Columns(prompt="q", chosen="good", rejected="bad"))
    stats = data_pipeline.preprocess(mapped, DataPipelineSettings(), str(tiny_model_dir), False, tmp_path / "pq")
    assert (stats["read"], stats["accepted"], stats["rejected_by_reason"]) == (11, 10, {"empty_chosen": 1})


def test_directory_and_glob_sources_and_split_is_stable(tmp_path, tiny_model_dir, local_ray):
    for part in range(3):
        rows = make_preference_records(10, seed=part)
        (tmp_path / f"part{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(data_pipeline.list_source_files(str(tmp_path))) == 3
    assert len(data_pipeline.list_source_files(str(tmp_path / "part[01].jsonl"))) == 2
    with pytest.raises(FileNotFoundError, match="matches no"):
        data_pipeline.list_source_files(str(tmp_path / "nothing*.jsonl"))
    splits = [assign_split("f.jsonl", row, 0.25, seed=3) for row in range(2000)]
    assert splits == [assign_split("f.jsonl", row, 0.25, seed=3) for row in range(2000)]
    assert 0.2 < splits.count("eval") / 2000 < 0.3


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_streams_a_dataset_several_times_larger_than_the_object_store(tmp_path, tiny_model_dir):
    """~300 MB of records through an 80 MB object store: only streaming can finish this."""
    script = textwrap.dedent(f"""
        import json, ray
        from pathlib import Path
        from orpo.synthetic import make_preference_records
        from orpo.trainer_config import DataConfig
        from pipelines import data as dp
        from pipelines.config import DataPipelineSettings
        src = Path({str(tmp_path)!r}) / "big"
        src.mkdir()
        pad = "x" * 20_000  # an unused column: read, carried through the stream, dropped by tokenization
        for part in range(4):
            with open(src / f"part{{part}}.jsonl", "w") as f:
                for record in make_preference_records(3750, seed=part):
                    f.write(json.dumps({{**record, "metadata": pad}}) + "\\n")
        total = sum(p.stat().st_size for p in src.iterdir())
        ray.init(address="local", num_cpus=2, object_store_memory=80 * 1024 * 1024, include_dashboard=False,
                 log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        stats = dp.preprocess(DataConfig(source=str(src), max_length=128, max_prompt_length=64),
                              DataPipelineSettings(tokenize_batch_size=256), {str(tiny_model_dir)!r}, False,
                              Path({str(tmp_path)!r}) / "out")
        print(json.dumps({{"bytes": total, **stats}}))
    """)
    # A budget, not a speed: ~80 s on a quiet machine, 11 min measured with both cores shared ~10 ways.
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                         timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["bytes"] > 3.5 * 80 * 1024 * 1024
    assert result["read"] == 15000 and result["accepted"] == 15000


def test_bad_bytes_and_bad_rows_are_rejects_under_both_launchers(tmp_path, tiny_model_dir, tiny_tokenizer, local_ray):
    """A non-UTF-8 byte used to abort the whole read (a UnicodeDecodeError naming neither file nor
    line), and in one process a row that is `null` or a number raised a TypeError; a 50 MB row was
    tokenized whole. Every such row is now a reject with its source, line and reason, and both
    launchers reject the same rows."""
    from orpo.train_local import prepare_data

    good = [json.dumps(r).encode() for r in make_preference_records(12, seed=2)]
    bad = [b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}', b"null", b"42", b"[1, 2]", b'"text"',
           b"{broken", json.dumps({"prompt": "p", "chosen": ["x"], "rejected": "r"}).encode()]
    huge = json.dumps({"prompt": "p", "chosen": "x" * (50 << 20), "rejected": "r"}).encode()  # a 50 MB row
    (tmp_path / "mixed.jsonl").write_bytes(b"\n".join(good[:6] + bad + good[6:] + [huge]) + b"\n")
    cfg = DataConfig(source=str(tmp_path / "mixed.jsonl"), eval_fraction=0.2, max_length=256, max_prompt_length=128)
    stats = data_pipeline.preprocess(cfg, DataPipelineSettings(), str(tiny_model_dir), False, tmp_path / "ray")
    assert (stats["read"], stats["accepted"], stats["rejected"]) == (20, 12, 8)
    ray_rejects = [json.loads(x) for x in (tmp_path / "ray" / "rejects.jsonl").read_text().splitlines()]
    reasons = {r["index"]: r["reason"] for r in ray_rejects}
    assert reasons == {6: "not_utf8", 7: "wrong_type", 8: "wrong_type", 9: "wrong_type", 10: "wrong_type",
                       11: "not_json", 12: "wrong_type", 19: "record_too_large"}
    assert all(r["source"].endswith("mixed.jsonl") and r["detail"] for r in ray_rejects)

    (tmp_path / "local").mkdir()
    _, _, local_stats = prepare_data(cfg, tiny_tokenizer, tmp_path / "local")
    local_rejects = [json.loads(x) for x in (tmp_path / "local" / "rejects.jsonl").read_text().splitlines()]
    assert {k: local_stats[k] for k in ("read", "accepted", "rejected")} == {"read": 20, "accepted": 12, "rejected": 8}
    key = lambda r: (r["source"], r["index"], r["reason"], r["field"])  # noqa: E731
    assert sorted(map(key, local_rejects)) == sorted(map(key, ray_rejects))


def test_every_row_rejected_or_an_empty_file_is_a_clear_error(tmp_path, tiny_tokenizer):
    from orpo.train_local import prepare_data

    (tmp_path / "bad.jsonl").write_text('{"prompt": "p", "chosen": "", "rejected": "r"}\nnull\n')
    with pytest.raises(ValueError, match="no usable training pairs in '.*bad.jsonl'"):
        prepare_data(DataConfig(source=str(tmp_path / "bad.jsonl")), tiny_tokenizer, tmp_path)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="no usable training pairs"):
        prepare_data(DataConfig(source=str(tmp_path / "empty.jsonl")), tiny_tokenizer, tmp_path)


def test_tokenized_pairs_are_reused_only_for_the_same_inputs(tmp_path, tiny_model_dir, local_ray):
    """`data_stats.json` + `tokenized/` used to be reused whatever the source, tokenizer or lengths;
    a crash mid-write left a partial copy that the retry appended to. Now a stale partial copy is
    discarded, reuse needs the same inputs, and a changed input is refused by name."""
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in make_preference_records(40, seed=6)))
    cfg = DataConfig(source=str(source), eval_fraction=0.2, max_length=256, max_prompt_length=128)
    data_dir = tmp_path / "run"
    (data_dir / "tokenized.partial" / "part0").mkdir(parents=True)  # an interrupted earlier attempt
    (data_dir / "tokenized.partial" / "part0" / "junk.parquet").write_bytes(b"partial")
    stats = data_pipeline.preprocess(cfg, DataPipelineSettings(), str(tiny_model_dir), False, data_dir)
    assert stats["read"] == 40 and not (data_dir / "tokenized.partial").exists()
    rows = sum(1 for split in ("train", "eval") for _ in data_pipeline.split_dataset(data_dir, split, 0).iter_rows())
    assert rows == 40  # no second copy next to the first
    assert data_pipeline.preprocess(cfg, DataPipelineSettings(), str(tiny_model_dir), False, data_dir) == stats

    longer = DataConfig(source=str(source), eval_fraction=0.2, max_length=512, max_prompt_length=128)
    with pytest.raises(ValueError, match="data.max_length changed"):
        data_pipeline.preprocess(longer, DataPipelineSettings(), str(tiny_model_dir), False, data_dir)
    source.write_text(source.read_text() + json.dumps(make_preference_records(1, seed=7)[0]) + "\n")
    with pytest.raises(ValueError, match="inputs.* changed"):
        data_pipeline.preprocess(cfg, DataPipelineSettings(), str(tiny_model_dir), False, data_dir)


def test_one_file_is_read_in_parallel_pieces_with_the_single_process_rows(tmp_path, tiny_model_dir, tiny_tokenizer,
                                                                          local_ray):
    """One file used to be one read task, so tokenization of one big file ran on one CPU. JSONL is
    now cut into byte ranges at line boundaries and Parquet at row groups. Against the
    single-process reader (orpo.sources, one pass): every record keeps its row (blank lines,
    CRLF, bad bytes, broken and oversized lines at piece boundaries), so rejects, the train/eval
    split and ``data.limit`` match; and two runs write the same rows in the same order."""
    from orpo.train_local import prepare_data
    from pipelines.data_sources import plan_pieces

    good = [json.dumps(r).encode() for r in make_preference_records(40, seed=4)]
    bad = [b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}', b"{broken", b"null",
           json.dumps({"prompt": "p", "chosen": "y" * 3000, "rejected": "r"}).encode()]  # > max_record_bytes
    lines = good[:9] + [b"", b"   "] + bad[:2] + [good[9] + b"\r"] + good[10:25] + bad[2:] + good[25:]
    jsonl = tmp_path / "in" / "a.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_bytes(b"\n".join(lines))  # no newline after the last line
    parquet = tmp_path / "in" / "b.parquet"
    pq.write_table(pa.Table.from_pylist(make_preference_records(30, seed=5)), parquet, row_group_size=4)
    pipeline = DataPipelineSettings(min_read_bytes=64, tokenize_batch_size=8)

    pieces = plan_pieces([str(jsonl), str(parquet)], {}, pipeline.min_read_bytes, 1.0)
    assert sum(p.path == str(jsonl) for p in pieces) >= 4 and sum(p.path == str(parquet) for p in pieces) >= 2
    assert [p.first_row for p in pieces if p.path == str(jsonl)][0] == 0
    assert sum(p.rows for p in pieces) == 44 + 30

    # All of a.jsonl (44 records) and the first 6 of b.parquet: the limit cuts a Parquet piece.
    cfg = DataConfig(source=str(tmp_path / "in"), eval_fraction=0.3, max_length=256, max_prompt_length=128,
                     max_record_bytes=2000, limit=50)
    stats = data_pipeline.preprocess(cfg, pipeline, str(tiny_model_dir), False, tmp_path / "ray")
    (tmp_path / "local").mkdir()
    local_train, local_eval, local_stats = prepare_data(cfg, tiny_tokenizer, tmp_path / "local")
    assert stats == local_stats and stats["read"] == 50 and stats["eval_pairs"] > 0
    for split, local in (("train", local_train), ("eval", local_eval)):
        rows = sorted((r["source"], r["index"], list(r["chosen_ids"]))
                      for r in data_pipeline.split_dataset(tmp_path / "ray", split, seed=0).iter_rows())
        assert rows == sorted((ex["source"], ex["index"], list(ex["chosen_ids"])) for ex in local.examples)
    key = lambda r: (r["source"], r["index"], r["reason"], r["field"])  # noqa: E731
    ray_rejects = [json.loads(x) for x in (tmp_path / "ray" / "rejects.jsonl").read_text().splitlines()]
    local_rejects = [json.loads(x) for x in (tmp_path / "local" / "rejects.jsonl").read_text().splitlines()]
    assert sorted(map(key, ray_rejects)) == sorted(map(key, local_rejects))
    assert {(r["index"], r["reason"]) for r in ray_rejects} == {(9, "not_utf8"), (10, "not_json"),
                                                                (27, "wrong_type"), (28, "record_too_large")}

    data_pipeline.preprocess(cfg, pipeline, str(tiny_model_dir), False, tmp_path / "again")
    rows = lambda d: [(r["source"], r["index"]) for r in data_pipeline.split_dataset(d, "train", 0).iter_rows()]  # noqa: E731
    # The same pairs, each once. (Not always in the same order: under load the written row order
    # of a re-tokenization was seen to differ, see the closing note of issue 12; a resume reads
    # the tokenized files it started with, so it is not affected.)
    assert sorted(rows(tmp_path / "again")) == sorted(rows(tmp_path / "ray"))
    assert len(set(rows(tmp_path / "ray"))) == len(rows(tmp_path / "ray"))


def test_summarize_counts_from_parquet_footers_without_ray_data(tmp_path, monkeypatch):
    """The counts used to take a Ray Data pass over every split; they come from the Parquet footers
    now (and the flags and rejects from their own small columns), with no Ray Data in the driver."""
    def no_ray_data(*args, **kwargs):
        raise AssertionError("summarize must not start a Ray Data pass")

    monkeypatch.setattr(ray.data, "read_parquet", no_ray_data)
    row = {"source": "f.jsonl", "reject_reason": "", "reject_field": "", "reject_detail": "", "truncated": False,
           "prompt_trimmed": 0}
    parts = {"train": [{**row, "index": i, "truncated": i % 3 == 0, "prompt_trimmed": i % 2} for i in range(10)],
             "eval": [{**row, "index": 10 + i} for i in range(3)],
             "rejected": [{**row, "index": 13, "reject_reason": "not_json", "reject_field": "<record>",
                           "reject_detail": "not valid JSON"}]}
    for number, (split, rows) in enumerate(parts.items()):
        for half in (rows[: len(rows) // 2], rows[len(rows) // 2:]):  # two files per split, one may be empty
            directory = tmp_path / "tokenized" / f"part{number}" / f"split={split}"
            directory.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(half, schema=pa.Table.from_pylist(rows).schema),
                           directory / f"{len(list(directory.iterdir()))}.parquet")
    stats = data_pipeline.summarize(tmp_path / "tokenized", tmp_path / "rejects.jsonl")
    assert stats == {"read": 14, "accepted": 13, "rejected": 1, "rejected_by_reason": {"not_json": 1},
                     "train_pairs": 10, "eval_pairs": 3, "truncated": 4, "prompt_trimmed": 5}
    assert [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()] == [
        {"source": "f.jsonl", "index": 13, "reason": "not_json", "field": "<record>", "detail": "not valid JSON"}]
