"""benchmarks/bench_cpu.py at toy size: every section runs and returns the keys the JSON and the table use."""

import json

from benchmarks import bench_cpu
from fpmamba_hf import FPMambaConfig, FPMambaForCausalLM
from fpmamba_lab.tasks import get_task

SHAPE = bench_cpu.Shape(hidden_size=32, layers=2, head_dim=16, state_size=8, chunk_size=8, vocab_size=64, batch=2)


def test_every_section_at_toy_size():
    mamba2, fp = bench_cpu.mamba2_pair(SHAPE)
    result = {"conversion_max_logit_diff": bench_cpu.max_logit_diff(mamba2, fp, SHAPE, T=12)}
    assert result["conversion_max_logit_diff"] < 1e-4
    result["forward"] = bench_cpu.bench_forward(mamba2, fp, SHAPE, [12], reps=1)
    result["train_step"] = bench_cpu.bench_train_step(mamba2, fp, SHAPE, 12, reps=1)
    result["decode"] = bench_cpu.bench_decode(mamba2, fp, SHAPE, prompt_length=6, new_tokens=3, reps=1)
    result["extra_iteration"] = bench_cpu.bench_extra_iteration(mamba2, SHAPE, 12, [2, 3], reps=1)
    result["decode_ops"] = {name: bench_cpu.count_decode_ops(m, SHAPE, prompt_length=6, steps=2)
                            for name, m in (("mamba2", mamba2), ("fpmamba", fp))}
    task = get_task("S3")
    model = FPMambaForCausalLM(FPMambaConfig(vocab_size=task.vocab_size, hidden_size=16, head_dim=8, state_size=4,
                                             chunk_size=4, num_hidden_layers=1, fp_max_iter_eval=6)).eval()
    result["solvers"] = {"rows": bench_cpu.bench_solvers(model, task, [4], rows=4, reps=1, anderson_ms=[2])}

    for row in (*result["forward"], result["train_step"]):
        assert row["mamba2_ms"] > 0 and row["fpmamba_ms"] > 0 and row["ratio"] > 0
    # ms/token is a difference of two timings: at one repetition on a shared machine its sign is not guaranteed
    assert {"mamba2_ms", "fpmamba_ms", "ratio", "generate_ms"} <= set(result["decode"])
    assert set(result["extra_iteration"]["ms_by_iterations"]) == {"2", "3"}
    assert "slope_in_mamba2_forwards" in result["extra_iteration"]
    for counts in result["decode_ops"].values():
        assert counts["per_token"]["ops"] >= counts["per_token_per_layer"]["ops"] * SHAPE.layers > 0
        assert set(counts["per_token"]) == {"ops", "syncs", "data_dependent"}
    # Exact counts, not timings: a converted model decodes without a host sync (its map needs one evaluation, so no
    # stopping decision; finiteness is read once when generate() ends; no input checks inside generate()).
    assert result["decode_ops"]["fpmamba"]["per_token"]["syncs"] == 0
    assert result["decode_ops"]["mamba2"]["per_token"]["syncs"] == 0
    assert [r["solver"] for r in result["solvers"]["rows"]] == ["picard", "anderson_m2"]
    assert all(0 <= r["at_cap_share"] <= 1 and 1 <= r["iterations_mean"] <= 6 for r in result["solvers"]["rows"])
    assert model.config.fp_solver == "picard"  # restored
    json.dumps(result)
    assert "decode (ms/token)" in bench_cpu.markdown(result)


def test_quick_mode_shrinks_the_run():
    args = bench_cpu.parse_args(["--quick"])
    assert args.reps <= 2 and args.lengths == [128] and args.train_steps <= 20
