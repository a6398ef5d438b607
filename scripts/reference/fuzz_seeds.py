"""Writes the fuzzing seed corpus, fuzz/seeds/TARGET/ (run from the repository root):
a tiny Llama GGUF with a byte-level tokenizer, a PEFT safetensors pair, adapter configs (PEFT 0.21's, from
the tiny fixture, and a short dnd one), a TOML and a JSON task file, JSONL prompts, and one body per
`dnd serve` POST route (first byte: the route).

    $VENV/bin/python scripts/reference/fuzz_seeds.py
"""
import json
import os

import gguf
import numpy as np
from safetensors.numpy import save as safetensors_bytes

S = "fuzz/seeds"


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").write(data if isinstance(data, bytes) else data.encode())


def main():
    r = np.random.default_rng(0)
    t = lambda *s: r.standard_normal(s).astype(np.float32)
    os.makedirs(f"{S}/gguf", exist_ok=True)
    w = gguf.GGUFWriter(f"{S}/gguf/seed-tiny-llama", "llama")
    for k, v in [("block_count", 1), ("embedding_length", 4), ("feed_forward_length", 8),
                 ("attention.head_count", 2), ("attention.head_count_kv", 1), ("context_length", 16)]:
        w.add_uint32(f"llama.{k}", v)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "ab"])
    w.add_token_merges(["a b"])
    w.add_token_types([1, 1, 1])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_tensor("token_embd.weight", t(3, 4))
    w.add_tensor("output_norm.weight", t(4))
    for n, s in [("attn_norm", (4,)), ("ffn_norm", (4,)), ("attn_q", (4, 4)), ("attn_k", (2, 4)),
                 ("attn_v", (2, 4)), ("attn_output", (4, 4)), ("ffn_gate", (8, 4)), ("ffn_up", (8, 4)),
                 ("ffn_down", (4, 8))]:
        w.add_tensor(f"blk.0.{n}.weight", t(*s))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    write(f"{S}/safetensors/seed-adapter", safetensors_bytes({
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": t(2, 4),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": t(4, 2)}))
    fx = json.load(open("crates/dnd-llm/tests/fixtures/tiny_llama.json"))
    write(f"{S}/adapter_config/seed-peft-0.21", json.dumps(fx["lora"]["adapter_config"]))
    write(f"{S}/adapter_config/seed-dnd", json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                                      "target_modules": ["q_proj", "v_proj"], "use_rslora": True}))
    toml = ('[[task]]\nname = "mine"\ndataset = "mine"\nfile = "mine.jsonl"\nlayout = "multiple-choice"\n'
            'metric = "acc"\n[task.split]\ntest = 0.3\n')
    write(f"{S}/task_file/seed-toml", b"\x00" + toml.encode())
    task = {"task": [{"name": "x", "dataset": "d", "template": "plain",
                      "sources": [{"path": "a.jsonl", "layout": "prompt-completion"}]}]}
    write(f"{S}/task_file/seed-json", b"\x01" + json.dumps(task).encode())
    write(f"{S}/prompts/seed", '"a plain string"\n{"prompt": "p"}\n{"question": "q", "x": 1}\n\n{"instruction": "i"}\n')
    bodies = [(0, {"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 8, "stop": ["\n"],
                   "temperature": 0}),
              (1, {"model": "dnd-0123456789abcdef", "stream": True,
                   "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}),
              (2, {"prompts": ["a", "b"]}), (2, {"description": "d"})]
    for i, (k, b) in enumerate(bodies):
        write(f"{S}/http_body/seed-{i}", bytes([k]) + json.dumps(b).encode())


if __name__ == "__main__":
    main()
