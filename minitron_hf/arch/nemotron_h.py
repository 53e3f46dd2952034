"""Nemotron-H (``nemotron_h``): a hybrid decoder of Mamba2, attention and MLP layers.

Each decoder layer (``NemotronHBlock``) is one RMSNorm (``norm``) and one mixer, picked per layer by
``layers_block_type`` (alias ``layer_types``; legacy ``hybrid_override_pattern``, one character per layer:
``M`` Mamba2, ``*`` attention, ``-`` MLP, ``E`` MoE); ``num_hidden_layers`` is that list's length:

- ``linear_attention`` (Mamba2 mixer): ``in_proj`` [2I + 2GN + nh, hidden] whose rows are z (gate, I), x (I), B
  (G*N), C (G*N) and dt (nh), with I = mamba_num_heads * mamba_head_dim, G = n_groups, N = ssm_state_size;
  ``conv1d`` (depthwise, over the I + 2GN channels of x, B, C); per-head ``A_log``, ``D``, ``dt_bias``; a gated
  RMSNorm ``norm`` [I] normalised in G groups of I/G channels; ``out_proj`` [hidden, I]. Head h belongs to group
  h // (nh / G) and reads that group's B and C;
- ``full_attention``: q/k/v/o projections with GQA (no rotary embedding, no biases);
- ``mlp``: non-gated ``up_proj`` / ``down_proj`` with relu2;
- ``moe`` (Nemotron-3 Nano style) and multi-token-prediction layers (``num_nextn_predict_layers`` > 0) are refused
  by name before any work.

Prunable, following NVIDIA ModelOpt's Minitron (``modelopt/torch/prune/plugins/mcore_minitron.py`` and the Mamba
dynamic modules of ``modelopt/torch/nas/plugins/megatron.py``):

- ``mamba_num_heads``: heads are pruned within each of the ``n_groups`` groups, the same count per group (a target
  must be a multiple of ``n_groups``), so every kept head still reads its own group's B and C and the gated norm's
  groups stay whole; B and C (``ssm_state_size``, ``n_groups``) are never pruned;
- ``mamba_head_dim``: the same kept channels in every head of a layer;
- ``hidden_size``, ``intermediate_size`` (MLP layers), ``num_attention_heads`` / ``num_key_value_heads``
  (attention layers), and depth (``num_hidden_layers`` / ``drop_layers``: ``layers_block_type`` follows the kept
  layers).

Importance, as ModelOpt defines it for Mamba: the per-channel score of the ``x`` rows of ``in_proj``'s output
(ModelOpt: "based on ablations in the paper, using ``x`` is the best way to compute the ranking"), the magnitude
reduced over the sequence and the batch (``l2_mean`` by default, ModelOpt's only choice); head-dim channel ``p``
scores the L2 norm over heads of the scores of channel ``p``; each layer keeps its top ``mamba_head_dim`` channels,
and then head ``h`` scores the L2 norm of its kept channels' scores and is ranked within its group. (The issue
suggested the input of ``out_proj``; we follow ModelOpt's definition instead, the one it validated.) Hidden
channels: the output of every block's ``norm`` (ModelOpt: the layernorm fused into each mixer's input projection),
summed over layers. Attention heads and MLP neurons as in every other family (``o_proj`` / ``down_proj`` inputs);
ModelOpt ranks attention heads by the L2 norm of per-channel scores instead of per-token head norms, a difference
this project keeps for every family.

Keeping everything only permutes: heads within their group, and head-dim channels identically in every head (the
state-space recurrence treats each channel of a head independently: dt, A, D are per head, B and C per group); the
gated norm's groups keep their channels, so its statistics are unchanged.

Scores are stored densely per layer: ``heads`` / ``neurons`` rows of layers that have no attention / MLP are zeros
(their plans are identities that no tensor uses), and the Mamba channel scores are the extra score ``mamba``
[layers, I] (zeros outside Mamba layers).

Not supported: layer-by-layer (sequential) calibration and FP8 export (refused by name; see
:meth:`NemotronH.fp8_problem`).
"""

