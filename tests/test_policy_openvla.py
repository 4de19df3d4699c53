"""OpenVLA checkpoint loader: a miniature checkpoint in the published layout (timm ViT names, fused qkv,
HF Llama, norm_stats in config.json) is loaded without remote code and checked against an independent
re-implementation of OpenVLA's forward pass."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from test_policy_vla import single_thread  # noqa: F401  (autouse fixture)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

from wmpo_core.policy.modeling_vla import PolicyLoadError
from wmpo_core.policy.openvla import load_openvla

IMG, PATCH, C_DINO, C_SIG, REG, L_VIT = 28, 14, 64, 64, 4, 3
BASE_VOCAB, PAD_TO = 384, 64
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=256, rope_theta=10000.0)


def _tokenizer():
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=BASE_VOCAB, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=["\u2581"], show_progress=False)
    corpus = ["In: What action should the robot take to pick up the coke can?\nOut:"] * 3 + [
        "the quick brown fox jumps over the lazy dog " * 3, "abcdefghijklmnopqrstuvwxyz 0123456789 ?:\n"]
    tok.train_from_iterator(corpus, trainer=trainer)
    n = tok.get_vocab_size()
    tok.add_tokens([f"x{i}q" for i in range(BASE_VOCAB - n)])  # fill the base vocabulary exactly
    tok.model = models.BPE(vocab={**tok.get_vocab()}, merges=[], unk_token="<unk>")
    tok.add_special_tokens(["<PAD>"])
    assert tok.get_vocab_size(with_added_tokens=False) == BASE_VOCAB and tok.token_to_id("<PAD>") == BASE_VOCAB
    return tok


def _vit(prefix, c, registers, g):
    t = {prefix + "patch_embed.proj.weight": torch.randn(c, 3, PATCH, PATCH, generator=g) * 0.05,
         prefix + "patch_embed.proj.bias": torch.randn(c, generator=g) * 0.05,
         prefix + "pos_embed": torch.randn(1, (IMG // PATCH) ** 2, c, generator=g) * 0.1,
         prefix + "norm.weight": torch.ones(c), prefix + "norm.bias": torch.zeros(c)}
    if registers:
        t[prefix + "cls_token"] = torch.randn(1, 1, c, generator=g)
        t[prefix + "reg_token"] = torch.randn(1, REG, c, generator=g)
    for i in range(L_VIT):
        b = f"{prefix}blocks.{i}."
        for name, shape in (("attn.qkv", (3 * c, c)), ("attn.proj", (c, c)), ("mlp.fc1", (4 * c, c)), ("mlp.fc2", (c, 4 * c))):
            t[b + name + ".weight"] = torch.randn(*shape, generator=g) / shape[1] ** 0.5
            t[b + name + ".bias"] = torch.randn(shape[0], generator=g) * 0.05
        for name in ("norm1", "norm2"):
            t[b + name + ".weight"] = 1 + 0.1 * torch.randn(c, generator=g)
            t[b + name + ".bias"] = 0.1 * torch.randn(c, generator=g)
        if registers:
            t[b + "ls1.scale_factor"] = 0.5 + 0.1 * torch.randn(c, generator=g)
            t[b + "ls2.scale_factor"] = 0.5 + 0.1 * torch.randn(c, generator=g)
    if not registers:  # SigLIP's attention-pool head ships in the checkpoint but OpenVLA never uses it
        t[prefix + "attn_pool.latent"] = torch.randn(1, 1, c, generator=g)
    return t


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("openvla")
    g = torch.Generator().manual_seed(0)
    tensors = {**_vit("vision_backbone.featurizer.", C_DINO, True, g), **_vit("vision_backbone.fused_featurizer.", C_SIG, False, g)}
    vd, h = C_DINO + C_SIG, TEXT["hidden_size"]
    for name, shape in (("fc1", (4 * vd, vd)), ("fc2", (h, 4 * vd)), ("fc3", (h, h))):
        tensors[f"projector.{name}.weight"] = torch.randn(*shape, generator=g) / shape[1] ** 0.5
        tensors[f"projector.{name}.bias"] = torch.randn(shape[0], generator=g) * 0.05
    torch.manual_seed(1)
    lm = LlamaForCausalLM(LlamaConfig(**TEXT, vocab_size=BASE_VOCAB + PAD_TO, tie_word_embeddings=False))
    tensors.update({f"language_model.{k}": v for k, v in lm.state_dict().items()})
    half = {k: v for i, (k, v) in enumerate(sorted(tensors.items())) if i % 2}
    save_file(half, str(d / "model-00001-of-00002.safetensors"))  # sharded like the published 7B
    save_file({k: v for k, v in tensors.items() if k not in half}, str(d / "model-00002-of-00002.safetensors"))
    q01 = [-0.03, -0.02, -0.04, -0.1, -0.1, -0.2, 0.0]
    q99 = [0.03, 0.05, 0.04, 0.1, 0.12, 0.2, 1.0]
    stats = {"bridge_orig": {"action": {"mean": [0] * 7, "std": [1] * 7, "max": q99, "min": q01, "q01": q01,
                                        "q99": q99, "mask": [True] * 6 + [False]},
                             "num_transitions": 10, "num_trajectories": 1}}
    (d / "config.json").write_text(json.dumps({
        "model_type": "openvla", "vision_backbone_id": "dinosiglip-vit-so-224px", "llm_backbone_id": "llama2-7b-pure",
        "use_fused_vision_backbone": True, "image_sizes": [IMG, IMG], "n_action_bins": 256,
        "text_config": TEXT, "norm_stats": stats}))
    (d / "tokenizer.json").write_text(_tokenizer().to_str())
    return d, tensors


def _timm_vit_penultimate(t, prefix, pixels, registers, act):
    """Independent re-implementation of timm's ViT `get_intermediate_layers(n={L-2})` (no final norm)."""
    x = F.conv2d(pixels, t[prefix + "patch_embed.proj.weight"], t[prefix + "patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2) + t[prefix + "pos_embed"]
    if registers:
        b = x.shape[0]
        x = torch.cat([t[prefix + "cls_token"].expand(b, -1, -1), t[prefix + "reg_token"].expand(b, -1, -1), x], 1)
    c = x.shape[-1]
    heads = max(1, c // 64)
    for i in range(L_VIT - 1):
        p = f"{prefix}blocks.{i}."
        h = F.layer_norm(x, (c,), t[p + "norm1.weight"], t[p + "norm1.bias"], 1e-6)
        qkv = (h @ t[p + "attn.qkv.weight"].T + t[p + "attn.qkv.bias"]).view(*h.shape[:2], 3, heads, c // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) * (c // heads) ** -0.5, -1) @ v
        a = a.transpose(1, 2).reshape(h.shape) @ t[p + "attn.proj.weight"].T + t[p + "attn.proj.bias"]
        x = x + (t[p + "ls1.scale_factor"] * a if registers else a)
        h = F.layer_norm(x, (c,), t[p + "norm2.weight"], t[p + "norm2.bias"], 1e-6)
        m = act(h @ t[p + "mlp.fc1.weight"].T + t[p + "mlp.fc1.bias"]) @ t[p + "mlp.fc2.weight"].T + t[p + "mlp.fc2.bias"]
        x = x + (t[p + "ls2.scale_factor"] * m if registers else m)
    return x[:, 1 + REG:] if registers else x


def test_loaded_openvla_matches_reference_forward(checkpoint):
    d, t = checkpoint
    policy = load_openvla(d)
    assert policy.config.chunk_size == 1 and policy.config.decoding == "autoregressive"
    assert policy.action_tokenizer.token_begin == BASE_VOCAB - 256 and policy.config.lm_vocab_size == BASE_VOCAB + PAD_TO
    image = np.random.default_rng(0).integers(0, 256, (IMG, IMG, 3), dtype=np.uint8)
    instruction = "pick up the coke can"
    batch = policy.prepare_batch([{"agentview": image}], [instruction])

    # reference: OpenVLA's pipeline written out from the raw checkpoint tensors
    pix = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    dino_in = (pix - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    feats = torch.cat([
        _timm_vit_penultimate(t, "vision_backbone.featurizer.", dino_in, True, F.gelu),
        _timm_vit_penultimate(t, "vision_backbone.fused_featurizer.", pix * 2 - 1, False,
                              lambda x: F.gelu(x, approximate="tanh")),
    ], -1)
    proj = F.gelu(feats @ t["projector.fc1.weight"].T + t["projector.fc1.bias"])
    proj = F.gelu(proj @ t["projector.fc2.weight"].T + t["projector.fc2.bias"])
    proj = proj @ t["projector.fc3.weight"].T + t["projector.fc3.bias"]
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    ids = tok.encode(f"In: What action should the robot take to {instruction}?\nOut:", add_special_tokens=False).ids
    ids = [tok.token_to_id("<s>")] + ids + [tok.token_to_id("\u2581")]
    lm = LlamaForCausalLM(LlamaConfig(**TEXT, vocab_size=BASE_VOCAB + PAD_TO, tie_word_embeddings=False))
    lm.load_state_dict({k[len("language_model."):]: v for k, v in t.items() if k.startswith("language_model.")})
    emb = lm.get_input_embeddings()(torch.tensor([ids]))
    with torch.no_grad():
        logits = lm(inputs_embeds=torch.cat([emb[:, :1], proj, emb[:, 1:]], 1)).logits[0, -1]
    ref_logp = torch.log_softmax(logits[BASE_VOCAB - 256 : BASE_VOCAB], -1)

    with torch.no_grad():
        ours = policy.action_logits(batch, torch.full((1, 7), BASE_VOCAB - 1), decoding="autoregressive")[0, 0]
    torch.testing.assert_close(torch.log_softmax(ours, -1), ref_logp, atol=2e-4, rtol=0)

    # OpenVLA's action decoding: token -> bin center -> bounds_q99 unnormalize (gripper passed through)
    chunk = policy.predict_chunk({"agentview": image}, instruction)
    assert chunk.shape == (1, 7)
    first = int(ref_logp.argmax()) + BASE_VOCAB - 256
    centers = (np.linspace(-1, 1, 256)[:-1] + np.linspace(-1, 1, 256)[1:]) / 2
    normalized = centers[np.clip(BASE_VOCAB - first - 1, 0, 254)]
    assert chunk[0, 0] == pytest.approx(0.5 * (normalized + 1) * 0.06 - 0.03, abs=1e-5)


def test_loader_errors_name_the_problem(checkpoint, tmp_path):
    d, _ = checkpoint
    with pytest.raises(ValueError, match="unknown unnorm key 'nope'"):
        load_openvla(d, unnorm_key="nope")
    (tmp_path / "config.json").write_text((d / "config.json").read_text())
    (tmp_path / "tokenizer.json").write_text((d / "tokenizer.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04.")
    with pytest.raises(PolicyLoadError, match=r"no \*.safetensors weights .*pytorch_model.bin"):
        load_openvla(tmp_path)


def test_predict_command_reads_openvla_checkpoint(checkpoint, tmp_path, capsys):
    from PIL import Image

    from wmpo_core.cli import main as wmpo

    d, _ = checkpoint
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(tmp_path / "f.png")
    rc = wmpo(["predict", "--policy", str(d), "--image", str(tmp_path / "f.png"), "--instruction", "pick up the coke can",
               "--unnorm-key", "bridge_orig", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and np.asarray(out["chunk"]).shape == (1, 7)
    assert -0.03 <= out["chunk"][0][0] <= 0.03  # inside bridge_orig's q01..q99 for ee_dx


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_imagination_samples_openvla_token_by_token_with_the_updates_log_probs(checkpoint, dtype):
    """OpenVLA decodes autoregressively; imagination must sample it that way (not through parallel action slots
    it was never trained on) and record the log-probs GRPO's update recomputes: ratio exactly 1 at the first
    step, in bf16 too. Each trajectory draws its own noise: a row samples the same alone as in a batch."""
    from wmpo_core.policy.placement import place_policy
    from wmpo_core.rl.trainer_imagination import PolicyLogProbs
    from wmpo_core.world_model.imagine import VLAImaginationPolicy

    d, _ = checkpoint
    policy = place_policy(load_openvla(d), "cpu", dtype).eval()
    adapter = VLAImaginationPolicy(policy, "agentview", temperature=1.6)
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    chunk = adapter.sample_chunk(frames, "pick up the coke can", gens)
    assert chunk.tokens.shape == (3, 7) and chunk.actions.shape == (3, 1, 7)

    batch = policy.prepare_batch([{"agentview": f} for f in frames], ["pick up the coke can"] * 3)
    # the first token of each row by hand: Gumbel-max with that row's generator's first uniforms
    with torch.no_grad():
        first = policy.action_logits(batch, chunk.tokens, decoding="autoregressive")[:, 0].float()
    uniform = torch.stack([torch.rand(first.shape[1:], generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3)])
    gumbel = -torch.log(-torch.log(uniform))
    by_hand = policy.action_tokenizer.bins_to_tokens((torch.log_softmax(first / 1.6, -1) + gumbel).argmax(-1))
    assert torch.equal(chunk.tokens[:, 0], by_hand) and len(set(chunk.tokens.flatten().tolist())) > 3
    policy.train()  # the update's mode
    with torch.no_grad():
        update_logp, _ = PolicyLogProbs(policy)(batch, chunk.tokens, 1.6)
    assert torch.equal(update_logp, chunk.log_probs)
    # what the same noise gives token by token, one row at a time (the tokens feed back into the prompt)
    policy.eval()
    alone = adapter.sample_chunk(frames[1:2], "pick up the coke can", [torch.Generator().manual_seed(2)])
    assert torch.equal(alone.tokens[0], chunk.tokens[1])
    teacher, _ = policy.sample(batch.index(slice(1, 2)), 1.6, generator=[torch.Generator().manual_seed(2)])
    assert torch.equal(teacher[0], chunk.tokens[1])
