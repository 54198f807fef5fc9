"""What the XTTS-v2 GPT's training loss keeps for backward, by part of the model, counted on the CPU.

Builds the full-size GPT (random weights, as ``xtts_train_step.py`` does) and runs one forward of voicetune's
packed loss on a batch of 4 synthetic 6-11 s clips, under bf16 autocast with bf16 weights (the fast GPU
configuration), counting the bytes of every tensor autograd saves for backward (each storage once) and the
part of the model that saved it. It needs no GPU: what is saved depends on the operations, not on the device
(except where a kernel choice differs: SDPA's flash kernels save the output and log-sum-exp, its math
fallback the whole attention matrix; both CPU and CUDA fall back to math for non-contiguous inputs, and the
CPU also for dropout, so dropout is off here). Eager, not compiled: a compiled graph saves less (it recomputes
cheap pointwise results), so these counts are an upper bound per part, for comparing changes.

    python3 benchmarks/activation_memory.py --out benchmarks/results/activation_memory_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from provenance import git_commit

PARTS = ("conditioning_encoder", "conditioning_perceiver", "gpt", "text_head", "mel_head", "final_norm")


def saved_bytes_by_part(backend: Any, batch: dict[str, torch.Tensor], cfg: Any) -> dict[str, float]:
    """MB saved for backward by each top-level part of the GPT (unique storages), and in all."""
    gpt = backend.model.gpt
    current: list[str] = ["attention, embeddings, heads and loss (outside modules)"]

    def enter(name: str) -> Any:
        def hook(module: Any, args: Any) -> None:
            current.append(name)
        return hook

    def leave(module: Any, args: Any, output: Any) -> None:  # returns None: the output is kept
        current.pop()

    handles = []
    tracked = [(name, getattr(gpt, name, None)) for name in PARTS]
    # the packed loss runs the transformer blocks piece by piece (voicetune.backends.gpt_tts.layers._block)
    tracked += [
        ("transformer layers: norms, projections, MLP", m)
        for block in gpt.gpt.h
        for m in block.modules()
        if m is not block
    ]
    for name, module in tracked:
        if module is not None:
            handles += [module.register_forward_pre_hook(enter(name)), module.register_forward_hook(leave)]
    seen: dict[int, tuple[str, int]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if not isinstance(t, torch.nn.Parameter) and storage.data_ptr() not in seen:
            seen[storage.data_ptr()] = (current[-1], storage.nbytes())
        return t

    weights = {p.untyped_storage().data_ptr() for p in gpt.parameters()}
    try:
        with (
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            torch.autocast("cpu", dtype=torch.bfloat16),
        ):
            backend.loss(batch, cfg)
    finally:
        for h in handles:
            h.remove()
    out: dict[str, float] = {}
    for ptr, (part, nbytes) in seen.items():
        if ptr not in weights:  # a weight saved for backward costs nothing extra
            out[part] = out.get(part, 0.0) + nbytes / 2**20
    out = {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}
    out["(all)"] = round(sum(out.values()), 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--smoke", action="store_true", help="a 2-layer GPT (checks the script in seconds)")
    args = ap.parse_args()
    import xtts_train_step as bench

    from voicetune.backends.base import get_backend
    from voicetune.backends.gpt_tts import layers as speed
    from voicetune.backends.registry import train_config

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        base, _ = bench.make_base(Path(tmp) / "base", args.smoke, torch.device("cpu"))
        clips = bench.make_clips(Path(tmp) / "clips", args.batch, base / "vocab.json")
        backend = get_backend("xtts")
        backend.load_base(base, torch.device("cpu"))
        store = backend.build_features(clips, Path(tmp) / "features")
        # dropout 0: SDPA's CPU flash kernel has no dropout (it would fall back to math where the GPU's does
        # not)
        cfg = train_config(precision="bf16", param_dtype="bf16", compile="off", dropout=0.0)
        backend.configure_model(cfg)
        backend.configure_training(cfg)
        backend.set_train(True)
        batch = backend.collate([store[i] for i in range(len(store))])
        results = {}
        for attention in ("sdpa", "eager"):
            speed.set_attention(backend.model.gpt, attention)
            results[f"attention={attention}"] = saved_bytes_by_part(backend, batch, cfg)
        speed.set_attention(backend.model.gpt, "sdpa")
        mlp_cfg = train_config(
            precision="bf16", param_dtype="bf16", compile="off", dropout=0.0, checkpoint_mlp=True
        )
        backend.configure_training(mlp_cfg)
        results["attention=sdpa, checkpoint_mlp"] = saved_bytes_by_part(backend, batch, mlp_cfg)
    commit = git_commit()
    report = {"benchmark": "activation_memory", "device": "cpu (counts, not timings)", "git_commit": commit,
              "date": datetime.date.today().isoformat(), "torch": torch.__version__,
              "command": " ".join(["python3", *sys.argv]), "batch": args.batch, "smoke": args.smoke,
              "packed_length": int(batch["text_targets"].shape[1]), "mib_saved_for_backward": results}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
