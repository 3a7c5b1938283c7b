"""FP-Mamba vs transformers' Mamba2 on the CPU, side by side (issue 13), one run, JSON out.

Sections (interleaved timing: the compared models alternate within every repetition; medians; ratio = FP-Mamba /
Mamba2), at the shape of `Shape` (d_model 256, 2 layers, 8 heads x 64, state 64, batch 4) unless told otherwise:
  forward          eval forward ms at each T of --lengths: Mamba2ForCausalLM (pure-PyTorch path) vs
                   FPMambaForCausalLM.from_mamba2 of the same model at fp_max_iter=1 (the same math)
  train_step       forward + backward ms (no optimizer step) at --train-length, same pair
  decode           generate() ms per new token, greedy, after a --prompt-length prompt:
                   (t(N new tokens) - t(1 new token)) / (N - 1)
  extra_iteration  a fresh FP-Mamba (householder r=2) made to run exactly k iterations (fp_tol 1e-12): ms at each
                   k, the least-squares slope per iteration, and that slope in Mamba2 forwards at the same T
  solvers          Picard vs Anderson on the demo's trained S3 model (trained here, or --model-dir): mean
                   iterations per row, share of rows at the evaluation cap, accuracy, forward ms, per length
  decode_ops       aten ops, host syncs and data-dependent-shape ops per decoded token in steady state (whole model
                   forward, and inside the decoder blocks per layer), counted exactly with a TorchDispatchMode

Usage: python benchmarks/bench_cpu.py --out benchmarks/logs/bench_cpu.json [--quick] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import transformers
from transformers import Mamba2Config, Mamba2ForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import fpmamba_hf  # noqa: E402, F401  (registers "fp_mamba" with the Auto classes)
from benchmarks._cpu_timing import interleaved_ms  # noqa: E402
from benchmarks._op_count import OpCounter  # noqa: E402
from fpmamba_hf import FPMambaConfig, FPMambaForCausalLM  # noqa: E402
from fpmamba_hf.decoding import DecodeRunner  # noqa: E402
from fpmamba_lab.harness import collate, primary_metric, run_experiment  # noqa: E402
from fpmamba_lab.tasks import TaskSpec, get_task  # noqa: E402

SECTIONS = ("forward", "train_step", "decode", "extra_iteration", "solvers", "decode_ops")
TINY_TOL = 1e-12  # a tolerance no iterate reaches: the solve runs exactly fp_max_iter iterations


@dataclass
class Shape:
    """Model and batch size of the side-by-side (heads = expand * hidden_size / head_dim)."""

    hidden_size: int = 256
    layers: int = 2
    head_dim: int = 64
    expand: int = 2
    state_size: int = 64
    chunk_size: int = 64
    vocab_size: int = 1024
    batch: int = 4

    def fpmamba_config(self, **overrides) -> FPMambaConfig:
        return FPMambaConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.layers,
            state_size=self.state_size, head_dim=self.head_dim, expand=self.expand, chunk_size=self.chunk_size,
            pad_token_id=0, **overrides,
        )

    def ids(self, T: int, seed: int) -> torch.LongTensor:
        """Random token ids (batch, T), never the pad id 0."""
        return torch.randint(1, self.vocab_size, (self.batch, T), generator=torch.Generator().manual_seed(seed))


def mamba2_pair(shape: Shape, seed: int = 0, mixer_proj_rank: int = 0) -> tuple[Mamba2ForCausalLM, FPMambaForCausalLM]:
    """A random Mamba2ForCausalLM and its exact FP-Mamba conversion at one iteration (its added mixer's projection
    of rank `mixer_proj_rank`, 0 = full), both in eval mode."""
    torch.manual_seed(seed)
    config = Mamba2Config(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, num_hidden_layers=shape.layers,
        state_size=shape.state_size, head_dim=shape.head_dim, expand=shape.expand,
        num_heads=shape.expand * shape.hidden_size // shape.head_dim, n_groups=1, chunk_size=shape.chunk_size,
        pad_token_id=0, bos_token_id=None, eos_token_id=None,  # no early stop: every generate runs its N tokens
    )
    mamba2 = Mamba2ForCausalLM(config).eval()
    fp = FPMambaForCausalLM.from_mamba2(mamba2, fp_max_iter=1, fp_max_iter_eval=1, mixer_proj_rank=mixer_proj_rank)
    return mamba2, fp.eval()


@torch.no_grad()
def max_logit_diff(mamba2: nn.Module, fp: nn.Module, shape: Shape, T: int = 64) -> float:
    """max |logits| difference of the pair: the conversion is exact, so the timings compare the same math."""
    ids = shape.ids(T, 1)
    return float((mamba2(ids, use_cache=False).logits - fp(ids, use_cache=False).logits).abs().max())


def _pair_row(ms: dict[str, float]) -> dict[str, float]:
    return {"mamba2_ms": ms["mamba2"], "fpmamba_ms": ms["fpmamba"], "ratio": ms["fpmamba"] / ms["mamba2"]}


@torch.no_grad()
def bench_forward(mamba2: nn.Module, fp: nn.Module, shape: Shape, lengths: list[int], reps: int) -> list[dict]:
    """Eval forward (no cache) of the pair at each length."""
    rows = []
    for T in lengths:
        ids = shape.ids(T, T)
        ms = interleaved_ms({"mamba2": partial(mamba2, ids, use_cache=False),
                             "fpmamba": partial(fp, ids, use_cache=False)}, reps)
        rows.append({"T": T, **_pair_row(ms)})
    return rows


def bench_train_step(mamba2: nn.Module, fp: nn.Module, shape: Shape, T: int, reps: int) -> dict:
    """Forward + backward of the causal-LM loss (train mode, no optimizer step)."""
    ids = shape.ids(T, 2)

    def step(model: nn.Module) -> None:
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids, use_cache=False).loss.backward()

    mamba2.train()
    fp.train()
    try:
        ms = interleaved_ms({"mamba2": partial(step, mamba2), "fpmamba": partial(step, fp)}, reps)
    finally:
        for model in (mamba2, fp):
            model.zero_grad(set_to_none=True)
            model.eval()
    return {"T": T, **_pair_row(ms)}


@torch.no_grad()
def bench_decode(mamba2: nn.Module, fp: nn.Module, shape: Shape, prompt_length: int, new_tokens: int,
                 reps: int) -> dict:
    """generate() ms per new token: the difference of N and 1 new tokens removes the prompt's cost."""
    prompt = shape.ids(prompt_length, 3)

    def gen(model: nn.Module, n: int) -> None:
        model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    models = {"mamba2": mamba2, "fpmamba": fp}
    ms = interleaved_ms({f"{name}_{n}": partial(gen, m, n) for name, m in models.items() for n in (1, new_tokens)},
                        reps)
    per_token = {name: (ms[f"{name}_{new_tokens}"] - ms[f"{name}_1"]) / (new_tokens - 1) for name in models}
    return {"prompt_length": prompt_length, "new_tokens": new_tokens, **_pair_row(per_token),
            "generate_ms": ms}


