"""vLLM backend through Ray Data LLM: the processor config from ours, and row pre/post-processing.

Prompts arrive already templated and tokenized (``orpo.chat.encode_prompt``, the training
template), so Ray Data LLM's chat-template and tokenize stages are off and the engine gets
``tokenized_prompt`` directly: vLLM never applies a template of its own. The engine's own
detokenization stands (the detokenize stage is off), but the stored text is decoded from the
generated ids on the driver (``answer_text``), as the HF backend does, so both store the same.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pipelines.generation.benchmarks import clean_output
from pipelines.generation.config import VLLMBackendConfig

# Ray Data's own tasks (reading the rows, pre/post-processing) need a CPU beside the engines:
# with none free they wait forever, with no error.
DATA_TASK_CPUS = 1.0


def engine_kwargs(cfg: VLLMBackendConfig, trust_remote_code: bool = False) -> dict[str, Any]:
    """vLLM engine arguments (``vllm.EngineArgs`` names); ``cfg.engine_kwargs`` wins."""
    kwargs: dict[str, Any] = dict(
        tensor_parallel_size=cfg.tensor_parallel_size,
        pipeline_parallel_size=cfg.pipeline_parallel_size,
        max_model_len=cfg.max_model_len,
        dtype=cfg.dtype,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        enable_prefix_caching=cfg.enable_prefix_caching,
        trust_remote_code=trust_remote_code,
    )
    kwargs.update(cfg.engine_kwargs)
    return kwargs


def processor_config_kwargs(
    cfg: VLLMBackendConfig, model_path: str, trust_remote_code: bool = False
) -> dict[str, Any]:
    """Keyword arguments of ``ray.data.llm.vLLMEngineProcessorConfig``."""
    kwargs: dict[str, Any] = dict(
        model_source=model_path,
        engine_kwargs=engine_kwargs(cfg, trust_remote_code),
        batch_size=cfg.batch_size,
        concurrency=cfg.concurrency,
        max_concurrent_batches=cfg.max_concurrent_batches,
        task_type="generate",
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
        log_engine_metrics=cfg.log_engine_metrics,
    )
    optional = dict(
        accelerator_type=cfg.accelerator_type,
        placement_group_config=cfg.placement_group_config,
        runtime_env=cfg.runtime_env,
    )
    kwargs.update({name: value for name, value in optional.items() if value is not None})
    return kwargs


def engine_resources(cfg: VLLMBackendConfig) -> dict[str, float]:
    """What Ray reserves for one engine replica, as ``ray.data.llm``'s engine stage asks for it.

    One worker (tensor x pipeline parallel 1) runs in the stage's actor, which takes the
    placement bundles' sum (one GPU when unset); more workers run vLLM's Ray executor, whose
    actor takes a CPU and whose placement group takes the bundles (one GPU + CPU each when unset).
    """
    workers = cfg.tensor_parallel_size * cfg.pipeline_parallel_size
    bundles = (cfg.placement_group_config or {}).get("bundles")
    if workers == 1:
        if not bundles:
            return {"CPU": 1.0, "GPU": 1.0}
        total: Counter[str] = Counter()
        for bundle in bundles:
            total.update({name: float(amount) for name, amount in bundle.items()})
        return {"CPU": total.get("CPU", 0.0) or 1.0, "GPU": total.get("GPU", 0.0)}
    bundles = bundles or [{"GPU": 1, "CPU": 1}] * workers
    return {
        "CPU": 1.0 + sum(float(bundle.get("CPU", 0)) for bundle in bundles),
        "GPU": sum(float(bundle.get("GPU", 0)) for bundle in bundles),
    }


def check_resources(cfg: VLLMBackendConfig, cluster: dict[str, float]) -> None:
    """Refuse a placement the cluster cannot hold, which would otherwise wait forever.

    ``cluster`` is ``ray.cluster_resources()``. The engines (``concurrency`` replicas, see
    ``engine_resources``) and Ray Data's own tasks (``DATA_TASK_CPUS``) must fit together.
    """
    if not cfg.check_resources:
        return
    per_engine = engine_resources(cfg)
    needed_cpus = cfg.concurrency * per_engine["CPU"] + DATA_TASK_CPUS
    needed_gpus = cfg.concurrency * per_engine["GPU"]
    cpus, gpus = float(cluster.get("CPU", 0.0)), float(cluster.get("GPU", 0.0))
    if cpus >= needed_cpus and gpus >= needed_gpus:
        return
    placement = cfg.placement_group_config or "one {GPU: 1, CPU: 1} bundle per worker"
    raise RuntimeError(
        f"the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs; the vLLM stage needs "
        f"{needed_cpus:g} CPUs and {needed_gpus:g} GPUs: generation.vllm.concurrency={cfg.concurrency} "
        f"engines x {per_engine['CPU']:g} CPUs / {per_engine['GPU']:g} GPUs each (placement "
        f"{placement}, tensor x pipeline parallel {cfg.tensor_parallel_size} x "
        f"{cfg.pipeline_parallel_size}) + {DATA_TASK_CPUS:g} CPU for Ray Data's tasks; the dataset "
        "would wait forever. Lower generation.vllm.concurrency, change "
        "generation.vllm.placement_group_config, give Ray more CPUs (ray.num_cpus for an embedded "
        "Ray), or set generation.vllm.check_resources=false on an autoscaling cluster"
    )


def sampling_params(row: dict[str, Any]) -> dict[str, Any]:
    """``vllm.SamplingParams`` of a request row, matching the HF backend's decoding.

    A row's ``stop_token_ids`` (the chat template's turn-end token) stop generation besides
    vLLM's own EOS ids, as in the HF backend.
    """
    params = dict(
        temperature=float(row["temperature"]),  # vLLM decodes greedily at 0
        top_p=float(row["top_p"]),
        top_k=-1,  # off, as in the HF backend
        repetition_penalty=1.0,
        max_tokens=int(row["max_new_tokens"]),
        seed=int(row["seed"]),
        skip_special_tokens=True,
    )
    stop = row.get("stop_token_ids")
    if stop is not None and len(stop):
        params["stop_token_ids"] = [int(token) for token in stop]
    return params


def preprocess(row: dict[str, Any]) -> dict[str, Any]:
    """Request row -> what the vLLM engine stage reads (other columns are carried through)."""
    return dict(
        generation_id=str(row["generation_id"]),
        tokenized_prompt=[int(token) for token in row["prompt_token_ids"]],
        sampling_params=sampling_params(row),
    )


def postprocess(row: dict[str, Any]) -> dict[str, Any]:
    """Engine output row -> ``generation_id``, ``text``, ``num_generated_tokens``, ``token_ids``
    (``text`` is the engine's; ``pipelines.generate`` stores ``answer_text`` of the ids)."""
    return dict(
        generation_id=str(row["generation_id"]),
        text=clean_output(str(row["generated_text"])),
        num_generated_tokens=int(row["num_generated_tokens"]),
        token_ids=[int(token) for token in row["generated_tokens"]],
    )


def build_vllm_processor(
    cfg: VLLMBackendConfig, model_path: str, trust_remote_code: bool = False
) -> Any:
    """A Ray Data LLM processor: ``processor(dataset)`` maps request rows to answer rows."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig  # needs vllm on the workers

    config = vLLMEngineProcessorConfig(
        **processor_config_kwargs(cfg, model_path, trust_remote_code)
    )
    return build_processor(config, preprocess=preprocess, postprocess=postprocess)
