"""Generation stage: decoding defaults, resumable outputs, the HF backend on the tiny model, vLLM.

One local Ray instance (2 CPUs) serves the whole module; the HF actor takes one CPU, so Ray Data
tasks always have the other. Prompt files are small fixtures in the benchmarks' own formats.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import ray
from transformers import AutoTokenizer

from orpo.chat import encode_prompt
from orpo.config import ConfigError, load_config
from orpo.tiny import build_tiny_model
from pipelines import generate as generate_module
from pipelines.config import Config
from pipelines.generation import vllm_backend
from pipelines.generation.benchmarks import DEFAULT_PATHS, load_prompts, resolve_decoding
from pipelines.generation.config import (
    BenchmarkConfig,
    DecodingConfig,
    VLLMBackendConfig,
)
from pipelines.generation.hf_backend import HFGenerator
from pipelines.generation.store import append_record, load_records

REPO_ROOT = Path(__file__).resolve().parents[2]

IFEVAL = [
    {
        "key": 1000,
        "prompt": "Write a haiku about the sea. Do not use any commas.",
        "instruction_id_list": ["punctuation:no_comma"],
        "kwargs": [{}],
    },
    {
        "key": 1001,
        "prompt": "List three fruits in all capital letters.",
        "instruction_id_list": ["change_case:english_capital"],
        "kwargs": [{}],
    },
    {
        "key": 1005,
        "prompt": "Explain rain to a child in two sentences.",
        "instruction_id_list": ["length_constraints:number_sentences"],
        "kwargs": [{"relation": "less than", "num_sentences": 3}],
    },
]
MT_BENCH = [
    {
        "question_id": 81,
        "category": "writing",
        "turns": ["Write a short travel note.", "Now make it rhyme."],
    },
    {"question_id": 111, "category": "math", "turns": ["What is 2 + 3?", "And times 4?"]},
]
ALPACA_EVAL = [
    {
        "instruction": "Name a color.",
        "output": "Blue.",
        "generator": "gpt4_1106_preview",
        "dataset": "helpful_base",
    },
    {
        "instruction": "Say hello.",
        "output": "Hello!",
        "generator": "gpt4_1106_preview",
        "dataset": "oasst",
    },
]


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("benchmarks")
    (folder / "input_data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in IFEVAL))
    (folder / "question.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MT_BENCH))
    (folder / "alpaca.json").write_text(json.dumps(ALPACA_EVAL))
    return {
        "ifeval": str(folder / "input_data.jsonl"),
        "mt_bench": str(folder / "question.jsonl"),
        "alpaca_eval": str(folder / "alpaca.json"),
    }


def small_run(model: str, files: dict[str, str], output_dir: Path, *extra: str) -> list[str]:
    """Overrides for a quick run: fixture prompts, 6 new tokens, 2 prompts per HF batch."""
    overrides = [
        f"model.name_or_path={model}",
        "model.display_name=tiny-test",
        f"output_dir={output_dir}",
        "generation.hf.batch_size=2",
    ]
    for name, path in files.items():
        overrides += [f"generation.{name}.data_path={path}", f"generation.{name}.decoding.max_new_tokens=6"]
    return overrides + list(extra)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- decoding settings and config -------------------------------------------------------------


def test_decoding_defaults_follow_the_benchmarks():
    none = DecodingConfig()
    ifeval = resolve_decoding("ifeval", none)
    assert (ifeval.greedy, ifeval.max_new_tokens, ifeval.num_samples) == (True, 1280, 1)
    alpaca = resolve_decoding("alpaca_eval", none)
    assert (alpaca.greedy, alpaca.max_new_tokens) == (True, 2048)
    # FastChat's temperature_config; categories it lacks get its 0.7 fallback.
    expected = {
        "writing": 0.7,
        "roleplay": 0.7,
        "extraction": 0.0,
        "math": 0.0,
        "coding": 0.0,
        "reasoning": 0.0,
        "stem": 0.1,
        "humanities": 0.1,
        "arena-hard-200": 0.0,
        "unlisted": 0.7,
    }
    for category, temperature in expected.items():
        decoding = resolve_decoding("mt_bench", none, category)
        assert (decoding.temperature, decoding.max_new_tokens) == (temperature, 1024), category


def test_explicit_overrides_beat_benchmark_defaults(tmp_path):
    cfg = load_config(
        Config,
        REPO_ROOT / "configs/generate_tiny.yaml",
        [
            "generation.mt_bench.decoding.temperature=0",
            "generation.mt_bench.decoding.category_temperatures.writing=0.5",
            "generation.alpaca_eval.decoding.temperature=0.7",
        ],
    )
    assert resolve_decoding("mt_bench", cfg.generation.mt_bench.decoding, "writing").temperature == 0.5
    assert resolve_decoding("mt_bench", cfg.generation.mt_bench.decoding, "roleplay").temperature == 0.0
    alpaca = resolve_decoding("alpaca_eval", cfg.generation.alpaca_eval.decoding)
    assert (alpaca.temperature, alpaca.greedy, alpaca.max_new_tokens) == (0.7, False, 16)
    assert resolve_decoding("ifeval", cfg.generation.ifeval.decoding).max_new_tokens == 16  # from the YAML


def test_config_rejects_unknown_keys_and_benchmarks():
    with pytest.raises(ConfigError, match="generation.hf.batchsize"):
        load_config(Config, None, ["generation.hf.batchsize=3"])
    with pytest.raises(ConfigError, match="unknown benchmark 'gsm8k'"):
        load_config(Config, None, ["generation.benchmarks=[ifeval,gsm8k]"])


@pytest.mark.parametrize(
    "path", sorted((REPO_ROOT / "configs").glob("generate_*.yaml")), ids=lambda p: p.name
)
def test_example_configs_load(path):
    assert isinstance(load_config(Config, path), Config)


@pytest.mark.skipif(
    not DEFAULT_PATHS["mt_bench"].exists(), reason="no shared benchmark copies here"
)
def test_shared_benchmark_files_load_by_default():
    counts = {name: len(load_prompts(name, BenchmarkConfig())) for name in DEFAULT_PATHS}
    assert counts == {"ifeval": 541, "mt_bench": 80, "alpaca_eval": 805}
    assert all(len(prompt.turns) == 2 for prompt in load_prompts("mt_bench", BenchmarkConfig()))


# --- resumable JSONL ----------------------------------------------------------------------------


def test_torn_last_line_is_dropped_and_the_file_repaired(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"key": 1, "response": "a"}\n{"key": 2, "response": "b"}\n{"key": 3, "resp')
    records = load_records(path, lambda record: str(record["key"]))
    assert list(records) == ["1", "2"]
    append_record(path, {"key": 3, "response": "c"})
    assert [record["key"] for record in read_jsonl(path)] == [1, 2, 3]


# --- HF backend on the tiny model ---------------------------------------------------------------


def hf_batch(
    prompts: list[list[int]], temperature: float = 0.0, seed: int = 0
) -> dict[str, np.ndarray]:
    """A batch as Ray Data hands it to ``HFGenerator`` (numpy columns, token ids as objects)."""
    count = len(prompts)
    token_ids = np.empty(count, dtype=object)
    for index, ids in enumerate(prompts):
        token_ids[index] = np.array(ids)
    return {
        "generation_id": np.array([str(index) for index in range(count)]),
        "prompt_token_ids": token_ids,
        "temperature": np.full(count, temperature),
        "top_p": np.ones(count),
        "max_new_tokens": np.full(count, 8),
        "seed": np.full(count, seed),
    }


def test_left_padded_batch_generates_what_each_prompt_generates_alone(tiny_model):
    """Greedy answers must not depend on batch neighbours: with right padding, or a wrong
    attention mask, the short prompt would continue from pad tokens and change."""
    generator = HFGenerator(tiny_model)
    assert generator.tokenizer.padding_side == "left"
    tokenizer = generator.tokenizer
    short = encode_prompt(tokenizer, [{"role": "user", "content": "Hi"}])
    long = encode_prompt(
        tokenizer, [{"role": "user", "content": "A much longer question about the sea " * 3}]
    )
    batch = generator(hf_batch([short, long]))
    alone = [generator(hf_batch([ids])) for ids in (short, long)]
    assert batch["text"] == [answer["text"][0] for answer in alone]
    assert batch["token_ids"] == [answer["token_ids"][0] for answer in alone]
    assert all(batch["text"])
    # The ids are the generated ones: decoding them gives the text, their count is reported.
    assert batch["num_generated_tokens"] == [len(ids) for ids in batch["token_ids"]]
    assert [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in batch["token_ids"]] == batch["text"]


def test_sampling_is_reproducible_per_seed(tiny_model):
    generator = HFGenerator(tiny_model)
    ids = encode_prompt(generator.tokenizer, [{"role": "user", "content": "Tell me a story."}])
    first, again = (generator(hf_batch([ids], temperature=1.0, seed=3))["text"] for _ in range(2))
    other = generator(hf_batch([ids], temperature=1.0, seed=4))["text"]
    assert first == again
    assert first != other


# --- vLLM backend wiring (vLLM itself is not installed here) -------------------------------------


@pytest.mark.distributed
def test_vllm_processor_is_built_from_our_config(ray_instance, tiny_model):
    """The kwargs go through the real ``ray.data.llm`` (its pydantic config rejects unknown keys)
    and give a processor whose only stage is the engine: no chat template or tokenizer stage."""
    from ray.data.llm import vLLMEngineProcessorConfig

    cfg = VLLMBackendConfig(
        tensor_parallel_size=2,
        max_model_len=2048,
        dtype="bfloat16",
        batch_size=16,
        concurrency=3,
        placement_group_config={"bundles": [{"GPU": 1, "CPU": 1}] * 2},
        log_engine_metrics=False,
        engine_kwargs={"max_num_seqs": 32},
    )
    kwargs = vllm_backend.processor_config_kwargs(cfg, tiny_model)
    assert kwargs["engine_kwargs"] == dict(
        tensor_parallel_size=2,
        pipeline_parallel_size=1,
        max_model_len=2048,
        dtype="bfloat16",
        gpu_memory_utilization=0.9,
        enable_prefix_caching=True,
        trust_remote_code=False,
        max_num_seqs=32,
    )
    config = vLLMEngineProcessorConfig(**kwargs)
    assert (config.batch_size, config.concurrency, config.log_engine_metrics) == (16, 3, False)
    assert config.placement_group_config["bundles"] == [{"GPU": 1.0, "CPU": 1.0}] * 2
    processor = vllm_backend.build_vllm_processor(cfg, tiny_model)
    assert [type(stage).__name__ for stage in processor.stages.values()] == ["vLLMEngineStage"]


def test_vllm_rows_carry_token_ids_and_sampling_params():
    row = {
        "generation_id": "7",
        "prompt_token_ids": np.array([1, 5, 9]),
        "temperature": 0.7,
        "top_p": 0.9,
        "max_new_tokens": 1024,
        "seed": 2,
    }
    request = vllm_backend.preprocess(row)
    assert request["tokenized_prompt"] == [1, 5, 9]
    assert request["sampling_params"] == dict(
        temperature=0.7,
        top_p=0.9,
        top_k=-1,
        repetition_penalty=1.0,
        max_tokens=1024,
        seed=2,
        skip_special_tokens=True,
    )
    answer = vllm_backend.postprocess(
        {"generation_id": "7", "generated_text": " Hi there. ", "num_generated_tokens": 4,
         "generated_tokens": np.array([11, 12, 13, 2])}
    )
    assert answer == {"generation_id": "7", "text": "Hi there.", "num_generated_tokens": 4,
                      "token_ids": [11, 12, 13, 2]}


@pytest.mark.distributed
def test_vllm_backend_path_through_ray_data(
    ray_instance, tiny_model, prompt_files, tmp_path, monkeypatch
):
    """The vLLM path end to end with a stand-in ``ray.data.llm`` whose engine answers with the
    prompt's token count; our pre/post-processing runs in Ray Data workers."""
    built = {}

    def build_processor(config, preprocess, postprocess):
        built["config"] = config

        def engine(row):  # what the vLLM engine stage adds to a row
            tokenizer = AutoTokenizer.from_pretrained(tiny_model)
            ids = tokenizer(f" answer {len(row['tokenized_prompt'])}", add_special_tokens=False)["input_ids"]
            return {
                **row,
                "generated_text": "(the engine's text; the stage stores the decoded ids)",
                "num_generated_tokens": len(ids) + 1,
                "generated_tokens": ids + [tokenizer.eos_token_id],
            }

        return lambda dataset: dataset.map(preprocess).map(engine).map(postprocess)

    fake = types.ModuleType("ray.data.llm")
    fake.vLLMEngineProcessorConfig = lambda **kwargs: kwargs
    fake.build_processor = build_processor
    monkeypatch.setitem(sys.modules, "ray.data.llm", fake)
    cfg = load_config(
        Config,
        None,
        small_run(
            tiny_model,
            prompt_files,
            tmp_path,
            "generation.backend=vllm",
            "generation.benchmarks=[ifeval]",
            "generation.vllm.tensor_parallel_size=4",
            "generation.vllm.check_resources=false",  # 4 GPUs asked of a 2-CPU Ray
        ),
    )
    records = read_jsonl(generate_module.generate(cfg)["ifeval"])
    assert built["config"]["model_source"] == tiny_model
    assert built["config"]["engine_kwargs"]["tensor_parallel_size"] == 4
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    expected = [
        f"answer {len(encode_prompt(tokenizer, [{'role': 'user', 'content': r['prompt']}]))}"
        for r in IFEVAL
    ]
    assert [record["response"] for record in records] == expected


