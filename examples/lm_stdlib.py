"""Language modelling on the Python standard library's source: FP-Mamba vs its diagonal ablation.

    python examples/lm_stdlib.py                       # CPU-small defaults (a few minutes on 2 cores)
    python examples/lm_stdlib.py --hidden-size 256 --num-layers 4 --steps 5000 --batch-size 32   # bigger

1. Collect the stdlib's .py files (sysconfig.get_paths()["stdlib"], test suites skipped), split by file into
   train / validation, train a byte-level BPE tokenizer with `tokenizers` on the training files and wrap it as a
   PreTrainedTokenizerFast.
2. Pack the token stream into fixed blocks and train with the stock Trainer and the model's own causal-LM loss
   (labels = input_ids, shifted inside the model):
   - FP-Mamba (Householder mixer), and
   - the diagonal ablation (mixer "none", one iteration) made wider until its parameter count is the closest
     reachable to FP-Mamba's (both counts are reported: widths move in steps, so they differ slightly).
3. Report validation perplexity (per BPE token, same tokenizer and blocks for both), write results.json, and
   generate a continuation with pipeline("text-generation").
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sysconfig
import time
from pathlib import Path

import datasets
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Trainer, TrainingArguments, pipeline

import fpmamba_hf  # noqa: F401  (registers "fp_mamba" for pipeline / Auto classes)
from fpmamba_hf import FPMambaConfig, FPMambaForCausalLM

EOS = "<|endoftext|>"


def stdlib_files(max_files: int, seed: int) -> list[Path]:
    """A seeded sample of the stdlib's Python sources (test packages and site-packages excluded)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("site-packages", "test", "tests", "idle_test", "__pycache__")
    files = sorted(p for p in root.rglob("*.py") if not any(part in skip for part in p.relative_to(root).parts))
    random.Random(seed).shuffle(files)
    return files[:max_files]


def read_texts(files: list[Path]) -> list[str]:
    return [f.read_text(encoding="utf-8", errors="replace") for f in files]


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style: any byte sequence round-trips), trained on `texts`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS)


