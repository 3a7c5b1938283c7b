"""Training-step time and memory of FP-Mamba vs the iteration cap, the gradient and the sequence length.

    python benchmarks/train_step.py --out benchmarks/train_step.json            # CPU, the reference path
    python benchmarks/train_step.py --device cuda --hidden 768 --layers 4 ...   # GPU

One forward + backward + AdamW step of FPMambaForCausalLM; fp_tol is tiny so every solve runs exactly to its cap.
Rows (each labelled with `model` and `backward` in the JSON):
  sweep "cap"      FP-Mamba at each cap of --caps, once per gradient of --backwards (fp_backward);
  sweep "anchor"   at the cap sweep's length, each of --anchors: "mamba2" (transformers' Mamba2ForCausalLM with the
                   same sizes; on CPU its PyTorch path; backward "autograd") and "diagonal" (FP-Mamba's diagonal
                   ablation: mixer_type "none", one iteration);
  sweep "seq_len"  FP-Mamba at each length of --seq_lens, cap --seq_cap, the default one-step gradient.
Each configuration runs in a fresh process. Reported per configuration:
  step_ms          median wall time of the timed steps (after warm-up steps);
  saved_mb         bytes autograd keeps for the backward (saved-tensor hooks): the activation memory, any device;
  peak_mb          CUDA: max_memory_allocated - memory before the first step; CPU: peak RSS (VmHWM) growth over the
                   process' RSS before the first step (includes allocator caching; Linux only, else null);
  implicit_fallbacks  backward passes whose adjoint solve missed fp_backward_tol within fp_backward_max_iter and fell
                   back to the one-step gradient (ImplicitGradientFallback warnings, all steps; 0 for the others).
Prints a markdown table and writes the JSON list to --out.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import statistics
import time
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

ANCHORS = ("mamba2", "diagonal")
BACKWARDS = ("one_step", "implicit")  # fpmamba_core.layer.FP_BACKWARDS; not imported so the parent stays torch-free


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def build(cfg: dict) -> nn.Module:
    """The model of a row: FP-Mamba (its fp_backward, cap and mixer) or Mamba2 with the same sizes as FP-Mamba's."""
    from transformers import Mamba2Config, Mamba2ForCausalLM

    from fpmamba_hf import FPMambaConfig, FPMambaForCausalLM

    mixer = {"mixer_type": "none"} if cfg["model"] == "diagonal" else {}
    fp_backward = "one_step" if cfg["model"] == "mamba2" else cfg["backward"]
    config = FPMambaConfig(vocab_size=256, hidden_size=cfg["hidden"], num_hidden_layers=cfg["layers"],
                           state_size=cfg["state"], head_dim=cfg["head_dim"], chunk_size=64,
                           fp_max_iter=cfg["cap"] or 1, fp_tol=1e-12, fp_train_quantile=1.0, fp_backward=fp_backward,
                           **mixer)
    if cfg["model"] != "mamba2":
        return FPMambaForCausalLM(config)
    sizes = ("vocab_size", "hidden_size", "num_hidden_layers", "state_size", "head_dim", "expand", "n_groups",
             "chunk_size", "conv_kernel", "tie_word_embeddings")
    num_heads = config.expand * config.hidden_size // config.head_dim
    return Mamba2ForCausalLM(Mamba2Config(num_heads=num_heads, **{name: getattr(config, name) for name in sizes}))


def measure(cfg: dict) -> dict:
    """Runs in a child process: build the model, time `steps` training steps, measure memory."""
    import torch
    from fpmamba_core.fixed_point import ImplicitGradientFallback

    torch.manual_seed(0)
    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    model = build(cfg).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 256, (cfg["batch"], cfg["seq_len"]), device=device)
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    def step(count_saved: bool) -> None:
        if count_saved:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = model(ids, labels=ids).loss
        else:
            loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    rss0 = _status_kb("VmRSS")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ImplicitGradientFallback)
        step(count_saved=True)
        for _ in range(cfg["warmup"] - 1):
            step(False)
        times = []
        for _ in range(cfg["steps"]):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(False)
            if cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
    fallbacks = sum(issubclass(w.category, ImplicitGradientFallback) for w in caught)
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        hwm = _status_kb("VmHWM")
        peak = None if hwm is None or rss0 is None else (hwm - rss0) / 1024
    return {**cfg, "step_ms": statistics.median(times), "saved_mb": saved[0] / 2**20, "peak_mb": peak,
            "implicit_fallbacks": fallbacks}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--state", type=int, default=16)
    p.add_argument("--head_dim", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--caps", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--seq_len", type=int, default=256, help="sequence length of the cap sweep")
    p.add_argument("--seq_lens", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--backwards", nargs="+", choices=BACKWARDS, default=list(BACKWARDS),
                   help="fp_backward values of the cap sweep")
    p.add_argument("--anchors", nargs="*", choices=ANCHORS, default=list(ANCHORS),
                   help="comparison rows at the cap sweep's length (none: --anchors with no value)")
    p.add_argument("--seq_cap", type=int, default=4, help="iteration cap of the length sweep")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/train_step.json")
    args = p.parse_args()

    base = dict(device=args.device, hidden=args.hidden, layers=args.layers, state=args.state, head_dim=args.head_dim,
                batch=args.batch, warmup=args.warmup, steps=args.steps, threads=args.threads)
    fpmamba = dict(base, model="fpmamba")
    configs = [dict(fpmamba, sweep="cap", backward=b, cap=c, seq_len=args.seq_len) for b in args.backwards
               for c in args.caps]
    anchor = {"mamba2": dict(backward="autograd", cap=None), "diagonal": dict(backward="one_step", cap=1)}
    configs += [dict(base, sweep="anchor", model=a, seq_len=args.seq_len, **anchor[a]) for a in args.anchors]
    configs += [dict(fpmamba, sweep="seq_len", backward="one_step", cap=args.seq_cap, seq_len=t) for t in args.seq_lens]
    ctx = mp.get_context("spawn")
    results = []
    for cfg in configs:
        with ctx.Pool(1) as pool:  # a fresh process per configuration: clean peak memory
            results.append(pool.apply(measure, (cfg,)))
    meta = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "torch": version("torch"), "transformers": version("transformers")}
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print("| sweep | model | backward | cap | seq_len | step ms | saved MB | peak MB |\n" + "|---" * 8 + "|")
    for r in results:
        peak = "n/a" if r["peak_mb"] is None else f"{r['peak_mb']:.1f}"
        cap = "-" if r["cap"] is None else r["cap"]
        print(f"| {r['sweep']} | {r['model']} | {r['backward']} | {cap} | {r['seq_len']} | {r['step_ms']:.1f} | "
              f"{r['saved_mb']:.1f} | {peak} |")


if __name__ == "__main__":
    main()
