#!/usr/bin/env python3
"""Tiny Llama / Qwen2 parity fixtures for the Rust forward pass and LoRA.

Every weight is given by a closed formula (see `formula_tensor`) that the Rust
tests re-implement, so the fixture only has to carry the config, the input ids
and the reference logits computed here with transformers (+ PEFT for LoRA).

    python scripts/reference/tiny_fixture.py [--out-dir crates/dnd-llm/tests/fixtures]

Writes tiny_llama.json and tiny_qwen2.json.
"""
import argparse
import json
import math
import os
import sys
import tempfile

import numpy as np
import torch

import transformers
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, Qwen2Config

import peft
from peft import LoraConfig, get_peft_model
from peft.utils import get_peft_model_state_dict

FORMULA = (
    "For each tensor (HF / PEFT-saved name N, flat row-major index i from 0): "
    "h = (sum of UTF-8 bytes of N) mod 1000; "
    "v = 0.1*sin(0.7*i + 0.013*h + 0.5), or 1.0 + that for norm weights "
    "(N contains 'layernorm' or 'norm.weight'); computed in float64, cast to float32. "
    "Tied llama: lm_head is embed_tokens. LoRA A/B use the PEFT saved key "
    "(e.g. base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight) and the plain (non-norm) form."
)

INPUTS = [
    [1, 5, 9, 17, 33, 2, 63, 40],
    [7, 7, 7, 12],
    [0, 63, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22],
]

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_R = 4
LORA_ALPHA = 8


def name_hash(name: str) -> int:
    return sum(name.encode("utf-8")) % 1000


def is_norm(name: str) -> bool:
    return "layernorm" in name or "norm.weight" in name


def formula_tensor(name: str, shape, norm=None) -> np.ndarray:
    """float32 array of `shape` for tensor `name` (see FORMULA)."""
    if norm is None:
        norm = is_norm(name)
    n = int(np.prod(shape)) if len(shape) else 1
    i = np.arange(n, dtype=np.float64)
    v = 0.1 * np.sin(0.7 * i + 0.013 * name_hash(name) + 0.5)
    if norm:
        v = 1.0 + v
    return v.astype(np.float32).reshape(shape)


def common_kwargs():
    return dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        hidden_act="silu",
        initializer_range=0.02,
        use_cache=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )


def make_config(arch: str):
    kw = common_kwargs()
    if arch == "llama":
        cfg = LlamaConfig(
            **kw,
            head_dim=8,
            rope_theta=10000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            rope_scaling=None,
            attention_bias=False,
            mlp_bias=False,
            attention_dropout=0.0,
        )
    elif arch == "qwen2":
        cfg = Qwen2Config(
            **kw,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            rope_scaling=None,
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=2,
            attention_dropout=0.0,
        )
    else:
        raise ValueError(arch)
    return cfg


def written_config(cfg) -> dict:
    """The config dict exactly as save_pretrained writes config.json."""
    with tempfile.TemporaryDirectory() as d:
        cfg.save_pretrained(d)
        with open(os.path.join(d, "config.json")) as f:
            return json.load(f)


def legacy_config(cfg_json: dict) -> dict:
    """The same config in the transformers 4.x layout (top-level rope_theta / rope_scaling, no
    rope_parameters / layer_types), which is what most HF model directories in the wild contain."""
    c = {k: v for k, v in cfg_json.items() if k not in ("rope_parameters", "layer_types", "transformers_version")}
    rp = cfg_json.get("rope_parameters") or {}
    c["rope_theta"] = rp.get("rope_theta", cfg_json.get("rope_theta"))
    c["rope_scaling"] = None
    c["torch_dtype"] = "float32"
    c["architectures"] = ["LlamaForCausalLM" if cfg_json["model_type"] == "llama" else "Qwen2ForCausalLM"]
    c["transformers_version"] = "4.46.0"
    return dict(sorted(c.items()))


