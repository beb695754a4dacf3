"""ComfyUI a125cd84's CLIP (comfy.sd.CLIP over sd1_clip.SD1ClipModel / sdxl_clip.SDXLClipModel) for
SD1.5 / SDXL checkpoints, in our own small code with ComfyUI's module names and state-dict keys:
``clip_l.transformer.text_model.…`` (+ ``clip_l.transformer.text_projection.weight``,
``clip_l.logit_scale``), SDXL also ``clip_g.transformer.…`` (OpenCLIP names converted to HF's).

What ComfyUI does on a CPU and the stand-in copies: weights in float16 (text_encoder_dtype), math in
float32 (manual cast); clip_l's text projection is not in SD checkpoints and stays uninitialised in
ComfyUI, here NaN so any use of it shows; logit_scale 4.6055. Encoding: SD1.5 the last layer after
the final layer norm (or ``clip_layer``'s layer), pooled = unprojected; SDXL clip_l and clip_g
penultimate layers without the final norm, concatenated, pooled = clip_g's projected pooled. The
tokenizers: comfy_core_tokenizers.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from comfy_core_detect import single_thread
from comfy_core_patcher import ModelPatcher
from comfy_core_tokenizers import SD1Tokenizer, SDXLTokenizer
from comfy_standin import model_management

ACTIVATIONS = {"quick_gelu": lambda a: a * torch.sigmoid(1.702 * a), "gelu": F.gelu,
               "gelu_pytorch_tanh": lambda a: F.gelu(a, approximate="tanh")}
# ComfyUI's own configs (sd1_clip_config.json, clip_config_bigg.json) for files without embedded ones
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "hidden_act": "quick_gelu", "max_position_embeddings": 77}
CLIP_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
          "hidden_act": "gelu", "max_position_embeddings": 77}
DTYPE = torch.float16  # comfy.model_management.text_encoder_dtype on a CPU (and on CUDA)


def _linear(x, layer):
    return F.linear(x, layer.weight.float(), None if layer.bias is None else layer.bias.float())


def _norm(x, layer):
    return F.layer_norm(x, layer.normalized_shape, layer.weight.float(), layer.bias.float(), layer.eps)


class CLIPAttention(torch.nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self, name, torch.nn.Linear(dim, dim, bias=True, dtype=DTYPE))

    def forward(self, x, mask):
        b, n, d = x.shape

        def split(t):
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = (split(_linear(x, getattr(self, p))) for p in ("q_proj", "k_proj", "v_proj"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return _linear(out.transpose(1, 2).reshape(b, n, d), self.out_proj)


class CLIPMLP(torch.nn.Module):
    def __init__(self, dim, inner, activation):
        super().__init__()
        self.fc1 = torch.nn.Linear(dim, inner, dtype=DTYPE)
        self.fc2 = torch.nn.Linear(inner, dim, dtype=DTYPE)
        self.activation = ACTIVATIONS[activation]

    def forward(self, x):
        return _linear(self.activation(_linear(x, self.fc1)), self.fc2)


class CLIPLayer(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        dim = config["hidden_size"]
        self.layer_norm1 = torch.nn.LayerNorm(dim, dtype=DTYPE)
        self.self_attn = CLIPAttention(dim, config["num_attention_heads"])
        self.layer_norm2 = torch.nn.LayerNorm(dim, dtype=DTYPE)
        self.mlp = CLIPMLP(dim, config["intermediate_size"], config["hidden_act"])

    def forward(self, x, mask):
        x = x + self.self_attn(_norm(x, self.layer_norm1), mask)
        return x + self.mlp(_norm(x, self.layer_norm2))


class CLIPEncoder(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = torch.nn.ModuleList([CLIPLayer(config) for _ in range(config["num_hidden_layers"])])


class CLIPEmbeddings(torch.nn.Module):
    def __init__(self, config, vocab):
        super().__init__()
        self.token_embedding = torch.nn.Embedding(vocab, config["hidden_size"], dtype=DTYPE)
        self.position_embedding = torch.nn.Embedding(config["max_position_embeddings"], config["hidden_size"],
                                                     dtype=DTYPE)


class CLIPTextModel_(torch.nn.Module):
    def __init__(self, config, vocab):
        super().__init__()
        self.embeddings = CLIPEmbeddings(config, vocab)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = torch.nn.LayerNorm(config["hidden_size"], dtype=DTYPE)


class CLIPTextModel(torch.nn.Module):
    def __init__(self, config, vocab):
        super().__init__()
        self.num_layers = config["num_hidden_layers"]
        self.text_model = CLIPTextModel_(config, vocab)
        self.text_projection = torch.nn.Linear(config["hidden_size"], config["hidden_size"], bias=False, dtype=DTYPE)
        self.dtype = DTYPE

    def forward(self, tokens, num_tokens, intermediate_output=None, final_layer_norm_intermediate=True):
        tm = self.text_model
        x = F.embedding(tokens, tm.embeddings.token_embedding.weight).float()
        x = x + tm.embeddings.position_embedding.weight.float()[: tokens.shape[1]]
        n = tokens.shape[1]
        mask = torch.full((n, n), -torch.finfo(x.dtype).max, dtype=x.dtype).triu_(1)
        if intermediate_output is not None and intermediate_output < 0:
            intermediate_output += len(tm.encoder.layers)
        intermediate = None
        for i, layer in enumerate(tm.encoder.layers):
            x = layer(x, mask)
            if i == intermediate_output:
                intermediate = x.clone()
        x = _norm(x, tm.final_layer_norm)
        if intermediate is not None and final_layer_norm_intermediate:
            intermediate = _norm(intermediate, tm.final_layer_norm)
        pooled = x[torch.arange(x.shape[0]), torch.tensor(num_tokens) - 1]
        return x, intermediate, _linear(pooled, self.text_projection), pooled


class SDClipModel(torch.nn.Module):
    """sd1_clip.SDClipModel: one CLIP tower with ComfyUI's layer options."""

    def __init__(self, config, vocab, special_tokens, layer="last", layer_idx=None, layer_norm_hidden_state=True,
                 return_projected_pooled=True):
        super().__init__()
        self.transformer = CLIPTextModel(config, vocab)
        for p in self.transformer.parameters():
            p.requires_grad = False  # ComfyUI freezes the text encoders
        self.num_layers = self.transformer.num_layers
        self.max_length = 77
        self.layer, self.layer_idx = layer, layer_idx
        self.special_tokens = special_tokens
        self.logit_scale = torch.nn.Parameter(torch.tensor(4.6055))
        self.layer_norm_hidden_state = layer_norm_hidden_state
        self.return_projected_pooled = return_projected_pooled
        self.options_default = (self.layer, self.layer_idx, self.return_projected_pooled)

    def set_clip_options(self, options):
        layer_idx = options.get("layer", self.layer_idx)
        self.return_projected_pooled = options.get("projected_pooled", self.return_projected_pooled)
        if layer_idx is None or abs(layer_idx) > self.num_layers:
            self.layer = "last"
        else:
            self.layer, self.layer_idx = "hidden", layer_idx

    def reset_clip_options(self):
        self.layer, self.layer_idx, self.return_projected_pooled = self.options_default

    def forward(self, tokens):
        end = self.special_tokens["end"]
        num_tokens = [row.index(end) + 1 if end in row else len(row) for row in tokens]
        ids = torch.tensor(tokens, dtype=torch.long)
        x, intermediate, projected, pooled = self.transformer(
            ids, num_tokens, None if self.layer == "last" else self.layer_idx, self.layer_norm_hidden_state)
        z = x if self.layer == "last" else intermediate
        return z.float(), (projected if self.return_projected_pooled else pooled).float()

    def encode_token_weights(self, token_weight_pairs):
        sections = [[t for t, *_ in section] for section in token_weight_pairs]
        if any(w != 1.0 for section in token_weight_pairs for _, w, *_ in section):
            raise NotImplementedError("the stand-in CLIP has no prompt weights")
        out, pooled = self(sections)
        return torch.cat([out[k:k + 1] for k in range(len(sections))], dim=-2), pooled[0:1]


