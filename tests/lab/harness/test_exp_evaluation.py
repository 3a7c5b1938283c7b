"""Length evaluation against models whose answers are known: an oracle that computes the group products exactly,
and one that always answers the identity."""

import torch
import torch.nn as nn
from transformers.utils import ModelOutput

from fpmamba_lab.harness import eval_lengths, evaluate_lengths, primary_metric
from fpmamba_lab.tasks import get_group, get_task


class ProductOracle(nn.Module):
    """Predicts the running product of an S3 word exactly (or, with `wrong=True`, always the identity)."""

    def __init__(self, wrong: bool = False) -> None:
        super().__init__()
        self.group = get_group("S3")
        self.wrong = wrong
        self.weight = nn.Parameter(torch.zeros(1))  # gives the harness a device to read

    def forward(self, input_ids: torch.Tensor, **kwargs) -> ModelOutput:
        vocab = get_task("S3").vocab_size
        words = input_ids[:, 1:].clamp(max=self.group.order - 1).numpy()  # BOS dropped; padding never scored
        target = torch.zeros_like(input_ids)
        target[:, 1:] = torch.as_tensor(self.group.prefix_products(words))
        if self.wrong:
            target.zero_()
        logits = torch.nn.functional.one_hot(target, vocab).float()
        return ModelOutput(logits=logits)


def test_oracle_is_perfect_and_identity_is_not():
    task = get_task("S3")
    lengths = [2, 3, 7]
    perfect = evaluate_lengths(ProductOracle(), task, lengths, num_examples=40, batch_size=16, progress_bar=False)
    identity = evaluate_lengths(ProductOracle(wrong=True), task, lengths, num_examples=40, batch_size=16,
                                progress_bar=False)
    assert [r.length for r in perfect] == lengths
    assert all(r.accuracy == 1.0 and r.fp_iterations_mean is None for r in perfect)
    # Every prefix product must be the identity: chance 1/6 per position, so it collapses with length.
    assert identity[0].accuracy < 0.2 and identity[-1].accuracy == 0.0


def test_eval_lengths_cover_two_to_factor_times_train_length():
    assert eval_lengths(8) == list(range(2, 33))
    sparse = eval_lengths(16, factor=4, max_points=10)
    assert sparse[0] == 2 and sparse[-1] == 64 and 16 in sparse and len(sparse) <= 12


def test_primary_metric_per_task_family():
    assert primary_metric({"token_acc": 0.5, "seq_acc": 0.1}) == "seq_acc"
    assert primary_metric({"char_acc": 0.5, "string_acc": 0.1}) == "string_acc"
    assert primary_metric({"acc": 0.3, "scaled_acc": 0.125}) == "scaled_acc"  # modular arithmetic: the paper's
    assert primary_metric({"acc": 0.3}) == "acc"  # parity


class CopyOracle(nn.Module):
    """Copies exactly: after `|` it emits the string again, then `.` (no generate(): exercises the fallback)."""

    def __init__(self, wrong: bool = False) -> None:
        super().__init__()
        self.wrong = wrong
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, **kwargs) -> ModelOutput:
        from fpmamba_lab.tasks import copying

        nxt = torch.zeros_like(input_ids)
        for b, row in enumerate(input_ids.tolist()):
            sep = row.index(copying.SEP_ID)
            source = row[1:sep] + [copying.EOS_ID]
            for j in range(sep, len(row)):
                if j - sep < len(source):
                    nxt[b, j] = source[j - sep] if not self.wrong else copying.FIRST_LETTER_ID
        return ModelOutput(logits=torch.nn.functional.one_hot(nxt, get_task("copy").vocab_size).float())


def test_copy_is_scored_teacher_forced_and_autoregressively():
    task = get_task("copy")
    right = evaluate_lengths(CopyOracle(), task, [3, 9], num_examples=12, batch_size=5, progress_bar=False)
    wrong = evaluate_lengths(CopyOracle(wrong=True), task, [9], num_examples=12, batch_size=5, progress_bar=False)
    for r in right:
        assert r.metrics["string_acc"] == 1.0 and r.metrics["ar_string_acc"] == 1.0 and r.metrics["ar_char_acc"] == 1.0
    assert wrong[0].metrics["ar_string_acc"] == 0.0 and wrong[0].metrics["ar_char_acc"] < 0.5


def test_autoregressive_copy_goes_through_generate_for_fp_mamba():
    from fpmamba_hf import FPMambaConfig, FPMambaForCausalLM

    task = get_task("copy")
    model = FPMambaForCausalLM(FPMambaConfig(vocab_size=task.vocab_size, hidden_size=32, head_dim=16,
                                             state_size=8, num_hidden_layers=1)).eval()
    calls = []
    original = model.generate
    model.generate = lambda *a, **k: calls.append(k) or original(*a, **k)
    result = evaluate_lengths(model, task, [5], num_examples=6, batch_size=4, fp_max_iter=3, progress_bar=False)[0]
    assert len(calls) == 2 and all(k["fp_max_iter"] == 3 and k["max_new_tokens"] == 6 for k in calls)
    assert 0.0 <= result.metrics["ar_char_acc"] <= 1.0 and "ar_string_acc" in result.metrics
