#!/usr/bin/python3
"""Writes the golden fixtures that test/golden.test.ts and test/peft.test.ts compare against.

Builds tiny random Dinov2, BERT and LLaMA models in PyTorch, written from scratch to follow
HF transformers' modeling_dinov2.py, modeling_bert.py and modeling_llama.py: the same module
names (so state_dict() keys are the checkpoint names), the same operation order, f32 math.
For each model it saves, under test/golden/<name>/:
  config.json         the HF config fields the loaders read
  model.safetensors   the weights under their HF names
  golden.safetensors  inputs, outputs, the fixed weights w of the loss L = sum(output * w),
                      and dL/d(parameter) for a few parameters, named grad.<HF name>
It also writes a PEFT LoRA adapter for the LLaMA model (test/golden/llama-peft/).

Run with Debian's PyTorch (apt-get install python3-torch): /usr/bin/python3 test/golden/make_golden.py
Needs no transformers, safetensors or network access.
"""

import json
import math
import os
import struct

import torch
import torch.nn.functional as F
from torch import nn

ROOT = os.path.dirname(os.path.abspath(__file__))


# ---------- safetensors, written by hand ----------

DTYPES = {torch.float32: "F32", torch.int64: "I64"}


def save_safetensors(path, tensors, metadata=None):
    """8-byte little-endian header length, JSON header, then the raw little-endian bytes."""
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    chunks = []
    offset = 0
    for name, tensor in tensors.items():
        tensor = tensor.detach().contiguous().cpu()
        data = tensor.numpy().tobytes()
        header[name] = {"dtype": DTYPES[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"))
    text += " " * ((8 - (8 + len(text)) % 8) % 8)  # data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text.encode("utf-8"))
        for data in chunks:
            f.write(data)


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


def randomize(module, std=0.3):
    """Replaces every parameter with N(0, std²) values; norm weights and layer scales around 1."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            parts = name.split(".")
            if (parts[-1] == "weight" and "norm" in parts[-2].lower()) or parts[-1] == "lambda1":
                parameter.copy_(1 + 0.2 * torch.randn_like(parameter))
            else:
                parameter.copy_(std * torch.randn_like(parameter))


def gradients_of(model, output, names):
    """Returns the loss weights w and dL/dp for L = sum(output * w), for the named parameters."""
    weights = torch.randn_like(output)
    model.zero_grad()
    (output * weights).sum().backward()
    params = dict(model.named_parameters())
    return weights, {f"grad.{name}": params[name].grad.clone() for name in names}


# ---------- Dinov2 (modeling_dinov2.py) ----------


class Dinov2Embeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden, patch = cfg["hidden_size"], cfg["patch_size"]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.mask_token = nn.Parameter(torch.zeros(1, hidden))
        self.patch_embeddings = nn.Module()
        self.patch_embeddings.projection = nn.Conv2d(cfg["num_channels"], hidden, kernel_size=patch, stride=patch)
        patches = (cfg["image_size"] // patch) ** 2
        self.position_embeddings = nn.Parameter(torch.zeros(1, patches + 1, hidden))
        self.patch_size = patch

    def interpolate_pos_encoding(self, embeddings, height, width, convention):
        patches = embeddings.shape[1] - 1
        positions = self.position_embeddings.shape[1] - 1
        if patches == positions and height == width:
            return self.position_embeddings
        cls_position = self.position_embeddings[:, :1]
        patch_positions = self.position_embeddings[:, 1:]
        dim = embeddings.shape[-1]
        rows, columns = height // self.patch_size, width // self.patch_size
        side = int(math.sqrt(positions))
        grid = patch_positions.reshape(1, side, side, dim).permute(0, 3, 1, 2)
        if convention == "size":
            # Current transformers: the output size is given.
            grid = F.interpolate(grid.to(torch.float32), size=(rows, columns), mode="bicubic", align_corners=False)
        else:
            # Earlier transformers releases: a scale factor with 0.1 added to the grid size.
            scale = (float((rows + 0.1) / math.sqrt(positions)), float((columns + 0.1) / math.sqrt(positions)))
            grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False)
            assert grid.shape[-2:] == (rows, columns)
        grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((cls_position, grid), dim=1)

    def forward(self, pixels, convention):
        batch, _, height, width = pixels.shape
        x = self.patch_embeddings.projection(pixels).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(batch, -1, -1), x), dim=1)
        return x + self.interpolate_pos_encoding(x, height, width, convention)


class Dinov2SelfAttention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x):
        batch, length, hidden = x.shape
        split = lambda t: t.view(batch, length, self.heads, hidden // self.heads).transpose(1, 2)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (hidden // self.heads) ** -0.5
        context = torch.matmul(F.softmax(scores, dim=-1), v)
        return context.transpose(1, 2).reshape(batch, length, hidden)


class Dinov2Layer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        mlp_width = int(hidden * cfg["mlp_ratio"])
        self.norm1 = nn.LayerNorm(hidden, eps=eps)
        self.attention = nn.Module()
        self.attention.attention = Dinov2SelfAttention(hidden, cfg["num_attention_heads"])
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(hidden, hidden)
        self.layer_scale1 = nn.Module()
        self.layer_scale1.lambda1 = nn.Parameter(torch.ones(hidden))
        self.norm2 = nn.LayerNorm(hidden, eps=eps)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(hidden, mlp_width)
        self.mlp.fc2 = nn.Linear(mlp_width, hidden)
        self.layer_scale2 = nn.Module()
        self.layer_scale2.lambda1 = nn.Parameter(torch.ones(hidden))

    def forward(self, x):
        attended = self.attention.output.dense(self.attention.attention(self.norm1(x)))
        x = attended * self.layer_scale1.lambda1 + x
        hidden = self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))
        return hidden * self.layer_scale2.lambda1 + x


class Dinov2Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embeddings = Dinov2Embeddings(cfg)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([Dinov2Layer(cfg) for _ in range(cfg["num_hidden_layers"])])
        self.layernorm = nn.LayerNorm(cfg["hidden_size"], eps=cfg["layer_norm_eps"])

    def forward(self, pixels, convention="size"):
        x = self.embeddings(pixels, convention)
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)


def make_dinov2():
    cfg = {
        "model_type": "dinov2",
        "architectures": ["Dinov2Model"],
        "hidden_size": 40,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "mlp_ratio": 3.5,
        "patch_size": 4,
        "image_size": 28,
        "num_channels": 3,
        "layer_norm_eps": 1e-6,
        "layerscale_value": 1.0,
        "hidden_act": "gelu",
        "qkv_bias": True,
        "use_swiglu_ffn": False,
    }
    model = Dinov2Model(cfg)
    randomize(model)
    folder = os.path.join(ROOT, "dinov2")
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, "config.json"), cfg)
    save_safetensors(os.path.join(folder, "model.safetensors"), model.state_dict())

    golden = {}
    # (name, height, width, convention): the checkpoint's 7×7 grid, upsampled to 9×9, a
    # rectangular 5×8 grid (rows shrink, columns grow), and 9×9 with the older convention.
    cases = [("native", 28, 28, "size"), ("up", 36, 36, "size"), ("rect", 20, 32, "size"), ("up_scale_factor", 36, 36, "scale-factor")]
    for name, height, width, convention in cases:
        pixels = torch.randn(2, 3, height, width)
        output = model(pixels, convention)
        golden[f"{name}.pixel_values"] = pixels
        golden[f"{name}.last_hidden_state"] = output
        if name == "up":
            weights, grads = gradients_of(model, output, [
                "embeddings.position_embeddings",
                "embeddings.patch_embeddings.projection.weight",
                "encoder.layer.0.attention.attention.query.weight",
                "encoder.layer.1.layer_scale1.lambda1",
                "encoder.layer.1.mlp.fc1.weight",
            ])
            golden[f"{name}.loss_weights"] = weights
            golden.update({f"{name}.{key}": value for key, value in grads.items()})
    save_safetensors(os.path.join(folder, "golden.safetensors"), golden)


# ---------- BERT (modeling_bert.py) ----------


class BertSelfAttention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x, additive_mask):
        batch, length, hidden = x.shape
        split = lambda t: t.view(batch, length, self.heads, hidden // self.heads).transpose(1, 2)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hidden // self.heads) + additive_mask
        context = torch.matmul(F.softmax(scores, dim=-1), v)
        return context.transpose(1, 2).reshape(batch, length, hidden)


class BertLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.attention = nn.Module()
        self.attention.self = BertSelfAttention(hidden, cfg["num_attention_heads"])
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(hidden, hidden)
        self.attention.output.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(hidden, cfg["intermediate_size"])
        self.output = nn.Module()
        self.output.dense = nn.Linear(cfg["intermediate_size"], hidden)
        self.output.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x, additive_mask):
        attended = self.attention.output.LayerNorm(self.attention.output.dense(self.attention.self(x, additive_mask)) + x)
        hidden = self.output.dense(F.gelu(self.intermediate.dense(attended)))
        return self.output.LayerNorm(hidden + attended)


class BertModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden = cfg["hidden_size"]
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(cfg["vocab_size"], hidden)
        self.embeddings.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], hidden)
        self.embeddings.token_type_embeddings = nn.Embedding(cfg["type_vocab_size"], hidden)
        self.embeddings.LayerNorm = nn.LayerNorm(hidden, eps=cfg["layer_norm_eps"])
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([BertLayer(cfg) for _ in range(cfg["num_hidden_layers"])])
        self.pooler = nn.Module()
        self.pooler.dense = nn.Linear(hidden, hidden)

    def forward(self, ids, attention_mask, token_type_ids):
        length = ids.shape[1]
        e = self.embeddings
        x = e.word_embeddings(ids) + e.token_type_embeddings(token_type_ids)
        x = e.LayerNorm(x + e.position_embeddings(torch.arange(length))[None])
        # HF's extended attention mask: 0 where attended, the f32 minimum where padded.
        additive_mask = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for layer in self.encoder.layer:
            x = layer(x, additive_mask)
        return x


def make_bert():
    cfg = {
        "model_type": "bert",
        "architectures": ["BertForMaskedLM"],
        "vocab_size": 53,
        "hidden_size": 36,
        "num_hidden_layers": 2,
        "num_attention_heads": 3,
        "intermediate_size": 68,
        "max_position_embeddings": 24,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
        "position_embedding_type": "absolute",
    }
    model = BertModel(cfg)
    randomize(model)
    folder = os.path.join(ROOT, "bert")
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, "config.json"), cfg)
    # Saved as BertForMaskedLM does: the trunk under "bert.", plus a buffer and a head that the
    # loader must skip.
    state = {f"bert.{key}": value for key, value in model.state_dict().items()}
    state["bert.embeddings.position_ids"] = torch.arange(cfg["max_position_embeddings"])[None]
    state["cls.predictions.bias"] = torch.randn(cfg["vocab_size"])
    save_safetensors(os.path.join(folder, "model.safetensors"), state)

    golden = {}
    lengths = [9, 5]
    ids = torch.randint(0, cfg["vocab_size"], (2, 9))
    mask = torch.tensor([[1] * n + [0] * (9 - n) for n in lengths])
    # "single": every token type 0 (one segment); "pair": a second segment of type 1.
    for name, types in [("single", torch.zeros(2, 9, dtype=torch.int64)), ("pair", torch.tensor([[0] * 4 + [1] * 5, [0] * 3 + [1] * 6]))]:
        output = model(ids, mask, types)
        golden[f"{name}.input_ids"] = ids
        golden[f"{name}.lengths"] = torch.tensor(lengths)
        golden[f"{name}.token_type_ids"] = types
        golden[f"{name}.last_hidden_state"] = output
        if name == "pair":
            weights, grads = gradients_of(model, output, [
                "embeddings.word_embeddings.weight",
                "embeddings.token_type_embeddings.weight",
                "embeddings.position_embeddings.weight",
                "encoder.layer.0.attention.self.query.weight",
                "encoder.layer.1.intermediate.dense.weight",
                "encoder.layer.1.output.LayerNorm.weight",
            ])
            golden[f"{name}.loss_weights"] = weights
            golden.update({f"{name}.{key}": value for key, value in grads.items()})
    save_safetensors(os.path.join(folder, "golden.safetensors"), golden)


# ---------- LLaMA (modeling_llama.py) ----------


class LlamaRMSNorm(nn.Module):
    def __init__(self, hidden, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x):
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotary_tables(head_dim, theta, length):
    """cos, sin [T, Dh] as LlamaRotaryEmbedding computes them, all in f32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    positions = torch.arange(length)[None, None, :].float()
    freqs = (inv_freq[None, :, None].float() @ positions).transpose(1, 2)[0]
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.kv_heads = cfg["num_key_value_heads"]
        self.head_dim = hidden // self.heads
        self.q_proj = nn.Linear(hidden, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, cos, sin):
        batch, length, hidden = x.shape
        q = self.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # repeat_kv: each key/value head serves heads / kv_heads consecutive query heads.
        groups = self.heads // self.kv_heads
        k = k[:, :, None].expand(batch, self.kv_heads, groups, length, self.head_dim).reshape(batch, self.heads, length, self.head_dim)
        v = v[:, :, None].expand(batch, self.kv_heads, groups, length, self.head_dim).reshape(batch, self.heads, length, self.head_dim)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)
        causal = torch.full((length, length), torch.finfo(torch.float32).min).triu(1)
        probs = F.softmax(scores + causal, dim=-1, dtype=torch.float32)
        context = torch.matmul(probs, v).transpose(1, 2).reshape(batch, length, hidden)
        return self.o_proj(context)


class LlamaMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden, inner = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.self_attn = LlamaAttention(cfg)
        self.post_attention_layernorm = LlamaRMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.mlp = LlamaMLP(cfg)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.model.layers = nn.ModuleList([LlamaDecoderLayer(cfg) for _ in range(cfg["num_hidden_layers"])])
        self.model.norm = LlamaRMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        if not cfg["tie_word_embeddings"]:
            self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)

    def forward(self, ids):
        cfg = self.cfg
        cos, sin = rotary_tables(cfg["hidden_size"] // cfg["num_attention_heads"], cfg["rope_theta"], ids.shape[1])
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        hidden = self.model.norm(x)
        head = self.model.embed_tokens.weight if cfg["tie_word_embeddings"] else self.lm_head.weight
        return hidden, hidden @ head.T


def llama_config(**fields):
    cfg = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_act": "silu",
        "rope_scaling": None,
        "attention_bias": False,
        "max_position_embeddings": 64,
    }
    cfg.update(fields)
    return cfg