class SD1ClipModel(torch.nn.Module):
    def __init__(self, clip_l: SDClipModel):
        super().__init__()
        self.clip_name, self.clip = "l", "clip_l"
        self.clip_l = clip_l
        self.dtypes = {DTYPE}

    def set_clip_options(self, options):
        self.clip_l.set_clip_options(options)

    def reset_clip_options(self):
        self.clip_l.reset_clip_options()

    def encode_token_weights(self, token_weight_pairs):
        return self.clip_l.encode_token_weights(token_weight_pairs["l"])


class SDXLClipModel(torch.nn.Module):
    def __init__(self, clip_l: SDClipModel, clip_g: SDClipModel):
        super().__init__()
        self.clip_l, self.clip_g = clip_l, clip_g
        self.dtypes = {DTYPE}

    def set_clip_options(self, options):
        self.clip_l.set_clip_options(options)
        self.clip_g.set_clip_options(options)

    def reset_clip_options(self):
        self.clip_g.reset_clip_options()
        self.clip_l.reset_clip_options()

    def encode_token_weights(self, token_weight_pairs):
        g_out, g_pooled = self.clip_g.encode_token_weights(token_weight_pairs["g"])
        l_out, _ = self.clip_l.encode_token_weights(token_weight_pairs["l"])
        cut = min(l_out.shape[1], g_out.shape[1])
        return torch.cat([l_out[:, :cut], g_out[:, :cut]], dim=-1), g_pooled


