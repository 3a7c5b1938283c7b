"""The results report (`fpmamba task report`): docs/results/README.md, every run of the results folders, and the
model card's headline table, both generated from the folders so neither can drift from them."""

from .headline import CARD_BEGIN, CARD_END, INDEX_BEGIN, INDEX_END, render_card, render_headline, render_model_index
from .results_readme import render_results_readme
from .runs import BudgetStudy, CommandDrift, Run, load_budget_studies, load_runs, longest_solved, write_plots

__all__ = [
    "CARD_BEGIN", "CARD_END", "INDEX_BEGIN", "INDEX_END", "BudgetStudy", "CommandDrift", "Run", "load_budget_studies",
    "load_runs",
    "longest_solved", "render_card", "render_headline", "render_model_index", "render_results_readme", "write_plots",
]