def test_vllm_stage_refuses_a_placement_the_cluster_cannot_hold():
    """Too few CPUs for the engines plus Ray Data's tasks would stall without a word (measured:
    "Active & requested resources: 5/4 CPU" forever); the check fails first, naming the numbers."""
    cpu_engine = VLLMBackendConfig(placement_group_config={"bundles": [{"CPU": 2}]}, concurrency=2)
    assert vllm_backend.engine_resources(cpu_engine) == {"CPU": 2.0, "GPU": 0.0}
    vllm_backend.check_resources(cpu_engine, {"CPU": 5.0})  # 2 x 2 + 1 for Ray Data
    with pytest.raises(RuntimeError, match=r"has 4 CPUs and 0 GPUs; the vLLM stage needs 5 CPUs and 0 GPUs"):
        vllm_backend.check_resources(cpu_engine, {"CPU": 4.0})
    # GPU engines: one GPU per tensor-parallel worker unless placed otherwise.
    tp2 = VLLMBackendConfig(tensor_parallel_size=2, concurrency=3)
    assert vllm_backend.engine_resources(tp2) == {"CPU": 3.0, "GPU": 2.0}
    vllm_backend.check_resources(tp2, {"CPU": 10.0, "GPU": 6.0})
    with pytest.raises(RuntimeError, match=r"needs 10 CPUs and 6 GPUs"):
        vllm_backend.check_resources(tp2, {"CPU": 64.0, "GPU": 4.0})
    assert vllm_backend.engine_resources(VLLMBackendConfig()) == {"CPU": 1.0, "GPU": 1.0}
    vllm_backend.check_resources(VLLMBackendConfig(check_resources=False), {"CPU": 1.0})