class CLIP:
    """comfy.sd.CLIP."""

    def __init__(self, cond_stage_model=None, tokenizer=None, no_init=False):
        if no_init:
            return
        self.cond_stage_model = cond_stage_model
        self.tokenizer = tokenizer
        cpu = model_management.get_torch_device()
        self.patcher = ModelPatcher(cond_stage_model, load_device=cpu, offload_device=cpu)
        self.patcher.is_clip = True
        self.apply_hooks_to_conds = None
        model_management.load_models_gpu([self.patcher], force_full_load=True)  # initial device == load device
        self.layer_idx = None
        self.use_clip_schedule = False
        self.tokenizer_options = {}

    def clone(self):
        n = CLIP(no_init=True)
        n.patcher = self.patcher.clone()
        n.cond_stage_model = self.cond_stage_model
        n.tokenizer = self.tokenizer
        n.layer_idx = self.layer_idx
        n.tokenizer_options = self.tokenizer_options.copy()
        n.use_clip_schedule = self.use_clip_schedule
        n.apply_hooks_to_conds = self.apply_hooks_to_conds
        return n

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        return self.patcher.add_patches(patches, strength_patch, strength_model)

    def set_tokenizer_option(self, option_name, value):
        self.tokenizer_options[option_name] = value

    def clip_layer(self, layer_idx):
        self.layer_idx = layer_idx

    def tokenize(self, text, return_word_ids=False, **kwargs):
        return self.tokenizer.tokenize_with_weights(text, return_word_ids, **kwargs)

    def encode_from_tokens_scheduled(self, tokens, unprojected=False, add_dict={}, show_pbar=True):
        pooled_dict = self.encode_from_tokens(tokens, return_pooled="unprojected" if unprojected else True,
                                              return_dict=True)
        cond = pooled_dict.pop("cond")
        pooled_dict.update(add_dict)
        return [[cond, pooled_dict]]

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        self.cond_stage_model.reset_clip_options()
        if self.layer_idx is not None:
            self.cond_stage_model.set_clip_options({"layer": self.layer_idx})
        if return_pooled == "unprojected":
            self.cond_stage_model.set_clip_options({"projected_pooled": False})
        self.load_model()
        with single_thread():
            cond, pooled = self.cond_stage_model.encode_token_weights(tokens)
        if return_dict:
            return {"cond": cond, "pooled_output": pooled}
        return (cond, pooled) if return_pooled else cond

    def encode(self, text):
        return self.encode_from_tokens(self.tokenize(text))

    def load_model(self):
        model_management.load_model_gpu(self.patcher)
        return self.patcher

    def get_sd(self):
        return self.cond_stage_model.state_dict()

    def get_key_patches(self):
        return self.patcher.get_key_patches()