from __future__ import annotations

import torch

from .base import Family, Probe, UnsupportedModelError

MAMBA, ATTENTION, MLP, MOE = "linear_attention", "full_attention", "mlp", "moe"
PATTERN = {"M": MAMBA, "*": ATTENTION, "-": MLP, "E": MOE}


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    # stable so ties keep source order (as trim._top)
    return torch.sort(scores.float(), descending=True, stable=True).indices[:k]


class NemotronH(Family):
    model_type = "nemotron_h"
    prunable = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "num_hidden_layers", "mamba_num_heads", "mamba_head_dim")
    extra_width_fields = ("mamba_num_heads", "mamba_head_dim")
    config_fields = (
        "vocab_size", "hidden_size", "layers_block_type", "layer_types", "num_hidden_layers", "tie_word_embeddings",
        "num_logits_to_keep", "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
        "attention_bias", "attention_dropout", "sliding_window", "intermediate_size", "mlp_hidden_act", "mlp_bias",
        "use_mamba_kernels", "ssm_state_size", "mamba_num_heads", "mamba_head_dim", "mamba_hidden_act", "n_groups",
        "conv_kernel", "expand", "time_step_min", "time_step_max", "time_step_limit", "time_step_floor",
        "use_conv_bias", "chunk_size", "mamba_proj_bias", "mamba_ssm_cache_dtype", "use_bias",
        "layer_norm_epsilon", "residual_in_fp32", "hidden_dropout", "rescale_prenorm_residual",
        # MoE and MTP fields: transformers writes them for every config; layers that use them are refused
        "n_routed_experts", "output_router_logits", "n_shared_experts", "moe_intermediate_size",
        "moe_shared_expert_intermediate_size", "moe_latent_size", "moe_shared_expert_overlap", "num_experts_per_tok",
        "routed_scaling_factor", "n_group", "topk_group", "norm_topk_prob", "num_nextn_predict_layers",
        "mtp_layers_block_type",
        # legacy names transformers' config class converts on load (Hub config.json files carry them)
        "hybrid_override_pattern", "mtp_hybrid_override_pattern", "mamba_n_groups", "mamba_d_conv", "mamba_expand",
        "mamba_dt_min", "mamba_dt_max", "mamba_dt_limit", "mamba_dt_init_floor", "mamba_conv_bias",
        "mamba_chunk_size",
        # Hub config.json files (Nemotron-H-8B) name the attention head width attention_head_dim, which transformers
        # 5.19 keeps as a plain attribute (its modeling code reads head_dim): accepted when the two agree
        "attention_head_dim")
    # in_proj/out_proj biases (use_bias), conv1d bias (use_conv_bias), MLP biases (mlp_bias); attention_bias and
    # mamba_proj_bias have no effect in transformers 5.19's modeling code (q/k/v/o are built without biases)
    bias_fields = ("use_bias", "use_conv_bias", "mlp_bias")
    per_layer_fields = ("layers_block_type",)
    can_tie_embeddings = False
    # Checked against NVIDIA/TensorRT-LLM (commit d513eeaf): Nemotron-H runs in its PyTorch backend
    # (tensorrt_llm/_torch/models/modeling_nemotron_h.py, the LLM API / trtllm-serve on the HF checkpoint), not
    # through an examples/models/core/*/convert_checkpoint.py engine build, which is what `export trtllm` writes
    trtllm_unsupported = ("TensorRT-LLM runs Nemotron-H only in its PyTorch backend (LLM API, trtllm-serve on the HF "
                          "checkpoint), with no convert_checkpoint.py engine build, which is what export trtllm writes")
    fused_axes = {"mamba_conv": ("mamba", "mamba_bc"),  # conv1d channels: x, B, C
                  "mamba_in": ("mamba", "mamba", "mamba_bc", "mamba_heads")}  # in_proj rows: z, x, B, C, dt
    layer_rules = {
        "norm.weight": ("hidden", None),
        # Mamba2
        "mixer.in_proj.weight": ("mamba_in", "hidden"),
        "mixer.in_proj.bias": ("mamba_in", None),
        "mixer.conv1d.weight": ("mamba_conv", None, None),
        "mixer.conv1d.bias": ("mamba_conv", None),
        "mixer.A_log": ("mamba_heads", None),
        "mixer.D": ("mamba_heads", None),
        "mixer.dt_bias": ("mamba_heads", None),
        "mixer.norm.weight": ("mamba", None),
        "mixer.out_proj.weight": ("hidden", "mamba"),
        "mixer.out_proj.bias": ("hidden", None),
        # attention
        "mixer.q_proj.weight": ("q", "hidden"),
        "mixer.k_proj.weight": ("kv", "hidden"),
        "mixer.v_proj.weight": ("kv", "hidden"),
        "mixer.o_proj.weight": ("hidden", "q"),
        # MLP
        "mixer.up_proj.weight": ("mlp", "hidden"),
        "mixer.up_proj.bias": ("mlp", None),
        "mixer.down_proj.weight": ("hidden", "mlp"),
        "mixer.down_proj.bias": ("hidden", None),
    }
    # on-disk names: transformers 5.19 saves (and loads) the base model under the Hub prefix ``backbone.``
    global_rules = {
        "backbone.embeddings.weight": (None, "hidden"),
        "backbone.norm_f.weight": ("hidden", None),
        "lm_head.weight": (None, "hidden"),
    }
    head_merge_tensors = {"mixer.q_proj.weight": 0, "mixer.o_proj.weight": 1}
    head_probe = "mixer.o_proj"
    neuron_probe = "mixer.down_proj"
    hidden_probes = ("norm",)
    _linears_by_type = {
        MAMBA: {"in_proj": ("hidden", "mamba_in"), "out_proj": ("mamba", "hidden")},
        ATTENTION: {"q_proj": ("hidden", "q"), "k_proj": ("hidden", "kv"), "v_proj": ("hidden", "kv"),
                    "o_proj": ("q", "hidden")},
        MLP: {"up_proj": ("hidden", "mlp"), "down_proj": ("mlp", "hidden")},
    }
    linears = {k: v for d in _linears_by_type.values() for k, v in d.items()}

    # ------------------------------------------------------------------ config
    @staticmethod
    def _types_of(d: dict) -> list[str] | None:
        types = d.get("layers_block_type") or d.get("layer_types")
        if types is None and d.get("hybrid_override_pattern"):
            types = [PATTERN.get(c, c) for c in d["hybrid_override_pattern"]]
        return list(types) if types is not None else None

    def layer_types(self, config) -> list[str]:
        if isinstance(config, dict):
            types = self._types_of(config)
        else:
            types = getattr(config, "layers_block_type", None)
        if types is None:
            raise UnsupportedModelError("model_type='nemotron_h': the config has no layers_block_type (or "
                                        "hybrid_override_pattern): the kind of each layer is unknown")
        return list(types)

    def check_config(self, config) -> None:
        super().check_config(config)
        d = config if isinstance(config, dict) else config.to_dict()
        types = self._types_of(d) or []
        moe = [i for i, t in enumerate(types) if t == MOE]
        if moe:
            raise UnsupportedModelError(
                f"model_type='nemotron_h': layers {moe} are 'moe' layers (layers_block_type / hybrid_override_pattern "
                f"'E'); only 'linear_attention' (Mamba2), 'full_attention' and 'mlp' layers are supported "
                f"(Nemotron-H, not Nemotron-3 Nano)")
        unknown = sorted({t for t in types if t not in (MAMBA, ATTENTION, MLP)})
        if unknown:
            raise UnsupportedModelError(f"model_type='nemotron_h': layers_block_type has layer types {unknown}; "
                                        f"supported: {MAMBA!r}, {ATTENTION!r}, {MLP!r}")
        if (d.get("num_nextn_predict_layers") or 0) > 0:
            raise UnsupportedModelError(
                f"model_type='nemotron_h': num_nextn_predict_layers={d['num_nextn_predict_layers']} (multi-token "
                f"prediction layers) is not supported; only num_nextn_predict_layers=0")
        if d.get("tie_word_embeddings"):
            raise UnsupportedModelError(
                "model_type='nemotron_h': tie_word_embeddings=True, but transformers 5.19's NemotronHForCausalLM never "
                "ties the LM head to the embedding (a tied checkpoint would load with a missing, re-initialised "
                "lm_head); only tie_word_embeddings=false (every published Nemotron-H) is supported")
        ahd, hd = d.get("attention_head_dim"), d.get("head_dim")
        if ahd is not None and hd is not None and ahd != hd:
            raise UnsupportedModelError(
                f"model_type='nemotron_h': attention_head_dim={ahd} differs from head_dim={hd}; transformers 5.19 "
                f"builds the attention layers with head_dim, so this checkpoint would not load as it was trained: set "
                f"head_dim={ahd} in config.json")
        nh = d.get("mamba_num_heads")
        g = d.get("n_groups", d.get("mamba_n_groups"))
        if nh and g and nh % g:
            raise UnsupportedModelError(f"model_type='nemotron_h': mamba_num_heads={nh} is not a multiple of "
                                        f"n_groups={g}")

    def target_problem(self, config, new: dict) -> str | None:
        G, nh = config.n_groups, new["mamba_num_heads"]
        if nh % G:
            near = [x for x in ((nh // G) * G, (nh // G + 1) * G) if 0 < x <= config.mamba_num_heads]
            return (f"target mamba_num_heads={nh} is not a multiple of n_groups={G}: Mamba heads are pruned within "
                    f"each of the {G} groups (the same count per group, so B/C sharing and the grouped norm stay "
                    f"valid). Nearest allowed: {' or '.join(map(str, near)) or 'none'}")
        return None

    def search_axes(self, config) -> dict[str, int]:
        """Mamba heads, in whole heads per group (the head dim is kept: ModelOpt's Nemotron-H compressions prune heads)."""
        return {"mamba_num_heads": config.n_groups}

    def axis_sizes(self, config) -> dict[str, int]:
        hd = self.head_dim(config)
        nh, mhd = config.mamba_num_heads, config.mamba_head_dim
        sizes = {"hidden": config.hidden_size, "q": config.num_attention_heads * hd,
                 "kv": config.num_key_value_heads * hd, "mlp": config.intermediate_size,
                 "mamba": nh * mhd, "mamba_heads": nh, "mamba_bc": 2 * config.n_groups * config.ssm_state_size}
        return {**sizes, **{name: sum(sizes[p] for p in parts) for name, parts in self.fused_axes.items()}}

    def count_parameters(self, config) -> dict[str, int]:
        h, inter = config.hidden_size, config.intermediate_size
        hd = self.head_dim(config)
        q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
        nh, I = config.mamba_num_heads, config.mamba_num_heads * config.mamba_head_dim
        bc = 2 * config.n_groups * config.ssm_state_size
        bias = bool(getattr(config, "use_bias", False))
        conv = I + bc
        mamba = (h * (2 * I + bc + nh) + (2 * I + bc + nh) * bias  # in_proj
                 + conv * config.conv_kernel + conv * bool(getattr(config, "use_conv_bias", True))  # conv1d
                 + 3 * nh + I  # A_log, D, dt_bias, gated norm
                 + I * h + h * bias)  # out_proj
        attention = h * q + 2 * h * kv + q * h
        mlp = 2 * h * inter + (inter + h) * bool(getattr(config, "mlp_bias", False))
        per_type = {MAMBA: mamba, ATTENTION: attention, MLP: mlp}
        types = self.layer_types(config)
        layers = sum(per_type[t] + h for t in types)  # + each block's norm
        L = config.num_hidden_layers
        if len(types) != L:  # a target given as a layer count before the layers are chosen: an estimate
            layers = round(layers * L / max(len(types), 1))
        body = layers + h  # + final norm
        embedding = config.vocab_size * h * (1 if getattr(config, "tie_word_embeddings", False) else 2)
        return {"total": body + embedding, "embedding": embedding, "non_embedding": body}

    # ------------------------------------------------------------------ layers
    def layer_probes(self, config, layer_type: str) -> list[Probe]:
        hidden = Probe("hidden", "norm", True, torch.abs, 0)
        if layer_type == MAMBA:  # the x rows of in_proj's output (z, x, B, C, dt)
            I = config.mamba_num_heads * config.mamba_head_dim
            return [Probe("mamba", "mixer.in_proj", True, lambda y: y[..., I:2 * I].abs()), hidden]
        if layer_type == ATTENTION:
            H, hd = config.num_attention_heads, self.head_dim(config)
            return [Probe("heads", self.head_probe, False,
                          lambda x: x.view(*x.shape[:-1], H, hd).float().norm(dim=-1)), hidden]
        return [Probe("neurons", self.neuron_probe, False, torch.abs), hidden]

    def extra_scores(self, config) -> dict[str, tuple[int, ...]]:
        return {"mamba": (config.mamba_num_heads * config.mamba_head_dim,)}

    def layer_axes(self, config, new_config: dict, scores: dict | None, layer_type: str) -> dict[str, torch.Tensor]:
        if layer_type != MAMBA:
            return {}
        nh, hd, G = config.mamba_num_heads, config.mamba_head_dim, config.n_groups
        nh_new, hd_new = new_config["mamba_num_heads"], new_config["mamba_head_dim"]
        per_group, keep_per_group = nh // G, nh_new // G
        if scores is None:
            dims = torch.arange(hd_new)
            heads = torch.cat([g * per_group + torch.arange(keep_per_group) for g in range(G)])
        else:
            s = scores["mamba"].float().view(nh, hd)
            dims = _top(s.norm(dim=0), hd_new)  # channel p: L2 over heads
            head_score = s[:, dims].norm(dim=1).view(G, per_group)  # head: L2 over its kept channels
            heads = torch.cat([g * per_group + _top(head_score[g], keep_per_group) for g in range(G)])
        return {"mamba_heads": heads, "mamba": (heads[:, None] * hd + dims[None, :]).reshape(-1),
                "mamba_bc": torch.arange(2 * G * config.ssm_state_size)}

    def layer_linears(self, layer_type: str) -> dict[str, tuple[str, str]]:
        return dict(self._linears_by_type[layer_type])

    def probes(self, layer):
        """(head probe, neuron probe, hidden probes) of one layer; a probe the layer's type lacks is None."""
        has = dict(layer.named_modules())
        return (has.get(self.head_probe), has.get(self.neuron_probe), [layer.get_submodule(p) for p in
                                                                        self.hidden_probes])

    def attention_layers(self, config) -> int:
        return sum(t == ATTENTION for t in self.layer_types(config))

    def kept_layers_problem(self, config, layers: list[int]) -> str | None:
        types = self.layer_types(config)
        attention = [i for i, t in enumerate(types) if t == ATTENTION]
        if attention and not any(types[i] == ATTENTION for i in layers):
            return (f"dropping layers {sorted(set(range(len(types))) - set(layers))} drops every attention layer "
                    f"({attention}): transformers 5.19 cannot run a Nemotron-H without one (its hybrid cache asks an "
                    f"attention layer for the sequence length); keep at least one 'full_attention' layer")
        return None

    @property
    def lora_targets(self) -> list[str]:
        """Every linear but the Mamba ``out_proj``: PEFT (0.21) refuses LoRA on it for Mamba models (the fused Mamba
        kernels read ``out_proj.weight`` directly, bypassing a LoRA wrapper)."""
        return [n for n in self.linears if n != "out_proj"]

    def fp8_problem(self, config) -> str | None:
        return None  # ModelOpt 0.42 quantizes all of them (in_proj, out_proj, q/k/v/o, up/down); measured on CPU

    def sequential_problem(self, config) -> str | None:
        return (f"model_type={config.model_type!r} is a hybrid (Mamba2 + attention + MLP) model, which layer-by-layer "
                f"calibration (sequential) does not support; run it in memory (sequential=false)")


FAMILY = NemotronH()