# --- the whole stage ----------------------------------------------------------------------------


def test_reruns_generate_only_what_is_missing(tiny_model, prompt_files, tmp_path, monkeypatch):
    """The stage's bookkeeping with the backend replaced by an echo (no Ray): a rerun asks for
    nothing; lost records, and only those, are asked for again; MT-Bench resumes at turn 2."""
    passes: list[int] = []  # rows asked for, per pass

    def echo_backend(rows, cfg, model_path):
        passes.append(len(rows))
        for row in rows:
            yield {
                "generation_id": row["generation_id"],
                "text": f"answer {len(row['prompt_token_ids'])}",
            }

    monkeypatch.setattr(generate_module, "init_ray", lambda cfg: None)
    monkeypatch.setattr(generate_module, "run_backend", echo_backend)
    cfg = load_config(Config, None, small_run(tiny_model, prompt_files, tmp_path))
    outputs = generate_module.generate(cfg)
    assert passes == [3 + 2 + 2, 2]  # every first turn, then MT-Bench turn 2
    first_run = {name: read_jsonl(path) for name, path in outputs.items()}
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    for record in first_run["mt_bench"]:  # turn 2 is asked with the model's own first answer
        q1, q2 = record["questions"]
        a1 = f"answer {len(encode_prompt(tokenizer, [{'role': 'user', 'content': q1}]))}"
        second = [
            {"role": "user", "content": q1},
            {"role": "assistant", "content": a1},
            {"role": "user", "content": q2},
        ]
        assert record["turns"] == [a1, f"answer {len(encode_prompt(tokenizer, second))}"]

    passes.clear()
    generate_module.generate(cfg)
    assert passes == []
    assert {name: read_jsonl(path) for name, path in outputs.items()} == first_run

    # Lose IFEval's middle record, MT-Bench's first, and leave a torn line after AlpacaEval's.
    outputs["ifeval"].write_text(
        "".join(json.dumps(r) + "\n" for r in first_run["ifeval"] if r["key"] != 1001)
    )
    outputs["mt_bench"].write_text(json.dumps(first_run["mt_bench"][1]) + "\n")
    with outputs["alpaca_eval"].open("a") as out:
        out.write('{"instruction": "Say hel')
    generate_module.generate(cfg)
    assert passes == [1, 1]  # IFEval 1001; MT-Bench 81's turn 2 only
    assert {name: read_jsonl(path) for name, path in outputs.items()} == first_run  # same, in order
    runs = json.loads(outputs["ifeval"].with_suffix(".meta.json").read_text())["runs"]
    assert [(run["reused"], run["generated"]) for run in runs] == [(0, 3), (3, 0), (2, 1)]