@torch.no_grad()
def bench_extra_iteration(mamba2: nn.Module, shape: Shape, T: int, ks: list[int], reps: int,
                          mixer_proj_rank: int = 0, compile_map: bool = False) -> dict:
    """Cost of one more iteration of a fresh householder r=2 FP-Mamba (its mixer projection of rank
    `mixer_proj_rank`, 0 = full; its map compiled with `compile_map`), in ms and in Mamba2 forwards. The untimed
    check that each k runs exactly k iterations is also the compile's warm-up."""
    torch.manual_seed(0)
    fp = FPMambaForCausalLM(shape.fpmamba_config(mixer_type="householder", mixer_rank=2,
                                                 mixer_proj_rank=mixer_proj_rank, fp_compile=compile_map)).eval()
    ids = shape.ids(T, 4)
    for k in ks:
        its = fp(ids, use_cache=False, fp_max_iter=k, fp_tol=TINY_TOL).fp_iterations
        if not bool((its == k).all()):
            raise RuntimeError(f"extra_iteration: asked for exactly {k} iterations, got {its.tolist()}")
    fns = {"mamba2": partial(mamba2, ids, use_cache=False)}
    fns.update({f"k{k}": partial(fp, ids, use_cache=False, fp_max_iter=k, fp_tol=TINY_TOL) for k in ks})
    ms = interleaved_ms(fns, reps)
    ys = [ms[f"k{k}"] for k in ks]
    slope = statistics.linear_regression(ks, ys).slope
    return {"T": T, "mixer_proj_rank": mixer_proj_rank, "fp_compile": compile_map,
            "ms_by_iterations": {str(k): y for k, y in zip(ks, ys)},
            "mamba2_ms": ms["mamba2"], "slope_ms": slope, "slope_in_mamba2_forwards": slope / ms["mamba2"]}