def pack(texts: list[str], tokenizer: PreTrainedTokenizerFast, block_size: int) -> datasets.Dataset:
    """Concatenate the files (EOS between them) and cut the stream into blocks of block_size tokens."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text)["input_ids"] + [tokenizer.eos_token_id])
    n = len(ids) // block_size
    blocks = [ids[i * block_size:(i + 1) * block_size] for i in range(n)]
    return datasets.Dataset.from_dict({"input_ids": blocks, "labels": blocks})


def fp_config(args: argparse.Namespace, vocab_size: int, diagonal: bool, hidden_size: int) -> FPMambaConfig:
    return FPMambaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=args.num_layers, state_size=args.state_size,
        head_dim=args.head_dim, expand=2, chunk_size=args.block_size,
        mixer_type="none" if diagonal else "householder", mixer_rank=args.mixer_rank, mixer_reflection_scale=2,
        fp_max_iter=1 if diagonal else args.fp_max_iter, fp_max_iter_eval=1 if diagonal else args.fp_max_iter,
        fp_tol=args.fp_tol,
    )


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_diagonal_width(args: argparse.Namespace, vocab_size: int, target: int) -> int:
    """The diagonal model's hidden size whose parameter count is closest to `target` (FP-Mamba's)."""
    step = args.head_dim // 2  # d_inner = 2 * hidden must stay a multiple of head_dim
    candidates = range(args.hidden_size, 4 * args.hidden_size + 1, step)
    sizes = {h: count(FPMambaForCausalLM(fp_config(args, vocab_size, True, h))) for h in candidates}
    return min(sizes, key=lambda h: abs(sizes[h] - target))


def train_and_evaluate(model, train_set, val_set, args: argparse.Namespace, out_dir: Path) -> dict:
    """Stock Trainer with the model's own loss; returns parameters, runtime and validation perplexity."""
    training_args = TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        max_steps=args.steps, learning_rate=args.learning_rate, weight_decay=0.1, adam_beta2=0.95,
        lr_scheduler_type="cosine", warmup_steps=math.ceil(0.1 * args.steps), max_grad_norm=1.0,
        logging_steps=max(1, args.steps // 10), save_strategy="no", report_to="none", seed=args.seed,
        data_seed=args.seed, dataloader_pin_memory=torch.cuda.is_available(), bf16=False,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=val_set)
    start = time.perf_counter()
    trainer.train()
    runtime = time.perf_counter() - start
    eval_loss = trainer.evaluate()["eval_loss"]
    return {"parameters": count(model), "train_runtime_s": round(runtime, 1), "val_loss": eval_loss,
            "val_perplexity": math.exp(eval_loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/lm_stdlib"))
    parser.add_argument("--max-files", type=int, default=300, help="stdlib files used (train + validation)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--state-size", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=16)
    parser.add_argument("--mixer-rank", type=int, default=2)
    parser.add_argument("--fp-max-iter", type=int, default=4)
    parser.add_argument("--fp-tol", type=float, default=1e-2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--max-eval-blocks", type=int, default=128, help="validation blocks scored")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default="import os\n\n\ndef ")
    args = parser.parse_args()

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    files = stdlib_files(args.max_files, args.seed)
    n_val = max(1, int(len(files) * args.val_fraction))
    train_texts, val_texts = read_texts(files[n_val:]), read_texts(files[:n_val])
    tokenizer = train_tokenizer(train_texts, args.vocab_size)
    train_set = pack(train_texts, tokenizer, args.block_size)
    val_set = pack(val_texts, tokenizer, args.block_size)
    val_set = val_set.select(range(min(len(val_set), args.max_eval_blocks)))
    print(f"{len(files)} stdlib files -> {len(train_set)} train / {len(val_set)} validation blocks of "
          f"{args.block_size} tokens (vocab {len(tokenizer)})")

    vocab = len(tokenizer)
    torch.manual_seed(args.seed)
    fp_model = FPMambaForCausalLM(fp_config(args, vocab, False, args.hidden_size))
    diag_width = matched_diagonal_width(args, vocab, count(fp_model))
    torch.manual_seed(args.seed)
    diag_model = FPMambaForCausalLM(fp_config(args, vocab, True, diag_width))

    results = {}
    for name, model in (("fpmamba", fp_model), ("diagonal", diag_model)):
        print(f"training {name}: hidden {model.config.hidden_size}, {count(model):,} parameters")
        results[name] = train_and_evaluate(model, train_set, val_set, args, args.output_dir / "trainer" / name)
        results[name]["hidden_size"] = model.config.hidden_size

    print("\nvalidation perplexity (per BPE token):")
    for name, r in results.items():
        print(f"  {name:9s} hidden {r['hidden_size']:4d}  {r['parameters']:>9,} params  "
              f"ppl {r['val_perplexity']:8.2f}  "
              f"(train {r['train_runtime_s']:.0f} s)")

    model_dir = args.output_dir / "fpmamba-stdlib"
    fp_model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    generator = pipeline("text-generation", model=str(model_dir), device="cpu")
    sample = generator(args.prompt, max_new_tokens=48, do_sample=False, fp_max_iter=args.fp_max_iter,
                       fp_tol=args.fp_tol)[0]["generated_text"]
    print(f"\npipeline('text-generation') from {model_dir}:\n{sample}")

    total = time.perf_counter() - start
    args.output_dir.mkdir(parents=True, exist_ok=True)
    record = {"args": {k: str(v) for k, v in vars(args).items()}, "results": results, "sample": sample,
              "total_runtime_s": round(total, 1), "torch_threads": torch.get_num_threads()}
    (args.output_dir / "results.json").write_text(json.dumps(record, indent=2))
    print(f"\nwrote {args.output_dir / 'results.json'}; total time {total:.0f} s")


if __name__ == "__main__":
    main()
