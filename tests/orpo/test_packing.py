"""Padding-free packing: the layout, parity with the padded path (values and gradients, every
objective, direct and chunked, vocabulary 32k), the refusal of models whose attention leaks
across sequences, and both launchers' switch."""

import pytest
import torch
from transformers import LlamaForCausalLM, OPTConfig, OPTForCausalLM

from orpo.collate import PreferenceCollator
from orpo.logps import IGNORE_INDEX, NllSpan, concatenated_forward
from orpo.losses import LossType
from orpo.objective import GlobalCounts, ModelReference, batch_counts, micro_batch_loss
from orpo.packing import PackedCollator, packing_error, real_tokens, use_packing
from orpo.tiny import tiny_llama_config
from orpo.trainer_config import LossConfig

VOCAB = 32_000
PAD = 0


def _examples(n_pairs=4, seed=0):
    """Pairs of varied lengths: every padded batch pads, and packed rows hold sequences of every length."""
    rng = torch.Generator().manual_seed(seed)

    def ids(low, high):
        n = int(torch.randint(low, high, (1,), generator=rng))
        return torch.randint(3, VOCAB, (n,), generator=rng).tolist()

    return [{"prompt_ids": [1] + ids(2, 12), "chosen_ids": ids(2, 20) + [2], "rejected_ids": ids(2, 20) + [2],
             "index": i} for i in range(n_pairs)]


def _llama(attn="sdpa", seed=0):
    torch.manual_seed(seed)
    config = tiny_llama_config(VOCAB, hidden_size=64, num_layers=2, num_heads=4)
    config._attn_implementation = attn
    return LlamaForCausalLM(config).float()


def test_packed_layout_by_hand():
    """Pair 0: prompt [1, 5], chosen [6, 2], rejected [7, 8, 2]; pair 1: prompt [1], chosen [9, 2],
    rejected [4, 2]. One row: chosen 0, chosen 1, rejected 0, rejected 1 (the padded rows' order),
    positions restarting per sequence, labels with prompts ignored; padded to a multiple of 8 by a
    sequence of its own (segment -1)."""
    examples = [{"prompt_ids": [1, 5], "chosen_ids": [6, 2], "rejected_ids": [7, 8, 2], "index": 10},
                {"prompt_ids": [1], "chosen_ids": [9, 2], "rejected_ids": [4, 2], "index": 11}]
    batch = PackedCollator(PAD, pad_to_multiple_of=8)(examples)
    x = IGNORE_INDEX
    assert batch["input_ids"].tolist() == [[1, 5, 6, 2, 1, 9, 2, 1, 5, 7, 8, 2, 1, 4, 2, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2, 0]]
    assert batch["segment_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, -1]]
    assert batch["labels"].tolist() == [[x, x, 6, 2, x, 9, 2, x, x, 7, 8, 2, x, 4, 2, x]]
    assert batch["index"].tolist() == [10, 11]
    assert float(batch["padding_fraction"]) == pytest.approx(1 / 16)
    assert int(real_tokens(batch)) == 15


def _loss_and_grads(model, batches, cfg, chunked, reference=None):
    model.zero_grad(set_to_none=True)
    totals = sum(batch_counts(b, cfg) for b in batches)
    counts = GlobalCounts(pairs=float(totals[0]), nll_tokens=float(totals[1]))
    total, metrics = 0.0, []
    for batch in batches:
        loss, m, _ = micro_batch_loss(model, batch, cfg, counts, 1, reference, chunked, chunk_size=64)
        loss.backward()
        total += loss.item()
        metrics.append(m)
    return total, {n: p.grad.clone() for n, p in model.named_parameters()}, metrics


@pytest.fixture(scope="module")
def llama():
    return _llama()


@pytest.mark.parametrize("chunked", [False, True], ids=["direct", "chunked"])
@pytest.mark.parametrize("nll_span", list(NllSpan))
def test_per_sequence_logps_equal_the_padded_path(llama, chunked, nll_span):
    examples = _examples(4)
    padded = concatenated_forward(llama, PreferenceCollator(PAD)(examples), nll_span, chunked, 64)
    packed = concatenated_forward(llama, PackedCollator(PAD)(examples), nll_span, chunked, 64)
    for name in ("chosen", "rejected", "chosen_nll"):
        a, b = getattr(padded, name), getattr(packed, name)
        torch.testing.assert_close(b.count, a.count, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(b.sum, a.sum, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("chunked", [False, True], ids=["direct", "chunked"])
@pytest.mark.parametrize("loss_type", ["orpo", "simpo", "dpo", "sft"])
def test_loss_and_gradients_equal_the_padded_path(llama, loss_type, chunked):
    """8 pairs as two micro-batches of 4, packed vs padded: the same global-batch loss and every
    parameter's gradient (fp32, 1e-5). DPO's reference (a perturbed copy) scores packed batches too."""
    examples = _examples(8, seed=1)
    reference = None
    if loss_type == "dpo":
        ref_model = _llama(seed=1)
        reference = ModelReference(ref_model, chunked=chunked, chunk_size=64)
    cfg = LossConfig(type=LossType(loss_type), lam=0.5)
    runs = {}
    for name, collate in (("padded", PreferenceCollator(PAD)), ("packed", PackedCollator(PAD))):
        batches = [collate(examples[i:i + 4]) for i in range(0, 8, 4)]
        runs[name] = _loss_and_grads(llama, batches, cfg, chunked, reference)
    (loss_a, grads_a, metrics_a), (loss_b, grads_b, metrics_b) = runs["padded"], runs["packed"]
    assert loss_b == pytest.approx(loss_a, abs=1e-5)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-5, atol=1e-5, msg=name)
    for a, b in zip(metrics_a, metrics_b):
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-5, msg=key)


def test_counts_equal_the_padded_path():
    examples = _examples(5, seed=2)
    for span in NllSpan:
        cfg = LossConfig(nll_span=span)
        padded = batch_counts(PreferenceCollator(PAD)(examples), cfg)
        packed = batch_counts(PackedCollator(PAD, pad_to_multiple_of=8)(examples), cfg)
        assert packed.tolist() == padded.tolist()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_llama_attention_honours_packing(attn):
    model = _llama(attn)
    assert packing_error(model) < 1e-5  # measured ~3e-7 (fp32 summation order)
    assert use_packing(model, True)
    assert not use_packing(model, False)
    assert not use_packing(model, "auto")  # auto pads on CPU, where packing measured slower


def _opt():
    """OPT with eager attention: its causal mask ignores position ids, so a packed row attends
    across sequences. (Under sdpa ``use_packing`` switches it to per-sequence attention, which
    the check then finds exact.)"""
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                       word_embed_proj_dim=64, pad_token_id=PAD, bos_token_id=1, eos_token_id=2)
    config._attn_implementation = "eager"
    return OPTForCausalLM(config).float()


