"""Mixture-of-experts decoders: Mixtral (``mixtral``) and Qwen3-MoE (``qwen3_moe``).

The Llama-style decoder with the MLP replaced by a sparse MoE block: a router (``gate``, [experts, hidden]) picks
``num_experts_per_tok`` of the layer's experts for each token, and the token's MLP output is the routing-weighted sum
of those experts' gated FFNs.

Prunable, besides the attention and hidden axes and depth: the number of experts (Mixtral ``num_local_experts``,
Qwen3-MoE ``num_experts``; both configs store it as ``num_local_experts``) and each expert's FFN width (Mixtral
``intermediate_size``, Qwen3-MoE ``moe_intermediate_size``: the family's :attr:`mlp_field`).

- Experts are pruned per layer: each layer keeps its own most important experts (the importance of an expert is, as
  in NVIDIA ModelOpt, the sum over the tokens routed to it of routing weight x L2 norm of its output), renumbered in
  order of importance; the router keeps the rows of the kept experts. Keeping every expert only permutes them: the
  router's top-k picks the same experts, so the function is unchanged.
- Expert FFN neurons are pruned per expert (as ModelOpt prunes each expert's FFN): every kept expert keeps its own
  most important ``mlp`` neurons (activation magnitude at the input of its down projection, over the tokens routed to
  it). All experts keep the same count, as the config has one width.
- Memory layout vs disk: transformers 5 holds a layer's experts STACKED (``mlp.experts.gate_up_proj`` [E, 2I, H],
  ``mlp.experts.down_proj`` [E, H, I], router ``mlp.gate.weight`` [E, H]) but ``save_pretrained`` writes (and
  ``from_pretrained`` reads) the Hub's per-expert names: Mixtral ``block_sparse_moe.experts.<e>.w1/w2/w3.weight``
  (gate, down, up) and ``block_sparse_moe.gate.weight``; Qwen3-MoE ``mlp.experts.<e>.gate_proj/up_proj/down_proj
  .weight`` and ``mlp.gate.weight``. Trimming works on the on-disk names (:attr:`expert_prefix`), so these rules do.
- Qwen3-MoE layers listed in ``mlp_only_layers`` or skipped by ``decoder_sparse_step`` have a dense MLP instead; such
  configs are refused (every released Qwen3-MoE model is sparse in every layer).
- The experts are not ``nn.Linear`` modules: LoRA covers the attention projections only. FP8 export quantizes the
  experts too: :meth:`MoEDecoder.unstack_experts` turns them into per-expert ``nn.Linear`` modules under the on-disk
  names (:class:`ExpertList`), the layout NVIDIA ModelOpt calibrates and exports.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DenseDecoder, Probe, UnsupportedModelError

MOE_FIELDS = ("num_experts_per_tok", "num_local_experts", "num_experts", "output_router_logits",
              "router_aux_loss_coef", "router_jitter_noise")


class MoEDecoder(DenseDecoder):
    """The shared MoE concept: an experts axis per layer, per-expert on-disk tensors, the active parameter count."""

    # the neuron probe is the experts module of a layer (stacked weights): importance hooks its input (hidden states,
    # the router's top-k experts and weights) and recomputes each expert's FFN on its tokens (expert_forward)
    neuron_probe = "mlp.experts"
    # expert FFN tensors by their role (on-disk suffix after ``<expert_prefix>.<e>.``)
    expert_gate, expert_up, expert_down = "gate_proj.weight", "up_proj.weight", "down_proj.weight"
    router = "mlp.gate.weight"
    linears = {"q_proj": ("hidden", "q"), "k_proj": ("hidden", "kv"), "v_proj": ("hidden", "kv"),
               "o_proj": ("q", "hidden")}

    def __init_subclass__(cls, **kw):
        """Each family's slicing rules from its names: attention and norms as in the dense decoder (plus
        ``extra_layer_rules``), the router by experts x hidden, each expert's FFN by its own neurons ("mlp", which
        trim resolves per expert) and hidden."""
        super().__init_subclass__(**kw)
        attention = {k: v for k, v in DenseDecoder.layer_rules.items() if k.startswith("self_attn.")
                     or k.endswith("layernorm.weight")}
        p = cls.expert_prefix
        cls.layer_rules = {**attention, **getattr(cls, "extra_layer_rules", {}),
                           cls.router: ("experts", "hidden"),
                           f"{p}.*.{cls.expert_gate}": ("mlp", "hidden"),
                           f"{p}.*.{cls.expert_up}": ("mlp", "hidden"),
                           f"{p}.*.{cls.expert_down}": ("hidden", "mlp")}

    def num_experts(self, config) -> int:
        if isinstance(config, dict):
            n = config.get("num_local_experts", config.get("num_experts"))
        else:
            n = getattr(config, "num_local_experts", None)
        return int(n or 0)

    def width_multiple(self, config) -> int:
        """transformers 5.19 runs experts with ``grouped_mm`` by default, which needs 16-byte row strides (measured:
        "strides should be multiple of 16 bytes" otherwise): hidden_size and the expert width must be multiples of 8,
        16 bytes in bf16 and fp16, the dtypes MoE checkpoints ship, train and serve in. The rule does not follow the
        checkpoint's own dtype: a checkpoint pruned in fp32 to a multiple of 4 would run in fp32 and fail once loaded
        in bf16."""
        return 8

    def target_problem(self, config, new: dict) -> str | None:
        k, e = config.num_experts_per_tok, new[self.experts_field]
        if k > e:
            return (f"target {self.experts_field}={e} is fewer than num_experts_per_tok={k} (the experts each token "
                    f"is routed to): keep {self.experts_field} >= {k}")
        m = self.width_multiple(config)
        for f in ("hidden_size", self.mlp_field):
            if new[f] % m:
                near = [x for x in ((new[f] // m) * m, (new[f] // m + 1) * m) if 0 < x <= getattr(config, f)]
                return (f"target {f}={new[f]} is not a multiple of {m}: transformers runs {self.model_type} experts "
                        f"with grouped_mm, which needs rows of a multiple of 16 bytes ({m} values in bf16, the dtype it "
                        f"is trained and served in). Nearest allowed: {' or '.join(map(str, near)) or 'none'}")
        return None

    def layer_probes(self, config, layer_type: str) -> list[Probe]:
        """The dense decoder's probes with the neuron probe replaced by the routed experts probe (each expert and
        its neurons scored on the tokens routed to it: :mod:`minitron_hf.pruning.importance`)."""
        return [Probe("experts", self.neuron_probe, False, None, routed=True) if p.score == "neurons" else p
                for p in super().layer_probes(config, layer_type)]

    def layer_linears(self, layer_type: str) -> dict[str, tuple[str, str]]:
        """The attention projections and one expert's gate, up and down projections (under their on-disk names:
        each of a layer's experts holds these three, see :meth:`unstack_experts`)."""
        return {**self.linears, **self.expert_linears}

    @property
    def expert_linears(self) -> dict[str, tuple[str, str]]:
        """One expert's projections, on-disk module name -> (in axis, out axis)."""
        name = lambda w: w.removesuffix(".weight")  # noqa: E731
        return {name(self.expert_gate): ("hidden", "mlp"), name(self.expert_up): ("hidden", "mlp"),
                name(self.expert_down): ("mlp", "hidden")}

    def prepare_quantization(self, model: torch.nn.Module) -> None:
        self.unstack_experts(model)

    def unstack_experts(self, model: torch.nn.Module) -> None:
        """Replace every layer's stacked experts module by an :class:`ExpertList`: one module per expert holding
        ``nn.Linear`` gate/up/down projections under the Hub's per-expert names, the layout NVIDIA ModelOpt quantizes
        and exports (it knows MoE experts as an iterable of per-expert linears; transformers 5's 3-D expert tensors it
        refuses). The weights are copied per layer, so the extra memory is one layer's experts; the routed forward is
        the stacked module's. The model is for quantization only: ``save_pretrained`` writes the same on-disk names."""
        names = tuple(self.expert_linears)  # gate, up, down
        k = model.config.num_experts_per_tok
        for layer in model.base_model.layers:
            block = layer.get_submodule(self.neuron_probe.rsplit(".", 1)[0])
            stacked = block.experts
            block.experts = ExpertList(stacked, names)
            # ModelOpt wraps the MoE block (plugins/huggingface.py _QuantSparseMoe) and reads these two while it
            # calibrates; transformers 5's blocks route with their router's own top_k, so they change nothing here
            block.num_experts, block.top_k = len(block.experts), k
            del stacked

    def sequential_problem(self, config) -> str | None:
        # its per-expert disk tensors are stacked in memory, which layerwise.LayerwiseModel._load does not do
        return (f"model_type={config.model_type!r} is a mixture of experts, which layer-by-layer calibration "
                f"(sequential) does not support; run it in memory (sequential=false), on a machine that holds the "
                f"model")

    def expert_forward(self, experts: torch.nn.Module, x: torch.Tensor, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert ``e`` of a stacked experts module on tokens ``x`` [n, hidden]: (the input of its down projection
        [n, mlp], its output [n, hidden], before the routing weight), as the module's eager forward computes."""
        gate, up = F.linear(x, experts.gate_up_proj[e]).chunk(2, dim=-1)
        act = experts.act_fn(gate) * up
        return act, F.linear(act, experts.down_proj[e])

    def count_parameters(self, config) -> dict[str, int]:
        h = config.hidden_size
        E, k, inter = self.num_experts(config), config.num_experts_per_tok, getattr(config, self.mlp_field)
        attn = self.attention_parameters(config)
        expert = 3 * h * inter
        per_layer = attn + E * h + E * expert + 2 * h  # attention, router, experts, two RMSNorms
        body = config.num_hidden_layers * per_layer + h
        embedding = config.vocab_size * h * (1 if getattr(config, "tie_word_embeddings", False) else 2)
        inactive = config.num_hidden_layers * (E - min(k, E)) * expert
        return {"total": body + embedding, "embedding": embedding, "non_embedding": body,
                "active": body + embedding - inactive}


class Mixtral(MoEDecoder):
    model_type = "mixtral"
    experts_field = "num_local_experts"
    prunable = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "num_hidden_layers", "num_local_experts")
    config_fields = DenseDecoder.config_fields + MOE_FIELDS + ("sliding_window",)
    expert_prefix = "block_sparse_moe.experts"
    expert_gate, expert_up, expert_down = "w1.weight", "w3.weight", "w2.weight"
    router = "block_sparse_moe.gate.weight"
    # TensorRT-LLM converts Mixtral with the llama example: tensorrt_llm/models/__init__.py MODEL_MAP maps
    # MixtralForCausalLM to LLaMAForCausalLM (NVIDIA/TensorRT-LLM main, checked 2026-12)
    trtllm_example = "llama"


