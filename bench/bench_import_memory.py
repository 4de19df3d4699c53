"""Peak resident memory of `wmpo import-openvla` and of loading the package, bf16 against fp32.

Writes one miniature OpenVLA checkpoint in the published layout (timm vision towers, fused
projector, Llama LM, sharded safetensors, tokenizer.json, norm stats) twice, in fp32 and in
bf16, then in a fresh process each: imports it (load + save package + sign) and loads the
package. Memory is the peak RSS of the step (VmHWM, reset through /proc/self/clear_refs once
torch and the model modules are imported) minus the RSS just before it, compared with the
size of the weight files. Linux only.

    python bench/bench_import_memory.py --hidden 1024 --layers 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

STEP = r'''
import json, sys
from pathlib import Path
import torch
from wmpo_core.policy.commands.import_openvla import import_openvla
from wmpo_core.policy.loading import load_package
import accelerate, safetensors.torch, wmpo_core.policy.modeling_vla, wmpo_core.policy.openvla  # noqa: E401
from transformers import Dinov2WithRegistersModel, LlamaForCausalLM, SiglipVisionModel  # noqa: F401 (lazy modules)
torch.set_num_threads(1)
src, out, key, step = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
def status_mb(field):
    line = next(x for x in open("/proc/self/status") if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024
open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS (ru_maxrss would carry the parent's)
before = status_mb("VmRSS")
if step == "import":
    import_openvla(src, out, key, variant="oft", chunk_size=8)
else:
    policy = load_package(out)
print(json.dumps({"before_mb": before, "peak_mb": status_mb("VmHWM")}))
'''


def write_checkpoint(d: Path, hidden: int, layers: int, dtype_name: str) -> int:
    """A miniature OpenVLA checkpoint; returns the bytes of its weight files."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = getattr(torch, dtype_name)
    d.mkdir(parents=True)
    base_vocab, img, patch, c = 1024, 28, 14, 64
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.train_from_iterator(["In: What action should the robot take to lift the cube?\nOut:"] * 3,
                            trainers.BpeTrainer(vocab_size=base_vocab, special_tokens=["<unk>", "<s>", "</s>"],
                                                initial_alphabet=["\u2581"], show_progress=False))
    tok.add_tokens([f"x{i}q" for i in range(base_vocab - tok.get_vocab_size())])
    tok.model = models.BPE(vocab={**tok.get_vocab()}, merges=[], unk_token="<unk>")
    tok.add_special_tokens(["<PAD>"])
    (d / "tokenizer.json").write_text(tok.to_str())
    g = torch.Generator().manual_seed(0)
    t: dict[str, torch.Tensor] = {}
    for prefix, registers in (("vision_backbone.featurizer.", True), ("vision_backbone.fused_featurizer.", False)):
        t[prefix + "patch_embed.proj.weight"] = torch.randn(c, 3, patch, patch, generator=g) * 0.05
        t[prefix + "patch_embed.proj.bias"] = torch.zeros(c)
        t[prefix + "pos_embed"] = torch.randn(1, (img // patch) ** 2, c, generator=g) * 0.1
        t[prefix + "norm.weight"], t[prefix + "norm.bias"] = torch.ones(c), torch.zeros(c)
        if registers:
            t[prefix + "cls_token"], t[prefix + "reg_token"] = torch.zeros(1, 1, c), torch.zeros(1, 4, c)
        for i in range(2):
            b = f"{prefix}blocks.{i}."
            for name, shape in (("attn.qkv", (3 * c, c)), ("attn.proj", (c, c)), ("mlp.fc1", (4 * c, c)),
                                ("mlp.fc2", (c, 4 * c))):
                t[b + name + ".weight"] = torch.randn(*shape, generator=g) / shape[1] ** 0.5
                t[b + name + ".bias"] = torch.zeros(shape[0])
            for name in ("norm1", "norm2"):
                t[b + name + ".weight"], t[b + name + ".bias"] = torch.ones(c), torch.zeros(c)
    for name, shape in (("fc1", (8 * c, 2 * c)), ("fc2", (hidden, 8 * c)), ("fc3", (hidden, hidden))):
        t[f"projector.{name}.weight"] = torch.randn(*shape, generator=g) / shape[1] ** 0.5
        t[f"projector.{name}.bias"] = torch.zeros(shape[0])
    text = dict(hidden_size=hidden, intermediate_size=int(hidden * 2.75), num_hidden_layers=layers,
                num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, max_position_embeddings=512,
                rms_norm_eps=1e-5, rope_theta=10000.0)
    lm = LlamaForCausalLM(LlamaConfig(**text, vocab_size=base_vocab + 64, tie_word_embeddings=False))
    t.update({f"language_model.{k}": v for k, v in lm.state_dict().items()})
    t = {k: v.to(dtype).contiguous() for k, v in t.items()}
    names = sorted(t)
    for i in range(2):  # sharded like the published checkpoints
        save_file({k: t[k] for k in names[i::2]}, str(d / f"model-0000{i + 1}-of-00002.safetensors"))
    q = [1.0] * 7
    stats = {"libero_spatial_no_noops": {"action": {"q01": [-v for v in q], "q99": q, "mask": [True] * 6 + [False],
                                                    "mean": [0] * 7, "std": q, "min": [-v for v in q], "max": q}}}
    (d / "config.json").write_text(json.dumps({"model_type": "openvla", "use_fused_vision_backbone": True,
                                               "image_sizes": [img, img], "n_action_bins": 256, "text_config": text}))
    (d / "dataset_statistics.json").write_text(json.dumps(stats))
    return sum(p.stat().st_size for p in d.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()
    from wmpo_core.registry.signing import generate_keypair

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        keys = generate_keypair(root / "keys")
        for dtype in ("float32", "bfloat16"):
            size = write_checkpoint(root / dtype, args.hidden, args.layers, dtype)
            row = {"weights_mb": size / 2**20}
            for step in ("import", "load"):
                res = subprocess.run([sys.executable, "-c", STEP, str(root / dtype), str(root / f"pkg-{dtype}"),
                                      str(keys.private_key), step], capture_output=True, text=True)
                if res.returncode != 0:
                    raise SystemExit(f"{dtype} {step} failed:\n{res.stderr[-3000:]}")
                m = json.loads(res.stdout.strip().splitlines()[-1])
                row[f"{step}_peak_over_start_mb"] = m["peak_mb"] - m["before_mb"]
                row[f"{step}_peak_over_weights"] = row[f"{step}_peak_over_start_mb"] / row["weights_mb"]
            rows[dtype] = row
    for dtype, row in rows.items():
        print(f"{dtype:9s} weights {row['weights_mb']:7.1f} MB | import peak +{row['import_peak_over_start_mb']:7.1f} MB "
              f"({row['import_peak_over_weights']:.2f}x weights) | load peak +{row['load_peak_over_start_mb']:7.1f} MB "
              f"({row['load_peak_over_weights']:.2f}x weights)")
    for step in ("import", "load"):
        print(f"{step}: bf16 / fp32 peak = "
              f"{rows['bfloat16'][f'{step}_peak_over_start_mb'] / rows['float32'][f'{step}_peak_over_start_mb']:.2f}")


if __name__ == "__main__":
    main()
