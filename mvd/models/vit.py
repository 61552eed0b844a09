"""The shared ViT body (``ViTEncoder``) and masked-token decoder (``MaskedDecoder``).

Every model in mvd.models subclasses ``ViTEncoder``, so the encoder's weights sit at the top level
of each state dict (``patch_embed.*``, ``blocks.*``, ``norm.*``) and move between models by name.
"""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import nn

from mvd.layers import LN_EPS, Block, FixedPosEmbed, PatchEmbed
from mvd.masking import check_mask_shape, gather_tokens, masked_count, split_indices


def init_vit_weights(module: nn.Module, linear_init: str = "xavier", patch_init: str = "torch") -> None:
    """Release init: Linear xavier-uniform (MAE/VideoMAE pretraining) or trunc-normal .02 (fine-tuning),
    zero biases, LayerNorm (1, 0). The patch-embedding conv: ``patch_init="torch"`` keeps PyTorch's
    default Conv3d init, as the VideoMAE and MVD releases (their ``_init_weights`` touch only
    Linear and LayerNorm); ``"xavier"`` initialises its weight like a Linear and keeps the bias, as
    MAE's ``initialize_weights``."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            if linear_init == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:
                trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, PatchEmbed) and patch_init == "xavier":
            w = m.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))


def make_blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path_rate: float,
                grad_checkpointing: bool) -> nn.ModuleList:
    # the stochastic depth rule, linear over the blocks (plain floats: the models also build under
    # FakeTensorMode for the dry run, where a tensor's values cannot be read)
    dpr = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
    return nn.ModuleList(
        Block(dim, num_heads, mlp_ratio, drop_path=dpr[i], grad_checkpointing=grad_checkpointing)
        for i in range(depth)
    )


class ViTEncoder(nn.Module):
    """Patch embedding + fixed position table + pre-norm blocks (+ final LayerNorm).

    Clip models (``num_frames`` set) embed (B, C, T, H, W) into N = T/tubelet * (H/p)^2 tokens;
    image models (``num_frames=None``) embed (B, C, H, W) into L = (H/p)^2 tokens and may carry a
    cls token (its table row is the zero row of MAE's table).

    ``pos_embed_kinds``: the position tables a subclass lets its ``pos_embed`` option choose from
    (and ``set_pos_embed`` switch to); empty = the table is part of the model's definition.
    """

    pos_embed_kinds: tuple[str, ...] = ()

    def __init__(self, *, img_size: int, patch_size: int, num_frames: int | None, tubelet_size: int,
                 embed_dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path_rate: float,
                 pos_kind: str, cls_token: bool = False, final_norm: bool = True, in_chans: int = 3,
                 grad_checkpointing: bool = False):
        super().__init__()
        if self.pos_embed_kinds and pos_kind not in self.pos_embed_kinds:
            raise ValueError(f"pos_embed must be one of {self.pos_embed_kinds}, got {pos_kind!r}")
        self.embed_dim, self.depth, self.num_heads, self.mlp_ratio = embed_dim, depth, num_heads, mlp_ratio
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, num_frames, tubelet_size)
        self.grid = self.patch_embed.grid
        self.num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if cls_token else None
        self.pos_embed = FixedPosEmbed(pos_kind, self.grid, embed_dim, cls_token)
        self.blocks = make_blocks(embed_dim, depth, num_heads, mlp_ratio, drop_path_rate, grad_checkpointing)
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS) if final_norm else nn.Identity()

    @property
    def num_prefix_tokens(self) -> int:
        return 0 if self.cls_token is None else 1

    def init_weights(self, linear_init: str = "xavier", patch_init: str = "torch") -> None:
        init_vit_weights(self, linear_init, patch_init)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    def set_pos_embed(self, kind: str) -> None:
        """Rebuild the encoder's fixed position table as ``kind`` (one of ``pos_embed_kinds``); what
        ``load_checkpoint`` does when a checkpoint was trained with another table."""
        if kind not in self.pos_embed_kinds:
            allowed = ", ".join(self.pos_embed_kinds) or f"only its own {self.pos_embed.kind}"
            raise ValueError(f"{type(self).__name__} cannot use a {kind} position table ({allowed})")
        table = FixedPosEmbed(kind, self.grid, self.embed_dim, self.cls_token is not None)
        self.pos_embed = table.to(self.pos_embed.table.device)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block (encoder and decoders) in backward instead of storing activations."""
        for m in self.modules():
            if isinstance(m, Block):
                m.grad_checkpointing = enable

    def embed(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Input -> (B, N, D) patch tokens plus their position rows (no cls token yet), in
        ``dtype`` (default: the patch embedding's output dtype, the autocast dtype under it)."""
        x = self.patch_embed(x)
        dtype = dtype or x.dtype
        return x.to(dtype) + self.pos_embed.table[:, self.num_prefix_tokens:].to(dtype)

    def prepend_cls(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n, D) -> (B, 1 + n, D) with the cls token (plus its zero position row) in front."""
        if self.cls_token is None:
            return x
        cls = (self.cls_token + self.pos_embed.table[:, :1]).to(x.dtype)
        return torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)

    def mask_indices(self, x: torch.Tensor, mask: torch.Tensor, num_masked: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Check the input and the (B, N) mask -> (ids_visible (B, N_vis), ids_masked (B, N_mask)).

        ``num_masked``: the masked count per sample when the caller knows it (the trainer does,
        from the config): no host sync, and the mask must hold exactly that many per row. None:
        counted and checked on the host (one sync)."""
        self.patch_embed.check_input(x)
        if num_masked is None:
            num_masked = masked_count(mask, x.shape[0], self.num_patches)  # host sync: sets shapes
        else:
            check_mask_shape(mask, x.shape[0], self.num_patches)
            if not 0 < num_masked < self.num_patches:
                raise ValueError(f"num_masked={num_masked}: need at least one masked and one "
                                 f"visible token of {self.num_patches}")
        return split_indices(mask, num_masked)

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x


class MaskedDecoder(nn.Module):
    """Predict the masked tokens from the encoded visible ones (MAE / VideoMAE / MVD decoder).

    proj (encoder -> decoder width) -> [visible + pos, mask_token + pos] -> blocks -> keep the
    mask tokens -> LayerNorm -> head. Attention is order-free (positions are added explicitly), so
    putting the mask tokens last gives exactly the predictions of MAE's unshuffled layout.
    """

    def __init__(self, in_dim: int, embed_dim: int, depth: int, num_heads: int, out_dim: int, *,
                 pos_kind: str, grid: tuple[int, ...], cls_token: bool = False, proj_bias: bool = True,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.0, grad_checkpointing: bool = False):
        super().__init__()
        self.embed_dim, self.depth, self.num_heads, self.out_dim = embed_dim, depth, num_heads, out_dim
        self.proj = nn.Linear(in_dim, embed_dim, bias=proj_bias)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = FixedPosEmbed(pos_kind, grid, embed_dim, cls_token)
        self.num_prefix_tokens = 1 if cls_token else 0
        self.blocks = make_blocks(embed_dim, depth, num_heads, mlp_ratio, drop_path_rate, grad_checkpointing)
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.head = nn.Linear(embed_dim, out_dim)

    def init_weights(self, truncate_mask_token: bool = True) -> None:
        """Linear xavier; mask token normal(std .02) truncated at +-.02 (one std, as the VideoMAE /
        MVD releases' ``trunc_normal_`` wrapper passes a=-std, b=std) or, with
        ``truncate_mask_token=False``, not truncated (MAE's ``normal_``)."""
        init_vit_weights(self, "xavier")
        if truncate_mask_token:
            trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)
        else:
            nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, x: torch.Tensor, ids_visible: torch.Tensor, ids_masked: torch.Tensor) -> torch.Tensor:
        """x (B, P + N_vis, D_enc) encoder output (P prefix tokens); ids (B, N_vis), (B, N_mask)
        -> predictions (B, N_mask, out_dim) in the order of ids_masked."""
        x = self.proj(x)  # (B, P + N_vis, D_dec)
        B, P = x.shape[0], self.num_prefix_tokens
        table = self.pos_embed.table.to(x.dtype)  # (1, P + N, D_dec)
        pos = table[:, P:].expand(B, -1, -1)
        visible = x[:, P:] + gather_tokens(pos, ids_visible)
        masked = self.mask_token.to(x.dtype) + gather_tokens(pos, ids_masked)  # (B, N_mask, D_dec)
        x = torch.cat([x[:, :P] + table[:, :P], visible, masked], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x[:, -ids_masked.shape[1]:])  # (B, N_mask, D_dec)
        # the head as matmul + bias: nn.Linear on 3-D input returns a view of its 2-D result, and
        # FSDP2 warns that a root module's view output can lose its pre-backward hook
        return torch.matmul(x, self.head.weight.t()) + self.head.bias
