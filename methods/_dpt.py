"""TaI-DPT's double-grained prompts, shared by TaI-DPT and T2I-PAL (which builds on it).

Two generic learnable contexts (global, local) give one global and one local class embedding per
class; a feature pair (global ``[B, D]``, local ``[B, L, D]``: caption EOT + tokens, or an
image's pooled + dense features) is scored against them with a fixed logit scale and a
class-wise softmax over tokens/locations. Kept in one place so that both methods score captions
identically and T2I-PAL's "TaI branch" is TaI-DPT, not a look-alike.
"""

from __future__ import annotations

from torch import Tensor, nn

from mlr_bench.clip import CLIPBackbone
from mlr_bench.clip.prompts import PromptEncoder, init_context, spatial_softmax_pool
from mlr_bench.method import EvalConstantsMixin
from mlr_bench.text.corpus import TextRequest


class DoublePromptMixin(EvalConstantsMixin):
    """Global/local generic prompt contexts for a :class:`~mlr_bench.method.MLRMethod`.

    The host sets ``backbone``, ``class_names``, ``logit_scale``, ``text_source`` and
    ``template_copies``, then calls :meth:`init_double_prompts`. Parameter names
    (``ctx_global``, ``ctx_local``) are part of TaI-DPT's checkpoint format.
    """

    backbone: CLIPBackbone
    class_names: list[str]
    logit_scale: float
    text_source: str
    template_copies: int

    def init_double_prompts(self, n_ctx: int, std: float) -> None:
        """Create both contexts (N(0, std²), global first) and the class prompt encoder."""
        self.ctx_global = nn.Parameter(init_context(self.backbone, n_ctx, std=std))
        self.ctx_local = nn.Parameter(init_context(self.backbone, n_ctx, std=std))
        self.prompts = (
            PromptEncoder(self.backbone, self.class_names, n_ctx) if self.class_names else None
        )

    def text_request(self) -> TextRequest:
        return TextRequest(self.text_source, self.template_copies)

    def class_prompts(self) -> tuple[Tensor, Tensor]:
        """Normalised ``[C, D]`` global and local class prompt embeddings."""
        if self.prompts is None:
            raise RuntimeError(f"{type(self).__name__} needs class_names (linked from the data)")
        return self.prompts(self.ctx_global), self.prompts(self.ctx_local)

    def eval_constants(self) -> tuple[Tensor, Tensor]:
        return self.class_prompts()

    def current_prompts(self) -> tuple[Tensor, Tensor]:
        """The prompts frozen for this evaluation epoch, else freshly encoded (training)."""
        return self.current_eval_constants()

    def branch_scores(
        self,
        global_: Tensor,
        local: Tensor,
        mask: Tensor | None,
        spatial_scale: float,
        prompts: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Global and local logits of features ``[B, D]`` and ``[B, L, D]`` (tokens/locations);
        ``prompts`` passes class prompts already encoded in this step."""
        t_global, t_local = prompts or self.current_prompts()
        scale = self.logit_scale
        s_global = scale * global_ @ t_global.T
        s_local = scale * spatial_softmax_pool(local @ t_local.T, spatial_scale, mask)
        return s_global, s_local