def numpy_forward(cfg: dict, ids, lora=None):
    """Independent float64 numpy forward of the formula model (documentation + cross-check).

    lora: None or (scaling, {saved_key: array}) with PEFT saved keys."""
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta"))
    eps = cfg["rms_norm_eps"]
    has_bias = cfg["model_type"] == "qwen2"

    def W(name, shape):
        return formula_tensor(name, shape).astype(np.float64)

    def lin(x, name, out_f, in_f, bias=False):
        y = x @ W(name + ".weight", (out_f, in_f)).T
        if bias:
            y = y + W(name + ".bias", (out_f,))
        if lora is not None and name.split(".")[-1] in LORA_TARGETS:
            sc, ad = lora
            a = ad["base_model.model." + name + ".lora_A.weight"].astype(np.float64)
            b = ad["base_model.model." + name + ".lora_B.weight"].astype(np.float64)
            y = y + sc * (x @ a.T) @ b.T
        return y

    def rms(x, name):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * W(name, (H,))

    T = len(ids)
    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]  # [T, hd/2]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(x):  # [heads, T, hd], half-split ("NEOX") rotation as in HF
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    V, I = cfg["vocab_size"], cfg["intermediate_size"]
    emb = W("model.embed_tokens.weight", (V, H))
    x = emb[np.array(ids)]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}"
        h = rms(x, p + ".input_layernorm.weight")
        q = lin(h, p + ".self_attn.q_proj", nh * hd, H, has_bias).reshape(T, nh, hd).transpose(1, 0, 2)
        k = lin(h, p + ".self_attn.k_proj", nkv * hd, H, has_bias).reshape(T, nkv, hd).transpose(1, 0, 2)
        v = lin(h, p + ".self_attn.v_proj", nkv * hd, H, has_bias).reshape(T, nkv, hd).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        rep = nh // nkv
        k, v = np.repeat(k, rep, 0), np.repeat(v, rep, 0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        o = (s @ v).transpose(1, 0, 2).reshape(T, nh * hd)
        x = x + lin(o, p + ".self_attn.o_proj", H, nh * hd)
        h = rms(x, p + ".post_attention_layernorm.weight")
        g = lin(h, p + ".mlp.gate_proj", I, H)
        u = lin(h, p + ".mlp.up_proj", I, H)
        x = x + lin(g / (1.0 + np.exp(-g)) * u, p + ".mlp.down_proj", H, I)
    x = rms(x, "model.norm.weight")
    head = emb if cfg["tie_word_embeddings"] else W("lm_head.weight", (V, H))
    return x @ head.T


def round7(x):
    """Nested lists with floats rounded to 7 significant digits."""
    if isinstance(x, np.ndarray):
        x = x.tolist()
    if isinstance(x, list):
        return [round7(v) for v in x]
    if isinstance(x, float):
        return float(f"{x:.7g}")
    return x


def set_formula_weights(model, name_map=None, amplitude_norm=True):
    """Overwrite every parameter of `model` with the formula.

    name_map(param_name) -> formula name (None = skip)."""
    with torch.no_grad():
        for pname, p in model.named_parameters(remove_duplicate=True):
            fname = name_map(pname) if name_map else pname
            if fname is None:
                continue
            p.copy_(torch.from_numpy(formula_tensor(fname, tuple(p.shape))))


def check_base_weights(model, tied: bool):
    sd = model.state_dict()
    names = sorted(sd.keys())
    for name in names:
        t = sd[name]
        fname = name
        if tied and name == "lm_head.weight":
            fname = "model.embed_tokens.weight"
        want = formula_tensor(fname, tuple(t.shape))
        got = t.detach().cpu().numpy()
        assert got.dtype == np.float32, (name, got.dtype)
        assert np.array_equal(got, want), f"weight mismatch for {name}"
    if tied:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "lm_head not tied"
    else:
        assert "lm_head.weight" in sd
    return names


def logits_for(model, ids):
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long))
    return out.logits[0].float().numpy()


def peft_saved_key(pname: str) -> str:
    # runtime name: base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
    # saved name:   base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
    return pname.replace(".default.", ".")