def _demo_config():
    """examples/demo.py's experiment config (the one place the demo's model and training are set)."""
    spec = importlib.util.spec_from_file_location("fpmamba_demo", ROOT / "examples" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo.demo_config


def load_or_train_s3(model_dir: Path | None, steps: int) -> FPMambaForCausalLM:
    """The demo's S3 FP-Mamba: loaded from `model_dir` if it holds one, else trained (demo settings, `steps`
    steps) and saved there when a directory is given."""
    if model_dir is not None and (model_dir / "config.json").exists():
        return FPMambaForCausalLM.from_pretrained(model_dir).eval()
    with tempfile.TemporaryDirectory() as tmp:
        config = _demo_config()(Path(tmp), steps, 16)
        config.models, config.eval_points = ["fpmamba"], 2  # train the FP-Mamba only; its evaluation is not used
        config.training.progress_bar = False
        model = run_experiment(config).models["fpmamba"].eval()
    if model_dir is not None:
        model.save_pretrained(model_dir)
    return model


def set_solver(model: FPMambaForCausalLM, solver: str, anderson_m: int) -> None:
    """Switch the model's solver (fp_* config edits take effect at the next call)."""
    model.config.fp_solver = solver
    model.config.fp_anderson_m = anderson_m


@torch.no_grad()
def bench_solvers(model: FPMambaForCausalLM, task: TaskSpec, lengths: list[int], rows: int, reps: int,
                  anderson_ms: list[int], seed: int = 10_000) -> list[dict]:
    """Per length and solver: mean iterations per row (over layers), share of (row, layer) solves at the evaluation
    cap, share stopped above the tolerance, the task's accuracy, and forward ms (solvers interleaved). Variants:
    Picard, and Anderson with each memory in `anderson_ms`."""
    cap = model.config.fp_max_iter_eval
    variants = {"picard": ("picard", model.config.fp_anderson_m)}
    variants.update({f"anderson_m{m}": ("anderson", m) for m in anderson_ms})
    out = []
    try:
        for length in lengths:
            batch = collate(task.build(rows, length, length, seed + length))
            ids = batch["input_ids"]

            def run(name: str):
                set_solver(model, *variants[name])
                out = model(ids, use_cache=False)
                assert model.backbone.layers[0].mixer.solver.solver == variants[name][0], "solver not applied"
                return out

            ms = interleaved_ms({name: partial(run, name) for name in variants}, reps)
            for name in variants:
                res = run(name)
                its = res.fp_iterations.float()
                metrics = task.metrics(res.logits.argmax(-1), batch["labels"])
                out.append({"length": length, "solver": name, "iterations_mean": float(its.mean()),
                            "iterations_max": int(its.max()), "at_cap_share": float((its >= cap).float().mean()),
                            "unconverged_share": float((res.fp_residual >= model.config.fp_tol).float().mean()),
                            "accuracy": metrics[primary_metric(metrics)], "forward_ms": ms[name], "cap": cap})
    finally:
        set_solver(model, "picard", model.config.fp_anderson_m)
    return out


@torch.no_grad()
def count_decode_ops(model: nn.Module, shape: Shape, prompt_length: int, steps: int, warm_steps: int = 2,
                     **call_kwargs) -> dict:
    """Ops, host syncs and data-dependent ops per decoded token of the model's forward (T = 1 with a cache), in
    steady state (after `warm_steps` decode steps); per layer: those inside the decoder blocks / layers. An FP-Mamba
    runs its steps through a decode runner, as inside generate() (where the ids after the first step need no range
    check and the telemetry is read once, when the call ends)."""
    layers = list(model.backbone.layers)
    step = model
    if isinstance(model, FPMambaForCausalLM):
        step, call_kwargs = DecodeRunner(model, **call_kwargs), {}  # the runner takes the budget once
    out = step(shape.ids(prompt_length, 5), use_cache=True, **call_kwargs)
    cache = out.cache
    counter = OpCounter()
    for i in range(warm_steps + steps):
        token = out.logits[:, -1:].argmax(-1)
        if i < warm_steps:
            out = step(token, cache=cache, use_cache=True, **call_kwargs)
            continue
        with counter.scoped(layers):
            out = step(token, cache=cache, use_cache=True, **call_kwargs)
    c = counter.counts
    kinds = ("ops", "syncs", "data_dependent")
    return {
        "per_token": {k: c[("all", k)] / steps for k in kinds},
        "per_token_per_layer": {k: c[("layers", k)] / steps / len(layers) for k in kinds},
        "top_ops_per_token": {name: n / steps for name, n in counter.by_name.most_common(12)},
    }


def environment(threads: int) -> dict:
    """Machine, versions and load of this run (other processes share the CPU: the load average says how much)."""
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    git = partial(subprocess.run, cwd=ROOT, capture_output=True, text=True)
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": threads, "cuda": torch.cuda.is_available(),
            "git_commit": git(["git", "rev-parse", "HEAD"]).stdout.strip(),
            "git_dirty": bool(git(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip()),
            "load_average_start": os.getloadavg()}


def markdown(result: dict) -> str:
    """The headline table of a result (ratio = FP-Mamba / Mamba2)."""
    lines = ["| measure | Mamba2 | FP-Mamba | ratio |", "|---|---|---|---|"]
    for r in result.get("forward", []):
        lines.append(f"| forward T={r['T']} (ms) | {r['mamba2_ms']:.1f} | {r['fpmamba_ms']:.1f} | {r['ratio']:.2f} |")
    if "train_step" in result:
        r = result["train_step"]
        lines.append(f"| train step T={r['T']} (ms) | {r['mamba2_ms']:.1f} | {r['fpmamba_ms']:.1f} | "
                     f"{r['ratio']:.2f} |")
    if "decode" in result:
        r = result["decode"]
        lines.append(f"| decode (ms/token) | {r['mamba2_ms']:.2f} | {r['fpmamba_ms']:.2f} | {r['ratio']:.2f} |")
    if "extra_iteration" in result:
        r = result["extra_iteration"]
        how = (f", proj rank {r['mixer_proj_rank']}" if r["mixer_proj_rank"] else "") + \
            (", compiled" if r.get("fp_compile") else "")
        lines.append(f"| one extra householder iteration T={r['T']}{how} | {r['mamba2_ms']:.1f} ms = 1 forward | "
                     f"{r['slope_ms']:.1f} ms | {r['slope_in_mamba2_forwards']:.2f} forwards |")
    for name, ops in result.get("decode_ops", {}).items():
        t, layer = ops["per_token"], ops["per_token_per_layer"]
        lines.append(f"| decode ops / syncs / data-dep. per token, {name} | whole forward "
                     f"{t['ops']:.0f} / {t['syncs']:.0f} / {t['data_dependent']:.0f} | per layer "
                     f"{layer['ops']:.0f} / {layer['syncs']:.0f} / {layer['data_dependent']:.0f} | |")
    if "solvers" in result:
        lines += ["", "| length | solver | mean iterations | max | solves at cap | stopped above tol | accuracy | "
                  "forward ms |", "|---|---|---|---|---|---|---|---|"]
        for r in result["solvers"]["rows"]:
            lines.append(f"| {r['length']} | {r['solver']} | {r['iterations_mean']:.2f} | {r['iterations_max']} | "
                         f"{100 * r['at_cap_share']:.1f}% | {100 * r['unconverged_share']:.1f}% | "
                         f"{r['accuracy']:.3f} | {r['forward_ms']:.1f} |")
    return "\n".join(lines)


def _solver_study(args: argparse.Namespace) -> dict:
    """The `solvers` section with what it ran on."""
    start = time.perf_counter()
    model = load_or_train_s3(args.model_dir, args.train_steps)
    return {
        "model": str(args.model_dir) if args.model_dir else f"demo S3 model trained here ({args.train_steps} steps)",
        "load_or_train_s": time.perf_counter() - start, "tol": model.config.fp_tol,
        "reflection_scale": model.config.mixer_reflection_scale, "rows_per_length": args.solver_rows,
        "task": args.solver_task,
        "rows": bench_solvers(model, get_task(args.solver_task), args.solver_lengths, args.solver_rows, args.reps,
                              args.anderson_m),
    }


def run(args: argparse.Namespace) -> dict:
    """Every requested section, in SECTIONS order (progress on stderr); returns the JSON-ready result."""
    torch.set_num_threads(args.threads)
    shape = Shape(batch=args.batch)
    result: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "shape": asdict(shape),
                    "fp_compile": args.compile, "mixer_proj_rank": args.mixer_proj_rank,
                    "freeze_readers": args.freeze_readers,
                    "env": environment(args.threads), "reps": args.reps}
    start = time.perf_counter()
    mamba2, fp = mamba2_pair(shape, mixer_proj_rank=args.mixer_proj_rank)
    fp.config.fp_compile = args.compile
    if args.freeze_readers:  # fine-tuning the Mamba-2 part only (e.g. LoRA elsewhere): nothing that reads y trains
        for block in fp.backbone.layers:
            for module in (block.mixer.channel_mixer, *block.mixer.y_projections()):
                if module is not None:
                    module.requires_grad_(False)
    result["conversion_max_logit_diff"] = max_logit_diff(mamba2, fp, shape)
    ops = partial(count_decode_ops, shape=shape, prompt_length=args.prompt_length, steps=args.op_steps)
    sections = {
        "forward": lambda: bench_forward(mamba2, fp, shape, args.lengths, args.reps),
        "train_step": lambda: bench_train_step(mamba2, fp, shape, args.train_length, args.reps),
        "decode": lambda: bench_decode(mamba2, fp, shape, args.prompt_length, args.new_tokens, args.reps),
        "extra_iteration": lambda: bench_extra_iteration(mamba2, shape, args.train_length, args.iterations,
                                                         args.reps, args.mixer_proj_rank, args.compile),
        # the converted model also at the default budget: its map does not read y, one evaluation per layer
        "decode_ops": lambda: {"mamba2": ops(mamba2), "fpmamba_1_iteration": ops(fp),
                               "fpmamba_default_tol": ops(fp, fp_max_iter=FPMambaConfig().fp_max_iter_eval)},
        "solvers": lambda: _solver_study(args),
    }
    for name in SECTIONS:
        if name in args.sections:
            print(f"[bench_cpu] {name} (at {time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
            result[name] = sections[name]()
    result["env"]["load_average_end"] = os.getloadavg()
    result["wall_s"] = time.perf_counter() - start
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    p.add_argument("--quick", action="store_true", help="smoke test: few reps, short lengths, brief training")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
    p.add_argument("--train-length", type=int, default=512, help="T of the training step and extra_iteration")
    p.add_argument("--prompt-length", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--iterations", type=int, nargs="+", default=[2, 3, 4, 5], help="k of extra_iteration")
    p.add_argument("--mixer-proj-rank", type=int, default=0,
                   help="the FP model's mixer projection rank (0 = full): the conversion's and extra_iteration's")
    p.add_argument("--compile", action="store_true",
                   help="fp_compile=True on the FP models (the conversion's and extra_iteration's)")
    p.add_argument("--freeze-readers", action="store_true",
                   help="freeze the converted model's mixers and y-projections (nothing that reads y trains)")
    p.add_argument("--op-steps", type=int, default=4, help="decode steps counted by decode_ops")
    p.add_argument("--model-dir", type=Path, help="a trained S3 FP-Mamba (loaded; trained and saved if empty)")
    p.add_argument("--train-steps", type=int, default=300, help="training steps of the S3 model (demo: 300)")
    p.add_argument("--solver-lengths", type=int, nargs="+", default=[2, 4, 8, 12, 16, 32])
    p.add_argument("--solver-rows", type=int, default=128)
    p.add_argument("--anderson-m", type=int, nargs="*", default=[2, 5],
                   help="Anderson memories compared (the flag alone: none)")
    p.add_argument("--solver-task", default="S3", help="the task of the solvers section (its model: --model-dir)")
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.lengths, args.train_length, args.new_tokens = 2, [128], 128, 4
        args.iterations, args.op_steps, args.train_steps = [2, 3], 2, 20
        args.solver_lengths, args.solver_rows = [4, 8], 16
    return args


def main() -> None:
    args = parse_args()
    # Runs at 1 iteration or with fp_tol 1e-12 stop at the cap by design: their "not converged" warnings are noise.
    logging.getLogger("fpmamba_hf").setLevel(logging.ERROR)
    result = run(args)
    print(markdown(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
