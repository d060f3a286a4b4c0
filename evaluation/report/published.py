"""The papers' published benchmark numbers, shown as labelled reference rows (never run here).

Each number carries its source. Units match our own summaries: IFEval as fractions (0..1),
AlpacaEval win rates in percent (0..100), MT-Bench on the judge's 1..10 scale.

Left out on purpose (found, but not attributable to a specific table of the paper):
- Mistral-ORPO-β's 14.7 length-controlled AlpacaEval 2.0 win rate: the official leaderboard
  (quoted in the xfactlab/orpo README), not the ORPO paper, which reports raw win rates only.
- Llama-3-8B-Instruct SimPO's MT-Bench scores (SimPO paper, main results table): not verified.
- The ORPO paper's AlpacaEval standard errors and per-turn MT-Bench scores: not verified.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

ORPO_PAPER = (
    "Hong, Lee & Thorne 2024, ORPO: Monolithic Preference Optimization without Reference Model, "
    "arXiv:2403.07691v2"
)
ORPO_EMNLP = "Hong, Lee & Thorne 2024, ORPO, EMNLP 2024 (2024.emnlp-main.626; arXiv:2403.07691)"
SIMPO_PAPER = (
    "Meng, Xia & Chen 2024, SimPO: Simple Preference Optimization with a Reference-Free Reward, "
    "arXiv:2405.14734v1"
)


@dataclass(frozen=True)
class Reference:
    """One published row: a model's numbers on one benchmark, with where they were printed."""

    model: str
    benchmark: str
    """"ifeval", "alpaca_eval" or "mt_bench"."""
    values: Mapping[str, float]
    """Keys as in our summaries (e.g. ``win_rate``); absent keys were not published."""
    source: str
    """Short citation with the table, e.g. "Hong et al. 2024, Table 6"."""
    paper: str
    """The full reference: authors, year, title, arXiv id (and venue version where it matters)."""
    judge: str | None = None
    """The judge model behind the number (AlpacaEval, MT-Bench)."""
    notes: tuple[str, ...] = field(default=())
    """How the published setting differs from ours (judge, harness, data)."""

    @property
    def label(self) -> str:
        return f"{self.model} ({self.source}) — published, not run here"


REFERENCES: tuple[Reference, ...] = (
    # ORPO paper, IFEval (lm-evaluation-harness with the chat template). The abstract of
    # arXiv:2403.07691v2 cites "66.19% on IFEval (instruction-level loose, Table 6)"; the four
    # metrics of both models are repeated in the authors' README (github.com/xfactlab/orpo).
    Reference(
        model="Mistral-ORPO-α (7B)",
        benchmark="ifeval",
        values={
            "prompt_level_strict_acc": 0.5009,  # arXiv:2403.07691v2, Table 6
            "prompt_level_loose_acc": 0.5083,  # arXiv:2403.07691v2, Table 6
            "inst_level_strict_acc": 0.5995,  # arXiv:2403.07691v2, Table 6
            "inst_level_loose_acc": 0.6163,  # arXiv:2403.07691v2, Table 6
        },
        source="Hong et al. 2024, Table 6",
        paper=ORPO_PAPER,
        notes=("measured with lm-evaluation-harness, chat template applied",),
    ),
    Reference(
        model="Mistral-ORPO-β (7B)",
        benchmark="ifeval",
        values={
            "prompt_level_strict_acc": 0.5287,  # arXiv:2403.07691v2, Table 6
            "prompt_level_loose_acc": 0.5564,  # arXiv:2403.07691v2, Table 6
            "inst_level_strict_acc": 0.6355,  # arXiv:2403.07691v2, Table 6
            "inst_level_loose_acc": 0.6619,  # arXiv:2403.07691v2, Table 6 ("66.19%" in the abstract)
        },
        source="Hong et al. 2024, Table 6",
        paper=ORPO_PAPER,
        notes=("measured with lm-evaluation-harness, chat template applied",),
    ),
    # ORPO paper, AlpacaEval 2.0 raw win rate vs GPT-4 Turbo (no LC: the paper predates it).
    # Table 1 of arXiv:2403.07691v2 (the same numbers are plotted in its Figure 1 and listed
    # in the model cards kaist-ai/mistral-orpo-alpha and kaist-ai/mistral-orpo-beta).
    Reference(
        model="Mistral-ORPO-α (7B)",
        benchmark="alpaca_eval",
        values={"win_rate": 11.33},  # arXiv:2403.07691v2, Table 1, AlpacaEval 2.0 column
        source="Hong et al. 2024, Table 1",
        paper=ORPO_PAPER,
        judge="GPT-4 Turbo",
        notes=("raw win rate only; no length-controlled win rate in the paper",),
    ),
    Reference(
        model="Mistral-ORPO-β (7B)",
        benchmark="alpaca_eval",
        values={"win_rate": 12.20},  # arXiv:2403.07691v2, Table 1, AlpacaEval 2.0 column
        source="Hong et al. 2024, Table 1",
        paper=ORPO_PAPER,
        judge="GPT-4 Turbo",
        notes=("raw win rate only; no length-controlled win rate in the paper",),
    ),
    # SimPO paper, Llama-3-Instruct (8B) setting (v0.1 data annotated by PairRM): AlpacaEval 2
    # LC and raw win rate vs GPT-4 Turbo. Main results table (Table 4) of arXiv:2405.14734v1;
    # 44.7 LC is also in the abstract, and both numbers in the authors' README (v0.1 models).
    Reference(
        model="Llama-3-8B-Instruct SimPO",
        benchmark="alpaca_eval",
        values={
            "length_controlled_winrate": 44.7,  # arXiv:2405.14734v1, Table 4, AlpacaEval 2 LC (%)
            "win_rate": 40.5,  # arXiv:2405.14734v1, Table 4, AlpacaEval 2 WR (%)
        },
        source="Meng et al. 2024, Table 4",
        paper=SIMPO_PAPER,
        judge="GPT-4 Turbo",
        notes=("v0.1 Llama-3-Instruct setting (PairRM-annotated on-policy data)",),
    ),
    # ORPO paper, MT-Bench average of both turns, GPT-4 judge. The EMNLP 2024 version's abstract
    # cites "7.32 in MT-Bench (Table 2)"; arXiv v2 shows the same scores by category (radar).
    Reference(
        model="Mistral-ORPO-α (7B)",
        benchmark="mt_bench",
        values={"overall": 7.23},  # Hong et al., EMNLP 2024 (2024.emnlp-main.626), Table 2
        source="Hong et al. 2024 (EMNLP), Table 2",
        paper=ORPO_EMNLP,
        judge="GPT-4",
        notes=("GPT-4 judge; only the average of both turns is published",),
    ),
    Reference(
        model="Mistral-ORPO-β (7B)",
        benchmark="mt_bench",
        values={"overall": 7.32},  # Hong et al., EMNLP 2024 (2024.emnlp-main.626), Table 2
        source="Hong et al. 2024 (EMNLP), Table 2",
        paper=ORPO_EMNLP,
        judge="GPT-4",
        notes=("GPT-4 judge; only the average of both turns is published",),
    ),
)


def references(benchmark: str) -> list[Reference]:
    """The published rows for one benchmark, in the order above."""
    return [r for r in REFERENCES if r.benchmark == benchmark]