def lora_logits(base_model_fn, use_rslora: bool, seqs):
    model = base_model_fn()
    lcfg = LoraConfig(
        r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        bias="none",
        task_type="CAUSAL_LM",
        use_rslora=use_rslora,
    )
    pm = get_peft_model(model, lcfg)
    pm.eval()
    n_set = 0
    with torch.no_grad():
        for pname, p in pm.named_parameters():
            if "lora_A" in pname or "lora_B" in pname:
                p.copy_(torch.from_numpy(formula_tensor(peft_saved_key(pname), tuple(p.shape), norm=False)))
                n_set += 1
    # self-check against the keys PEFT would actually save
    saved = get_peft_model_state_dict(pm)
    assert len(saved) == n_set == 2 * len(LORA_TARGETS) * pm.config.num_hidden_layers, (len(saved), n_set)
    lora_shapes = {}
    for k, t in saved.items():
        want = formula_tensor(k, tuple(t.shape), norm=False)
        assert np.array_equal(t.detach().numpy(), want), f"lora mismatch {k}"
        lora_shapes[k] = list(t.shape)
    # scaling check
    q = pm.base_model.model.model.layers[0].self_attn.q_proj
    want_scale = LORA_ALPHA / math.sqrt(LORA_R) if use_rslora else LORA_ALPHA / LORA_R
    assert abs(q.scaling["default"] - want_scale) < 1e-12, q.scaling
    # the PEFT adapter_config.json as written by save_pretrained
    with tempfile.TemporaryDirectory() as d:
        pm.save_pretrained(d)
        with open(os.path.join(d, "adapter_config.json")) as f:
            adapter_cfg = json.load(f)
        # PEFT writes target_modules in (hash-randomised) set order; sort for a reproducible fixture
        adapter_cfg["target_modules"] = sorted(adapter_cfg["target_modules"])
        from safetensors.numpy import load_file

        on_disk = load_file(os.path.join(d, "adapter_model.safetensors"))
        assert set(on_disk) == set(saved), (sorted(on_disk)[:3], sorted(saved)[:3])
        for k, v in on_disk.items():
            assert np.array_equal(v, formula_tensor(k, v.shape, norm=False)), k
    logits = [logits_for(pm, s) for s in seqs]
    return logits, adapter_cfg, sorted(lora_shapes.items())


