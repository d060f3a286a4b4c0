"""vLLM backend through Ray Data LLM: the processor config from ours, and row pre/post-processing.

Prompts arrive already templated and tokenized (``orpo.chat.encode_prompt``, the training
template), so Ray Data LLM's chat-template and tokenize stages are off and the engine gets
``tokenized_prompt`` directly: vLLM never applies a template of its own. vLLM detokenizes
(skipping special tokens), so the detokenize stage is off too.
"""

from __future__ import annotations

from typing import Any

from pipelines.generation.benchmarks import clean_output
from pipelines.generation.config import VLLMBackendConfig


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
    """Engine output row -> ``generation_id``, ``text``, ``num_generated_tokens`` (as from HF)."""
    return dict(
        generation_id=str(row["generation_id"]),
        text=clean_output(str(row["generated_text"])),
        num_generated_tokens=int(row["num_generated_tokens"]),
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