@pytest.mark.distributed
def test_generate_on_the_hf_backend_writes_benchmark_formats(
    ray_instance, tiny_model, prompt_files, tmp_path, capsys
):
    overrides = small_run(tiny_model, prompt_files, tmp_path)
    outputs = generate_module.main(
        ["--config", str(REPO_ROOT / "configs/generate_tiny.yaml"), *overrides]
    )
    printed = capsys.readouterr().out
    assert all(f"{name}: {path}" in printed for name, path in outputs.items())

    ifeval = read_jsonl(outputs["ifeval"])
    assert [record["key"] for record in ifeval] == [1000, 1001, 1005]
    assert {"key", "prompt", "response", "messages", "model_path", "decoding"} <= set(ifeval[0])
    assert ifeval[0]["decoding"]["greedy"] and ifeval[0]["decoding"]["max_new_tokens"] == 6
    mt_bench = read_jsonl(outputs["mt_bench"])
    assert [(r["question_id"], r["category"], len(r["turns"])) for r in mt_bench] == [
        (81, "writing", 2),
        (111, "math", 2),
    ]
    assert mt_bench[0]["messages"][1]["content"] == mt_bench[0]["turns"][0]  # turn 2 saw answer 1
    assert [r["decoding"]["temperature"] for r in mt_bench] == [0.7, 0.0]
    alpaca = read_jsonl(outputs["alpaca_eval"])
    assert [(r["instruction"], r["generator"], r["dataset"]) for r in alpaca] == [
        ("Name a color.", "tiny-test", "helpful_base"),
        ("Say hello.", "tiny-test", "oasst"),
    ]
    meta = json.loads(outputs["ifeval"].with_suffix(".meta.json").read_text())
    assert (meta["backend"], meta["model_path"], meta["runs"][-1]["generated"]) == (
        "hf",
        tiny_model,
        3,
    )
    assert {"torch", "transformers", "ray"} <= set(meta["versions"])

    before = {name: path.read_text() for name, path in outputs.items()}
    generate_module.main(["--config", str(REPO_ROOT / "configs/generate_tiny.yaml"), *overrides])
    assert {name: path.read_text() for name, path in outputs.items()} == before
    assert (
        json.loads(outputs["mt_bench"].with_suffix(".meta.json").read_text())["runs"][-1][
            "generated"
        ]
        == 0
    )