def build(arch: str, out_path: str):
    torch.manual_seed(0)
    cfg = make_config(arch)
    cfg_json = written_config(cfg)
    tied = bool(cfg.tie_word_embeddings)

    cfg_legacy = legacy_config(cfg_json)

    def base_model(cfg_dict=cfg_json):
        # Load through config.json exactly as written, like the Rust side will.
        c = type(cfg).from_dict(dict(cfg_dict))
        m = AutoModelForCausalLM.from_config(c, attn_implementation="eager", dtype=torch.float32)
        m = m.float().eval()
        set_formula_weights(m)
        if tied:
            m.tie_weights()
        check_base_weights(m, tied)
        return m

    model = base_model()
    names = check_base_weights(model, tied)
    params = {n: list(p.shape) for n, p in model.named_parameters(remove_duplicate=True)}
    logits = [logits_for(model, s) for s in INPUTS]

    # The 4.x-layout config must describe the same model.
    legacy_logits = [logits_for(base_model(cfg_legacy), s) for s in INPUTS]
    for a, b in zip(legacy_logits, logits):
        assert np.array_equal(a, b), "legacy config gives different logits"

    # Sanity: causal -> logits of a prefix equal the prefix of the logits.
    pre = logits_for(model, INPUTS[0][:3])
    assert np.allclose(pre, logits[0][:3], atol=1e-5), np.abs(pre - logits[0][:3]).max()

    for s_ids, ref in zip(INPUTS, logits):
        npl = numpy_forward(cfg_json, s_ids)
        assert np.abs(npl - ref).max() < 2e-5, ("numpy forward disagrees", np.abs(npl - ref).max())

    lora, adapter_cfg, lora_shapes = lora_logits(base_model, False, INPUTS)
    ad = {k: formula_tensor(k, tuple(sh), norm=False) for k, sh in lora_shapes}
    for s_ids, ref in zip(INPUTS, lora):
        npl = numpy_forward(cfg_json, s_ids, (LORA_ALPHA / LORA_R, ad))
        assert np.abs(npl - ref).max() < 2e-5, ("numpy LoRA forward disagrees", np.abs(npl - ref).max())
    rs, _, _ = lora_logits(base_model, True, INPUTS[:1])
    npl = numpy_forward(cfg_json, INPUTS[0], (LORA_ALPHA / math.sqrt(LORA_R), ad))
    assert np.abs(npl - rs[0]).max() < 2e-5, ("numpy rsLoRA forward disagrees", np.abs(npl - rs[0]).max())
    # rope_theta must matter for these inputs (otherwise the fixture could not catch a wrong base)
    alt = dict(cfg_json, rope_parameters={"rope_theta": 123.0, "rope_type": "default"})
    assert np.abs(numpy_forward(alt, INPUTS[2]) - logits[2]).max() > 1e-3
    for a, b in zip(lora, logits):
        assert np.abs(a - b).max() > 1e-3, "LoRA had no effect"

    checks = {}
    for n in names:
        fname = "model.embed_tokens.weight" if (tied and n == "lm_head.weight") else n
        w = formula_tensor(fname, tuple(model.state_dict()[n].shape)).astype(np.float64)
        checks[n] = {"sum": float(f"{w.sum():.10g}"), "first": float(w.flat[0]), "last": float(w.flat[-1])}

    fixture = {
        "arch": arch,
        "config": cfg_json,
        "config_legacy_v4": cfg_legacy,
        "config_note": "config = config.json as written by this transformers version (5.x puts rope_theta under "
                       "rope_parameters); config_legacy_v4 = the same model in the 4.x layout (top-level rope_theta). "
                       "Both load to identical logits in transformers.",
        "formula": FORMULA,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
        },
        "numpy_crosscheck": "an independent float64 numpy forward (numpy_forward in tiny_fixture.py) matched these logits to < 2e-5",
        "dtype": "float32",
        "attn_implementation": "eager",
        "parameters": params,
        "state_dict_keys": names,
        "weight_checks": checks,
        "inputs": INPUTS,
        "logits": [round7(l) for l in logits],
        "lora": {
            "r": LORA_R,
            "alpha": LORA_ALPHA,
            "scaling": LORA_ALPHA / LORA_R,
            "target_modules": LORA_TARGETS,
            "adapter_config": adapter_cfg,
            "saved_keys": [[k, s] for k, s in lora_shapes],
            "logits": [round7(l) for l in lora],
        },
        "lora_rslora_scaling": LORA_ALPHA / math.sqrt(LORA_R),
        "lora_rslora_logits_first": round7(rs[0]),
    }
    with open(out_path, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")
    print(f"{arch}: wrote {out_path} ({os.path.getsize(out_path)} bytes); "
          f"max|logit|={max(np.abs(l).max() for l in logits):.4f}, "
          f"max|lora-base|={max(np.abs(a - b).max() for a, b in zip(lora, logits)):.4f}")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.normpath(os.path.join(here, "..", "..", "crates", "dnd-llm", "tests", "fixtures"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=default_out)
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    torch.set_num_threads(1)
    # Self-test of the formula helper itself.
    t = formula_tensor("model.norm.weight", (4,))
    h = name_hash("model.norm.weight")
    assert np.float32(1.0 + 0.1 * math.sin(0.7 * 3 + 0.013 * h + 0.5)) == t[3]
    build("llama", os.path.join(args.out_dir, "tiny_llama.json"))
    build("qwen2", os.path.join(args.out_dir, "tiny_qwen2.json"))


if __name__ == "__main__":
    main()