def _open_clip_to_hf(sd: dict, prefix: str) -> dict:
    """OpenCLIP text tower names -> HF CLIP names (what comfy.utils.clip_text_transformers_convert does)."""
    out = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if rest == "text_projection":
            out["text_projection.weight"] = value.transpose(0, 1).contiguous()
            continue
        if rest in ("positional_embedding", "token_embedding.weight") or rest.startswith("ln_final."):
            name = {"positional_embedding": "embeddings.position_embedding.weight",
                    "token_embedding.weight": "embeddings.token_embedding.weight"}.get(rest)
            out["text_model." + (name or rest.replace("ln_final.", "final_layer_norm."))] = value
            continue
        if not rest.startswith("transformer.resblocks."):
            continue  # logit_scale and the like: ComfyUI leaves them unused
        index, part = rest[len("transformer.resblocks."):].split(".", 1)
        layer = f"text_model.encoder.layers.{index}."
        if part.startswith("attn.in_proj_"):
            kind = part.rsplit("_", 1)[1]
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{layer}self_attn.{name}.{kind}"] = chunk
            continue
        for old, new in (("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("mlp.c_fc.", "mlp.fc1."),
                         ("mlp.c_proj.", "mlp.fc2."), ("attn.out_proj.", "self_attn.out_proj.")):
            if part.startswith(old):
                out[layer + new + part[len(old):]] = value
    return out


def _config(configs: dict, name: str, default: dict) -> dict:
    embedded = configs.get(name)
    return {k: embedded[k] for k in default} if embedded else dict(default)


def load_clip(sd: dict, configs: dict, model_config, tokenizer_dir) -> CLIP:
    """The CLIP of an SD1.5 / SDXL checkpoint ``sd`` (call inside inference mode)."""
    sdxl = type(model_config).__name__ == "SDXL"
    if sdxl:
        l_prefix, l_name = "conditioner.embedders.0.transformer.text_model.", "clip_l.transformer.text_model."
    else:
        l_prefix, l_name = "cond_stage_model.transformer.text_model.", "clip_l.transformer.text_model."
    values = {l_name + k[len(l_prefix):]: v for k, v in sd.items() if k.startswith(l_prefix)}
    tokenizer = (SDXLTokenizer if sdxl else SD1Tokenizer)(tokenizer_dir)
    tok = tokenizer.clip_l
    special = {"start": tok.start_token, "end": tok.end_token, "pad": tok.pad_token}
    vocab = values[l_name + "embeddings.token_embedding.weight"].shape[0]
    config_l = _config(configs, "text_encoder", CLIP_L)
    if sdxl:
        g = _open_clip_to_hf(sd, "conditioner.embedders.1.model.")
        values.update({"clip_g.transformer." + k: v for k, v in g.items()})
        clip_l = SDClipModel(config_l, vocab, special, layer="hidden", layer_idx=-2, layer_norm_hidden_state=False)
        clip_g = SDClipModel(_config(configs, "text_encoder_2", CLIP_G),
                             g["text_model.embeddings.token_embedding.weight"].shape[0], dict(special, pad=0),
                             layer="hidden", layer_idx=-2, layer_norm_hidden_state=False, return_projected_pooled=True)
        model = SDXLClipModel(clip_l, clip_g)
    else:
        model = SD1ClipModel(SDClipModel(config_l, vocab, special, return_projected_pooled=False))
    missing, _ = model.load_state_dict(values, strict=False)
    expected_missing = {"clip_l.transformer.text_projection.weight", "clip_l.logit_scale", "clip_g.logit_scale"}
    if set(missing) - expected_missing:
        raise ValueError(f"CLIP weights missing from the checkpoint: {sorted(set(missing) - expected_missing)[:5]}")
    model.clip_l.transformer.text_projection.weight.fill_(float("nan"))  # uninitialised in ComfyUI
    return CLIP(model.eval(), tokenizer)