def test_a_model_whose_attention_leaks_is_refused():
    model = _opt()
    examples = _examples(2, seed=3)
    # The leak is real: packed log-probs of OPT are far from its padded (correct) ones ...
    padded = concatenated_forward(model, PreferenceCollator(PAD)(examples))
    packed = concatenated_forward(model, PackedCollator(PAD)(examples))
    assert (packed.rejected.sum - padded.rejected.sum).abs().max() > 1e-2
    # ... and the check sees it: auto falls back to padding, true refuses with the reason.
    assert packing_error(model) > 1e-2  # measured 0.80
    assert not use_packing(model, "auto")
    with pytest.raises(ValueError, match=r"loop.packing=true is not supported for OPTForCausalLM.*attn_implementation"):
        use_packing(model, True)


def test_the_local_launcher_trains_the_same_packed_or_padded(tmp_path, tiny_model_dir):
    """``orpo.train_local`` end to end: packing=true and false give the same losses (token-normalised
    NLL, accumulation 2); on CPU auto pads (packing measured slower here)."""
    from orpo.config import load_config
    from orpo.train_local import run
    from pipelines.config import Config

    def losses(packing):
        cfg = load_config(Config, "configs/tiny_local.yaml", [
            f"output_dir={tmp_path / str(packing)}", f"model.name_or_path={tiny_model_dir}", "data.synthetic_size=64",
            "loop.logging_steps=1", "loop.max_steps=3", "loop.micro_batch_size=2", "loop.global_batch_size=4",
            "loop.eval_at_start=false", f"loop.packing={packing}"])
        return [m for m in run(cfg, echo=False).history if "loss" in m]

    packed, padded, auto = losses("true"), losses("false"), losses("auto")
    assert [m["loss"] for m in packed] == pytest.approx([m["loss"] for m in padded], abs=1e-5)
    assert all(m["padding_fraction"] == 0.0 for m in packed) and padded[0]["padding_fraction"] > 0
    assert [m["loss"] for m in auto] == [m["loss"] for m in padded]


def test_a_leaking_dpo_reference_model_turns_packing_off(tmp_path):
    """The DPO reference scores the same packed batches: a reference whose attention leaks (OPT)
    makes ``true`` refuse, however well the policy packs (and ``auto``, which pads on CPU anyway,
    pad)."""
    from orpo.config import replace_values
    from orpo.job import TrainingJob, attach_engine
    from pipelines.config import Config

    _opt().save_pretrained(tmp_path / "opt")
    policy = _llama()
    for packing in ("auto", True):
        cfg = replace_values(Config(), {"loss.type": "dpo", "loss.reference_model": str(tmp_path / "opt"),
                                        "loop.packing": packing, "model.dtype": "float32",
                                        "model.attn_implementation": "eager"})
        job = TrainingJob(str(tmp_path / "unused"), None, policy)
        if packing == "auto":
            attach_engine(job, cfg, policy, torch.device("cpu"))
            assert job.reference is not None and not job.packed
        else:
            with pytest.raises(ValueError, match="OPTForCausalLM"):
                attach_engine(job, cfg, policy, torch.device("cpu"))


def test_varlen_sdpa_is_per_sequence_causal_attention(monkeypatch):
    """``VARLEN_SDPA`` on one packed row equals sdpa with the block-diagonal causal mask, calls the
    sdpa kernel once per sequence (never over the whole row), and is what ``use_packing`` sets."""
    import torch.nn.functional as F
    from transformers.integrations import sdpa_attention

    from orpo.packing import VARLEN_SDPA, varlen_sdpa_attention

    torch.manual_seed(0)
    lengths = [5, 9, 3]
    q, k, v = (torch.randn(1, 4, sum(lengths), 8) for _ in range(3))
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    segments = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    mask = (segments[:, None] == segments[None, :]) & torch.ones(len(segments), len(segments), dtype=torch.bool).tril()
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    module = torch.nn.Module()
    out, _ = varlen_sdpa_attention(module, q, k, v, None, position_ids=positions)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)

    calls = []
    original = sdpa_attention.sdpa_attention_forward
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward",
                        lambda m, q, *a, **kw: calls.append(q.shape[2]) or original(m, q, *a, **kw))
    model = _llama()
    assert use_packing(model, True) and model.config._attn_implementation == VARLEN_SDPA
    calls.clear()
    concatenated_forward(model, PackedCollator(PAD)(_examples(2)))
    assert len(calls) == 2 * 4 and max(calls) < 40  # 2 layers x 4 sequences, each a sequence's length