def make_llama(name, cfg, length, grad_names):
    model = LlamaForCausalLM(cfg)
    randomize(model)
    folder = os.path.join(ROOT, name)
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, "config.json"), cfg)
    save_safetensors(os.path.join(folder, "model.safetensors"), model.state_dict())

    ids = torch.randint(0, cfg["vocab_size"], (2, length))
    hidden, logits = model(ids)
    weights, grads = gradients_of(model, logits, grad_names)
    golden = {"input_ids": ids, "last_hidden_state": hidden, "logits": logits, "loss_weights": weights, **grads}
    save_safetensors(os.path.join(folder, "golden.safetensors"), golden)
    return model, ids


def make_peft(model, ids):
    """A PEFT LoRA adapter for `model` and the logits it gives, W + (alpha/r)·B·A merged."""
    rank, alpha = 4, 8
    targets = ["q_proj", "v_proj", "gate_proj", "down_proj"]
    folder = os.path.join(ROOT, "llama-peft")
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, "adapter_config.json"), {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "test/golden/llama",
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.05,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": None,
        "use_rslora": False,
    })
    adapter = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.split(".")[-1] not in targets:
                continue
            a = 0.3 * torch.randn(rank, module.in_features)
            b = 0.3 * torch.randn(module.out_features, rank)
            adapter[f"base_model.model.{name}.lora_A.weight"] = a
            adapter[f"base_model.model.{name}.lora_B.weight"] = b
            module.weight += (alpha / rank) * (b @ a)
        hidden, logits = model(ids)
    save_safetensors(os.path.join(folder, "adapter_model.safetensors"), adapter)
    save_safetensors(os.path.join(folder, "golden.safetensors"), {"input_ids": ids, "logits": logits})


def main():
    torch.manual_seed(20261204)
    make_dinov2()
    make_bert()
    gqa = llama_config(vocab_size=61, hidden_size=48, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
    model, ids = make_llama("llama", gqa, 11, [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.k_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.1.input_layernorm.weight",
        "model.norm.weight",
        "lm_head.weight",
    ])
    make_peft(model, ids)
    tied = llama_config(vocab_size=45, hidden_size=32, intermediate_size=56, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=2, rope_theta=1000000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
    make_llama("llama-tied", tied, 40, ["model.embed_tokens.weight", "model.layers.0.self_attn.v_proj.weight"])


if __name__ == "__main__":
    main()
