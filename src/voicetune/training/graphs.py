"""Forward + backward of a micro-batch captured in a CUDA graph, one graph per input shape, then replayed.

A training step of the XTTS GPT is ~1,800 GPU kernels. Launching them from Python, even compiled and through
torch.compile's own CUDA graphs (which re-check hundreds of saved tensors on every backward), left the GPU
idle half of the step. Here the whole forward *and* backward of a micro-batch is one graph: a replay costs a
copy of the inputs into static buffers and one launch.

What makes the capture valid:

* Gradients accumulate into buffers that never move (``FlatAdamW``'s flat gradient buffers): the captured
  backward adds into the same memory on every replay. Other optimizers free or reallocate gradients, so graphs
  are used with ``FlatAdamW`` only.
* Inputs are copied into static buffers: one graph per set of input shapes (the packed length is padded to a
  multiple, so there are a handful), all graphs drawing on one memory pool (they never run at the same time,
  and each replay's outputs are read before the next).
* Warm-up before capture (compiling, autotuning, lazy initialisation) runs on the real batch at a point where
  the gradients are zero (the first micro-batch of a step); they are zeroed again before the replay that
  counts. A new shape met later in a step runs eagerly and is captured the next time it starts a step.
* Random numbers (dropout) come from the CUDA generator's graph-safe philox offsets: new masks on each replay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

WARMUP_RUNS = 2


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]


class GraphedMicroBatches:
    """``run(inputs, weight, grads_are_zero)``: forward + ``(loss * weight).backward()`` as a CUDA-graph
    replay.

    ``fn(inputs)`` computes the backend's loss parts (a dict with ``loss``) from the tensors that
    ``select(batch)`` picks out of a collated batch; it runs under the caller's autocast. ``zero_grad`` zeroes
    the gradient buffers (the optimizer's).
    """

    def __init__(
        self,
        fn: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
        zero_grad: Callable[[], None],
        device: torch.device,
    ):
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}; set --cuda-graphs off")
        self.fn, self.zero_grad, self.device = fn, zero_grad, device
        self.graphs: dict[tuple[Any, ...], _Graph] = {}
        self.pool = torch.cuda.graph_pool_handle()

    @staticmethod
    def key(inputs: dict[str, torch.Tensor], weight: float) -> tuple[Any, ...]:
        return (weight, *((k, tuple(v.shape), v.dtype) for k, v in sorted(inputs.items())))

    def _step(self, inputs: dict[str, torch.Tensor], weight: float) -> dict[str, torch.Tensor]:
        out = self.fn(inputs)
        (out["loss"] * weight).backward()
        return {k: v.detach() for k, v in out.items()}

    def run(
        self, inputs: dict[str, torch.Tensor], weight: float, grads_are_zero: bool
    ) -> dict[str, torch.Tensor] | None:
        """The loss parts after forward + backward of ``inputs`` (gradients accumulated, weighted); None when
        this shape has no graph yet and cannot be captured now (gradients not zero): run it eagerly."""
        key = self.key(inputs, weight)
        entry = self.graphs.get(key)
        if entry is None:
            if not grads_are_zero:
                return None
            entry = self._capture(inputs, weight, key)
        for name, static in entry.inputs.items():
            static.copy_(inputs[name], non_blocking=True)
        entry.graph.replay()
        return entry.outputs

    def _capture(self, inputs: dict[str, torch.Tensor], weight: float, key: tuple[Any, ...]) -> _Graph:
        static = {k: v.to(self.device, copy=True) for k, v in inputs.items()}
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up: compiling, cuBLAS/cuDNN workspaces, autograd's lazy state
            for _ in range(WARMUP_RUNS):
                self._step(static, weight)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.zero_grad()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            outputs = self._step(static, weight)
        self.graphs[key] = _Graph(graph, static, outputs)
        logger.info("captured a CUDA graph of forward + backward for inputs %s (%d graphs)",
                    {k: tuple(v.shape) for k, v in static.items()}, len(self.graphs))
        return self.graphs[key]


def build(
    backend: Any, optimizer: Any, cfg: Any, device: torch.device, precision: str
) -> GraphedMicroBatches | None:
    """The graph runner for this run, or None where CUDA graphs are off or do not apply (with the reason)."""
    setting = getattr(cfg, "cuda_graphs", "off")
    if setting == "off":
        return None
    why = _unsupported(backend, optimizer, cfg, device, precision)
    if why:
        if setting == "on":
            raise ValueError(f"--cuda-graphs on: {why}")
        # on a CPU there is nothing to say; on a GPU the reason matters
        logger.log(logging.INFO if device.type == "cuda" else logging.DEBUG, "CUDA graphs off: %s", why)
        return None
    from voicetune.utils.device import autocast

    def fn(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with autocast(device, precision):
            out: dict[str, torch.Tensor] = backend.loss(inputs, cfg)
            return out

    return GraphedMicroBatches(fn, optimizer.zero_grad, device)


def config_allows(cfg: Any, device: torch.device) -> str:
    """Why ``cfg`` on ``device`` rules CUDA graphs out ("" when it does not)."""
    if getattr(cfg, "cuda_graphs", "off") == "off":
        return "--cuda-graphs off"
    if device.type != "cuda":
        return f"needs a CUDA GPU (training on {device})"
    if getattr(cfg, "param_dtype", "fp32") != "bf16":
        return "needs gradients in fixed buffers: set --param-dtype bf16 (FlatAdamW)"
    if getattr(cfg, "compile_mode", "default") in ("reduce-overhead", "max-autotune"):
        return f"--compile-mode {cfg.compile_mode} captures its own CUDA graphs"
    if getattr(cfg, "gradient_checkpointing", False):
        return "gradient checkpointing saves and restores the RNG state, which a capture cannot"
    return ""


def planned(backend: Any, cfg: Any, device: torch.device) -> bool:
    """Whether this run will capture micro-batches in CUDA graphs, decided before the optimizer exists (the
    backend is told through ``Backend.configure_training``: e.g. the XTTS loss then skips its flat-buffer
    form, since under graphs per-parameter gradient accumulation costs no host time and frees each gradient as
    it
    goes). The config rules out every case that :func:`build` would refuse later."""
    return not config_allows(cfg, device) and type(backend).supports_cuda_graphs


def _unsupported(backend: Any, optimizer: Any, cfg: Any, device: torch.device, precision: str) -> str:
    from voicetune.training.optim import FlatAdamW

    why = config_allows(cfg, device)
    if why:
        return why
    if not isinstance(optimizer, FlatAdamW):
        return "needs gradients in fixed buffers: set --param-dtype bf16 (FlatAdamW)"
    if precision == "fp16":
        return "fp16 loss scaling changes between steps; use --precision bf16"
    if not type(backend).supports_cuda_graphs:
        return f"the {type(backend).name} backend does not capture its loss in CUDA graphs"
    return ""
