"""AdamW with MAE/VideoMAE parameter groups, and the per-step cosine schedule with warm-up."""

from __future__ import annotations

import logging
import math
import re

import torch

from mvd.config import OptimConfig

log = logging.getLogger("mvd.train")

# Parameters that never get weight decay besides every 1-D tensor (biases, norm scales):
# position tables and learned tokens, as in the MAE / VideoMAE releases.
_NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "dist_token", "pos_table")


def no_weight_decay(name: str, param: torch.Tensor, extra: set[str]) -> bool:
    leaf = name.split(".")[-1]
    return (param.ndim <= 1 or name.endswith(".bias") or name in extra
            or any(k in leaf for k in _NO_DECAY_NAMES) or leaf in ("q_bias", "v_bias"))


_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def layer_id(name: str, num_layers: int) -> int:
    """0 for the embedding (patch embed, positions, tokens), i+1 for block i, num_layers+1 for the
    rest (final norm, head): the BEiT / VideoMAE layer-wise lr decay assignment."""
    m = _BLOCK.search(name)
    if m:
        return int(m.group(1)) + 1
    if any(k in name for k in ("patch_embed", "pos_embed", "cls_token", "mask_token")):
        return 0
    return num_layers + 1


def param_groups(model: torch.nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """Trainable parameters split by (weight decay?, layer); each group carries ``lr_scale``."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    extra = set()
    if hasattr(model, "no_weight_decay"):
        extra = set(model.no_weight_decay())
    # tokens a model's release decays although the rule below exempts tokens (the MVD student's)
    decayed = set(model.weight_decay_tokens()) if hasattr(model, "weight_decay_tokens") else set()
    num_layers = 1 + max((int(m.group(1)) for n, _ in named if (m := _BLOCK.search(n))), default=-1)
    groups: dict[tuple, dict] = {}
    for name, p in named:
        decay = weight_decay if name in decayed or not no_weight_decay(name, p, extra) else 0.0
        lid = layer_id(name, num_layers) if layer_decay < 1.0 else 0
        scale = layer_decay ** (num_layers + 1 - lid) if layer_decay < 1.0 else 1.0
        g = groups.setdefault((decay, lid), {"params": [], "names": [], "weight_decay": decay,
                                             "lr_scale": scale})
        g["params"].append(p)
        g["names"].append(name)
    return list(groups.values())


def apex_available() -> bool:
    try:
        import apex.optimizers  # noqa: F401  (optional dependency, never required)
    except ImportError:
        return False
    return True


IMPLEMENTATIONS = {"apex": "apex FusedAdam", "fused": "torch AdamW (fused)",
                   "foreach": "torch AdamW (foreach)"}


def choose_implementation(cfg: OptimConfig, device_type: str, *, fsdp: bool,
                          apex: bool | None = None) -> str:
    """'apex' | 'fused' | 'foreach' for ``optim.implementation`` on this target; raises
    ConfigError for one that cannot run. auto: apex FusedAdam on GPU when importable and the
    parameters are plain tensors (not under FSDP2, whose DTensor parameters apex's multi-tensor
    kernels cannot take), else torch's fused AdamW on GPU, foreach on CPU."""
    from mvd.config import ConfigError

    apex = apex_available() if apex is None else apex
    choice = cfg.implementation
    if choice == "apex":
        if not apex:
            raise ConfigError("config key 'optim.implementation' is apex but apex is not "
                              "importable; use optim.implementation=auto")
        if device_type != "cuda":
            raise ConfigError("config key 'optim.implementation' is apex, which needs a GPU; "
                              "use optim.implementation=auto")
        if fsdp:
            raise ConfigError("config keys 'optim.implementation' and 'dist.fsdp': apex FusedAdam "
                              "cannot update FSDP2's DTensor parameters; use "
                              "optim.implementation=fused (or auto) with dist.fsdp=true")
        return "apex"
    if choice == "auto":
        if device_type == "cuda":
            return "apex" if apex and not fsdp else "fused"
        return "foreach"
    return choice


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device: torch.device,
                    lr: float, *, fsdp: bool = False) -> tuple[torch.optim.Optimizer, str]:
    """AdamW over :func:`param_groups`; returns (optimizer, which implementation was chosen)."""
    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay)
    for g in groups:
        g.pop("names")
    kw = dict(lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    choice = choose_implementation(cfg, device.type, fsdp=fsdp)
    if choice == "apex":
        from apex.optimizers import FusedAdam  # optional dependency, checked importable above

        return FusedAdam(groups, adam_w_mode=True, **kw), IMPLEMENTATIONS[choice]
    if choice == "fused":
        return torch.optim.AdamW(groups, fused=True, **kw), IMPLEMENTATIONS[choice]
    return torch.optim.AdamW(groups, foreach=True, **kw), IMPLEMENTATIONS[choice]


class CosineSchedule:
    """lr(step): linear warm-up from ``warmup_lr`` to ``lr`` over ``warmup_steps``, then cosine to
    ``min_lr`` at ``total_steps``; each param group gets lr(step) x its ``lr_scale``.

    Stateless apart from the step counter, so a resumed run continues the same curve.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, lr: float, min_lr: float,
                 warmup_steps: int, total_steps: int, warmup_lr: float = 0.0):
        self.optimizer = optimizer
        self.lr, self.min_lr, self.warmup_lr = lr, min_lr, warmup_lr
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.step_num = 0
        self._apply()

    def value(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_lr + (self.lr - self.warmup_lr) * step / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * t))

    def _apply(self) -> None:
        v = self.value(self.step_num)
        for g in self.optimizer.param_groups:
            g["lr"] = v * g.get("lr_scale", 1.0)

    def step(self) -> None:
        self.step_num += 1
        self._apply()

    def get_last_lr(self) -> float:
        return self.value(self.step_num)

    def state_dict(self) -> dict:
        return {"step": self.step_num}

    def load_state_dict(self, state: dict) -> None:
        self.step_num = int(state["step"])
        self._apply()