def test_answers_of_another_model_or_decoding_are_never_reused(tiny_model, prompt_files, tmp_path, monkeypatch):
    """Resume used to compare the decoding settings but not the model: model B reused model A's
    answers. Answers now carry the identity of the weights that wrote them, and a rerun with
    another model (or other decoding) into the same directory refuses, naming why."""
    import shutil

    def echo_backend(rows, cfg, model_path):
        for row in rows:
            yield {"generation_id": row["generation_id"], "text": "answer"}

    monkeypatch.setattr(generate_module, "init_ray", lambda cfg: None)
    monkeypatch.setattr(generate_module, "run_backend", echo_backend)
    out = tmp_path / "out"
    generate_module.generate(load_config(Config, None, small_run(tiny_model, prompt_files, out)))
    generate_module.generate(load_config(Config, None, small_run(tiny_model, prompt_files, out)))  # same: reused

    other = tmp_path / "other_model"
    shutil.copytree(tiny_model, other)
    (other / "config.json").write_text((other / "config.json").read_text().replace("}", ', "retrained": 1}', 1))
    with pytest.raises(ValueError, match="generated by another model"):
        generate_module.generate(load_config(Config, None, small_run(str(other), prompt_files, out)))
    with pytest.raises(ValueError, match="other decoding settings"):
        generate_module.generate(load_config(Config, None, small_run(
            tiny_model, prompt_files, out, "generation.ifeval.decoding.max_new_tokens=9")))