class Qwen3Moe(MoEDecoder):
    model_type = "qwen3_moe"
    experts_field = "num_experts"
    mlp_field = "moe_intermediate_size"
    prunable = ("hidden_size", "moe_intermediate_size", "num_attention_heads", "num_key_value_heads",
                "num_hidden_layers", "num_experts")
    # intermediate_size is the width of dense-MLP layers, which are refused; it stays as it is
    config_fields = DenseDecoder.config_fields + MOE_FIELDS + (
        "moe_intermediate_size", "norm_topk_prob", "decoder_sparse_step", "mlp_only_layers", "attention_bias",
        "sliding_window", "use_sliding_window", "max_window_layers")
    bias_fields = ("attention_bias",)
    expert_prefix = "mlp.experts"
    extra_layer_rules = {"self_attn.q_norm.weight": (None, None), "self_attn.k_norm.weight": (None, None)}
    # examples/models/core/qwen/convert_checkpoint.py: tensorrt_llm/models/qwen/config.py accepts model_type qwen3_moe
    # and tensorrt_llm/models/qwen/convert.py maps its experts and q/k norms (NVIDIA/TensorRT-LLM main, checked 2026-12;
    # MODEL_MAP lists Qwen3MoeForCausalLM only in recent versions, older ones convert it but cannot `trtllm-bench build`)
    trtllm_example = "qwen"

    def attention_norms(self, config) -> int:
        return 2 * self.head_dim(config)

    def check_config(self, config) -> None:
        super().check_config(config)
        d = config if isinstance(config, dict) else config.to_dict()
        dense = sorted(set(d.get("mlp_only_layers") or []))
        step = d.get("decoder_sparse_step") or 1
        L = d.get("num_hidden_layers") or 0
        dense = sorted(set(dense) | {i for i in range(L) if (i + 1) % step})
        if self.num_experts(d) < 1:
            dense = list(range(L))
        if dense:
            raise UnsupportedModelError(
                f"model_type='qwen3_moe': layers {dense} have a dense MLP (mlp_only_layers="
                f"{d.get('mlp_only_layers')}, decoder_sparse_step={step}, num_experts={self.num_experts(d)}); only "
                f"configs whose every layer is a sparse MoE block are supported (mlp_only_layers=[], "
                f"decoder_sparse_step=1)")


class ExpertList(torch.nn.ModuleList):
    """A layer's experts as a list of per-expert modules, each with ``nn.Linear`` gate, up and down projections
    (names given: Mixtral ``w1``/``w3``/``w2``, Qwen3-MoE ``gate_proj``/``up_proj``/``down_proj``), built from a
    transformers 5 stacked experts module (``gate_up_proj`` [E, 2I, H], ``down_proj`` [E, H, I]) and called like it:
    ``(hidden_states [n, H], top_k_index [n, k], top_k_weights [n, k]) -> [n, H]``.

    While ``calibrate_every_expert`` is set (it is, from construction: this module exists for FP8 calibration),
    every expert runs on every token and the routed tokens' outputs are summed, so that an expert routing rarely
    picks still sees enough tokens to calibrate its input range: what NVIDIA ModelOpt does for MoE layers
    (``_QuantSparseMoe``), which transformers 5's routers no longer let its wrapper do. The output is the routed one.
    """

    def __init__(self, stacked: torch.nn.Module, names: tuple[str, str, str]):
        gate_up, down_w = stacked.gate_up_proj.detach(), stacked.down_proj.detach()
        E, two_i, h = gate_up.shape
        inter = two_i // 2

        def linear(w):
            lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
            lin.weight = torch.nn.Parameter(w.clone(), requires_grad=False)
            return lin

        experts = []
        for e in range(E):
            m = torch.nn.Module()
            for name, w in zip(names, (gate_up[e, :inter], gate_up[e, inter:], down_w[e])):
                setattr(m, name, linear(w))
            m.act_fn = stacked.act_fn
            experts.append(m)
        super().__init__(experts)
        self.names = names
        self.calibrate_every_expert = True

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        m = self[e]
        gate, up, down = (getattr(m, n) for n in self.names)
        return down(m.act_fn(gate(x)) * up(x))

    def forward(self, hidden_states, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden_states)
        for e in range(len(self)):
            token, slot = torch.where(top_k_index == e)
            if self.calibrate_every_expert:  # every token through the expert, the routed ones' outputs used
                y = self.expert(e, hidden_states)[token]
            elif len(token):
                y = self.expert(e, hidden_states[token])
            else:
                continue
            out.index_add_(0, token, (y * top_k_weights[token, slot, None]).to(out.dtype))
        return out


MIXTRAL = Mixtral()
QWEN3_MOE = Qwen3Moe()
