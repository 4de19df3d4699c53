"""OpenVLA / OpenVLA-OFT import: miniature checkpoints in the published layouts (sharded safetensors,
tokenizer.json, dataset_statistics.json, OFT heads as torch ``*.pt`` files) go through
`wmpo import-openvla` -> `wmpo verify` -> `wmpo predict`, and the OFT prediction is checked against a
reference forward pass written here: timm-style vision towers, the projector and a Llama with full
bidirectional attention (OFT's patched transformers), read at the official shifted positions."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from test_policy_openvla import (
    BASE_VOCAB,
    IMG,
    PATCH,
    TEXT,
    _timm_vit_penultimate,
    checkpoint,  # noqa: F401  (module fixture: the OpenVLA miniature)
)
from test_policy_vla import single_thread  # noqa: F401  (autouse fixture)
from tokenizers import Tokenizer

from wmpo_core.cli import main as wmpo
from wmpo_core.policy.modeling_vla import PolicyLoadError
from wmpo_core.policy.openvla import load_openvla, read_head_tensors

KEY = "libero_spatial_no_noops"  # OFT's constants give LIBERO's chunk of 8
K, D, N_BINS = 8, 7, 256
PROPRIO = 8
Q01 = [-0.9, -0.8, -0.9, -0.1, -0.2, -0.3, -1.0]
Q99 = [0.9, 0.85, 0.95, 0.12, 0.2, 0.3, 1.0]
INSTRUCTION = "pick up the coke can"


def _copy_openvla_layout(src, dst, layer_gain=20.0):
    """The OpenVLA miniature's files with dataset_statistics.json for LIBERO. The Llama layers' weights are
    scaled up: at the random init's scale the K x D zeroed positions all decode to one token, and the
    comparison with the reference would not see a wrong position. At this scale several bins appear, and
    a few full-vocabulary argmaxes fall outside the action range (the official clip path)."""
    from safetensors.torch import load_file, save_file

    for f in sorted(src.glob("*.safetensors")):
        t = load_file(str(f))
        for k in list(t):
            if k.startswith("language_model.model.layers.") and (".self_attn." in k or ".mlp." in k):
                t[k] = t[k] * layer_gain
        save_file(t, str(dst / f.name))
    config = json.loads((src / "config.json").read_text())
    config.pop("norm_stats")  # OFT reads dataset_statistics.json
    (dst / "config.json").write_text(json.dumps(config))
    (dst / "tokenizer.json").write_text((src / "tokenizer.json").read_text())
    stats = {KEY: {"action": {"mean": [0] * D, "std": [1] * D, "max": Q99, "min": Q01, "q01": Q01, "q99": Q99,
                              "mask": [True] * 6 + [False]},
                   "proprio": {"mean": [0] * PROPRIO, "std": [1] * PROPRIO, "max": [1] * PROPRIO,
                               "min": [-1] * PROPRIO, "q01": [-1] * PROPRIO, "q99": [1] * PROPRIO},
                   "num_transitions": 10, "num_trajectories": 1}}
    (dst / "dataset_statistics.json").write_text(json.dumps(stats))


def _all_tensors(d):
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


def _heads(g):
    h = TEXT["hidden_size"]
    proprio = {"module.fc1.weight": torch.randn(h, PROPRIO, generator=g) * 0.3, "module.fc1.bias": torch.randn(h, generator=g) * 0.1,
               "module.fc2.weight": torch.randn(h, h, generator=g) / h ** 0.5, "module.fc2.bias": torch.randn(h, generator=g) * 0.1}
    hid = 48
    head = {"model.layer_norm1.weight": 1 + 0.1 * torch.randn(D * h, generator=g), "model.layer_norm1.bias": 0.1 * torch.randn(D * h, generator=g),
            "model.fc1.weight": torch.randn(hid, D * h, generator=g) / (D * h) ** 0.5, "model.fc1.bias": 0.1 * torch.randn(hid, generator=g),
            "model.layer_norm2.weight": 1 + 0.1 * torch.randn(hid, generator=g), "model.layer_norm2.bias": 0.1 * torch.randn(hid, generator=g),
            "model.fc2.weight": torch.randn(D, hid, generator=g) / hid ** 0.5, "model.fc2.bias": 0.1 * torch.randn(D, generator=g)}
    for i in range(2):
        b = f"model.mlp_resnet_blocks.{i}.ffn."
        head.update({b + "0.weight": 1 + 0.1 * torch.randn(hid, generator=g), b + "0.bias": 0.1 * torch.randn(hid, generator=g),
                     b + "1.weight": torch.randn(hid, hid, generator=g) / hid ** 0.5, b + "1.bias": 0.1 * torch.randn(hid, generator=g)})
    return proprio, head


@pytest.fixture(scope="module")
def oft_checkpoints(checkpoint, tmp_path_factory):  # noqa: F811
    src, _ = checkpoint
    discrete = tmp_path_factory.mktemp("oft_discrete")
    _copy_openvla_layout(src, discrete)
    with_heads = tmp_path_factory.mktemp("oft_heads")
    _copy_openvla_layout(src, with_heads)
    proprio, head = _heads(torch.Generator().manual_seed(5))
    torch.save({k: v.to(torch.bfloat16) for k, v in proprio.items()}, with_heads / "proprio_projector--150000_checkpoint.pt")
    torch.save(head, with_heads / "action_head--150000_checkpoint.pt")
    return discrete, with_heads


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from wmpo_core.registry.signing import generate_keypair

    return generate_keypair(tmp_path_factory.mktemp("keys"))


def _llama_bidirectional(t, emb):
    """Llama-2 forward with no attention mask at all (OFT's patched SDPA attention), from the raw tensors."""
    hid, nh, eps = TEXT["hidden_size"], TEXT["num_attention_heads"], TEXT["rms_norm_eps"]
    hd, length = hid // nh, emb.shape[1]
    inv = 1.0 / (TEXT["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.arange(length).float()[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)

    def rope(x):
        return x * cos + torch.cat([-x[..., hd // 2:], x[..., : hd // 2]], -1) * sin

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    h = emb
    for i in range(TEXT["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        x = rms(h, t[p + "input_layernorm.weight"])
        q, k, v = ((x @ t[p + f"self_attn.{n}_proj.weight"].T).view(1, length, nh, hd).transpose(1, 2) for n in "qkv")
        a = torch.softmax(rope(q) @ rope(k).transpose(-1, -2) / hd ** 0.5, -1) @ v
        h = h + a.transpose(1, 2).reshape(1, length, hid) @ t[p + "self_attn.o_proj.weight"].T
        x = rms(h, t[p + "post_attention_layernorm.weight"])
        h = h + (F.silu(x @ t[p + "mlp.gate_proj.weight"].T) * (x @ t[p + "mlp.up_proj.weight"].T)) @ t[p + "mlp.down_proj.weight"].T
    return rms(h, t["language_model.model.norm.weight"])


def _reference_oft(d, image, proprio=None, head=None, proprio_proj=None):
    """The official OFT predict_action on the miniature: returns (action logits (K*D, vocab), hidden, actions)."""
    t = _all_tensors(d)
    pix = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    feats = torch.cat([
        _timm_vit_penultimate(t, "vision_backbone.featurizer.", (pix - mean) / std, True, F.gelu),
        _timm_vit_penultimate(t, "vision_backbone.fused_featurizer.", pix * 2 - 1, False, lambda x: F.gelu(x, approximate="tanh")),
    ], -1)
    proj = F.gelu(feats @ t["projector.fc1.weight"].T + t["projector.fc1.bias"])
    proj = F.gelu(proj @ t["projector.fc2.weight"].T + t["projector.fc2.bias"])
    proj = proj @ t["projector.fc3.weight"].T + t["projector.fc3.bias"]
    if proprio is not None:  # q01/q99 of the miniature's proprio are -1/1: normalized == raw (clipped)
        pp = torch.tensor(np.clip(proprio, -1, 1), dtype=torch.float32)[None]
        pp = F.gelu(pp @ proprio_proj["fc1.weight"].T + proprio_proj["fc1.bias"]) @ proprio_proj["fc2.weight"].T + proprio_proj["fc2.bias"]
        proj = torch.cat([proj, pp[:, None]], 1)
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    ids = tok.encode(f"In: What action should the robot take to {INSTRUCTION}?\nOut:", add_special_tokens=False).ids
    ids = [tok.token_to_id("<s>")] + ids + [tok.token_to_id("\u2581")]
    embed = t["language_model.model.embed_tokens.weight"]
    seq = torch.cat([embed[ids[:1]][None], proj, embed[ids[1:]][None], torch.zeros(1, K * D, embed.shape[1]),
                     embed[[tok.token_to_id("</s>")]][None]], 1)
    hidden = _llama_bidirectional(t, seq)[0]
    start = proj.shape[1] + len(ids) - 1  # NUM_PATCHES + NUM_PROMPT_TOKENS of the official slice
    action_hidden = hidden[start : start + K * D]
    logits = action_hidden @ t["language_model.lm_head.weight"].T
    centers = (np.linspace(-1, 1, N_BINS)[:-1] + np.linspace(-1, 1, N_BINS)[1:]) / 2
    if head is None:
        discretized = BASE_VOCAB - logits.argmax(-1).numpy()
        normalized = centers[np.clip(discretized - 1, 0, centers.shape[0] - 1)].reshape(K, D)
    else:
        x = action_hidden.reshape(K, -1)
        x = F.relu(F.layer_norm(x, x.shape[-1:], head["model.layer_norm1.weight"], head["model.layer_norm1.bias"])
                   @ head["model.fc1.weight"].T + head["model.fc1.bias"])
        for i in range(2):
            b = f"model.mlp_resnet_blocks.{i}.ffn."
            y = F.layer_norm(x, x.shape[-1:], head[b + "0.weight"], head[b + "0.bias"])
            x = x + F.relu(y @ head[b + "1.weight"].T + head[b + "1.bias"])
        x = F.layer_norm(x, x.shape[-1:], head["model.layer_norm2.weight"], head["model.layer_norm2.bias"])
        normalized = (x @ head["model.fc2.weight"].T + head["model.fc2.bias"]).numpy()
    lo, hi, mask = np.array(Q01), np.array(Q99), np.array([True] * 6 + [False])
    actions = np.where(mask, 0.5 * (normalized + 1) * (hi - lo + 1e-8) + lo, normalized)
    return logits, actions


def _png(tmp_path, seed=0):
    from PIL import Image

    image = np.random.default_rng(seed).integers(0, 256, (IMG, IMG, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "f.png")
    return image, tmp_path / "f.png"


def test_oft_import_verify_predict_matches_reference(oft_checkpoints, keys, tmp_path, capsys):
    d, _ = oft_checkpoints
    pkg = tmp_path / "pkg"
    # a discrete-token OFT checkpoint has no *.pt heads and nothing in config.json that tells it from OpenVLA
    assert wmpo(["import-openvla", str(d), "--out", str(pkg), "--key", str(keys.private_key), "--variant", "oft"]) == 0
    out = capsys.readouterr().out
    assert "decoding oft, chunk 8 x 7" in out and "LIBERO default" in out
    assert wmpo(["verify", str(pkg), "--public-key", str(keys.public_key)]) == 0
    capsys.readouterr()
    # the package carries the checkpoint's own tokenizer and dataset_statistics.json
    assert json.loads((pkg / "tokenizer.json").read_text()) == json.loads((d / "tokenizer.json").read_text())
    assert json.loads((pkg / "norm_stats.json").read_text())[KEY]["action"]["q99"] == pytest.approx(Q99)

    image, png = _png(tmp_path)
    assert wmpo(["predict", "--policy", str(pkg), "--image", str(png), "--instruction", INSTRUCTION, "--json"]) == 0
    chunk = np.asarray(json.loads(capsys.readouterr().out)["chunk"])
    logits, expected = _reference_oft(d, image)
    assert chunk.shape == (K, D)
    np.testing.assert_allclose(chunk, expected, atol=1e-5)
    ids = logits.argmax(-1)
    assert len(set(ids.tolist())) > 1  # the positions decode to different tokens: a shifted read would show

    # per-token log-probs over the 256 action bins, as GRPO / DPO use them
    from wmpo_core.policy.loading import load_policy

    policy = load_policy(pkg)
    batch = policy.prepare_batch([{"agentview": image}], [INSTRUCTION])
    tokens, logp = policy.sample(batch, temperature=1.6, generator=torch.Generator().manual_seed(0))
    ref_logp = torch.log_softmax(logits[:, BASE_VOCAB - N_BINS : BASE_VOCAB] / 1.6, -1)
    ref_logp = ref_logp.gather(-1, (tokens[0] - (BASE_VOCAB - N_BINS))[:, None])[:, 0]
    torch.testing.assert_close(logp[0], ref_logp, atol=2e-4, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(policy.log_prob(batch, tokens, temperature=1.6), logp, atol=1e-5, rtol=0)
    loss = -policy.log_prob(batch, tokens).sum()
    loss.backward()  # the log-probs are differentiable down to the vision towers
    assert policy.vision.dino.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0


def test_oft_heads_imported_from_pt_with_proprio_and_l1_head(oft_checkpoints, keys, tmp_path, capsys):
    _, d = oft_checkpoints
    pkg = tmp_path / "pkg"
    assert wmpo(["import-openvla", str(d), "--out", str(pkg), "--key", str(keys.private_key), "--dtype", "float32"]) == 0
    assert "proprio 8, L1-regression head" in capsys.readouterr().out
    assert not list(pkg.glob("*.pt"))  # converted to safetensors
    with safe_open(str(pkg / "model.safetensors"), framework="pt") as f:
        assert "action_head.model.fc2.weight" in f.keys() and "proprio_proj.fc1.weight" in f.keys()
    assert wmpo(["verify", str(pkg), "--public-key", str(keys.public_key)]) == 0
    capsys.readouterr()
    image, png = _png(tmp_path, seed=3)
    proprio = np.linspace(-0.5, 1.5, PROPRIO)
    assert wmpo(["predict", "--policy", str(pkg), "--image", str(png), "--instruction", INSTRUCTION,
                 "--proprio=" + ",".join(str(x) for x in proprio), "--json"]) == 0
    chunk = np.asarray(json.loads(capsys.readouterr().out)["chunk"])
    proprio_t = {k.removeprefix("module."): v.float() for k, v in torch.load(d / "proprio_projector--150000_checkpoint.pt").items()}
    head = torch.load(d / "action_head--150000_checkpoint.pt")
    _, expected = _reference_oft(d, image, proprio, head, proprio_t)
    np.testing.assert_allclose(chunk, expected, atol=1e-4)


class _NotATensor:
    pass


def test_pt_heads_refused_unless_tensors_only(tmp_path):
    good = tmp_path / "a.pt"
    torch.save({"module.fc1.weight": torch.ones(2, 2)}, good)
    assert list(read_head_tensors(good)) == ["fc1.weight"]
    extra = tmp_path / "b.pt"
    torch.save({"fc1.weight": torch.ones(2), "step": 7}, extra)
    with pytest.raises(PolicyLoadError, match=r"b\.pt: entry 'step' holds a int, not a tensor"):
        read_head_tensors(extra)
    code = tmp_path / "c.pt"
    torch.save({"fc1.weight": _NotATensor()}, code)  # a class reference: only a full unpickle would build it
    with pytest.raises(PolicyLoadError, match=r"c\.pt: refused by torch's restricted loader \(weights_only=True\)"):
        read_head_tensors(code)


def test_oft_checkpoint_with_bad_head_is_refused_by_import(oft_checkpoints, keys, tmp_path, capsys):
    import shutil

    _, d = oft_checkpoints
    bad = tmp_path / "ckpt"
    shutil.copytree(d, bad)
    torch.save({"fc1.weight": _NotATensor()}, bad / "proprio_projector--150000_checkpoint.pt")
    assert wmpo(["import-openvla", str(bad), "--out", str(tmp_path / "pkg"), "--key", str(keys.private_key)]) == 2
    err = capsys.readouterr().err
    assert "proprio_projector--150000_checkpoint.pt: refused by torch's restricted loader" in err
    assert not (tmp_path / "pkg").exists()


def test_openvla_import_keeps_dtype_and_passes_its_own_shape_check(checkpoint, keys, tmp_path, capsys):  # noqa: F811
    from wmpo_core.policy.loading import load_policy
    from wmpo_core.registry.package import save_package, verify_package_contents

    d, _ = checkpoint
    # the former bug: a package saved from load_openvla failed its own check ("tokenizer lacks '<PAD>'")
    saved = save_package(load_openvla(d), tmp_path / "plain")
    verify_package_contents(saved)

    pkg = tmp_path / "bf16"
    assert wmpo(["import-openvla", str(d), "--out", str(pkg), "--key", str(keys.private_key), "--dtype", "bfloat16"]) == 0
    assert "decoding autoregressive, chunk 1 x 7" in capsys.readouterr().out
    assert wmpo(["verify", str(pkg), "--public-key", str(keys.public_key)]) == 0
    with safe_open(str(pkg / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    policy = load_policy(pkg)
    assert {p.dtype for p in policy.parameters()} == {torch.bfloat16}  # loaded as stored, not widened to fp32
    image = np.random.default_rng(1).integers(0, 256, (IMG, IMG, 3), dtype=np.uint8)
    chunk = policy.predict_chunk({"agentview": image}, INSTRUCTION)
    assert chunk.shape == (1, 7) and np.all(np.isfinite(chunk))
    assert PATCH == 14  # the miniature's layout (timm patch 14) is the published one


def test_predict_device_and_dtype_settings(oft_checkpoints, keys, tmp_path, capsys):
    import torch.cuda

    d, _ = oft_checkpoints
    pkg = tmp_path / "pkg"
    assert wmpo(["import-openvla", str(d), "--out", str(pkg), "--key", str(keys.private_key), "--variant", "oft"]) == 0
    image, png = _png(tmp_path)
    capsys.readouterr()
    base = ["predict", "--policy", str(pkg), "--image", str(png), "--instruction", INSTRUCTION, "--json"]
    assert wmpo(base + ["--device", "cpu", "--dtype", "bfloat16"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"] == "cpu" and out["dtype"] == "bfloat16" and np.all(np.isfinite(out["chunk"]))
    assert wmpo(base + ["--device", "auto"]) == 0
    assert json.loads(capsys.readouterr().out)["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: an error naming it, not a crash
    assert wmpo(base + ["--device", missing]) == 2
    assert f"device '{missing}': this machine has {torch.cuda.device_count()} CUDA device(s)" in capsys.readouterr().err
    assert wmpo(base + ["--device", "tpu"]) == 2
    assert "expected auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_train_policy_init_fine_tunes_an_imported_package(oft_checkpoints, keys, tmp_path, capsys):
    from wmpo_core.policy.loading import load_package
    from wmpo_core.registry.package import verify_package_contents

    pkg, episodes = bf16_package_and_bags(oft_checkpoints[0], keys, tmp_path)
    (tmp_path / "tc.json").write_text(json.dumps({"val_fraction": 0.0, "warmup_steps": 1, "log_every": 1, "lr": 1e-3}))
    capsys.readouterr()
    assert wmpo(["train-policy", "--episodes", str(episodes), "--out", str(tmp_path / "run"), "--init", str(pkg),
                 "--train-config", str(tmp_path / "tc.json"), "--steps", "2", "--batch-size", "2", "--save-every", "2",
                 "--no-progress"]) == 0
    tuned = Path(capsys.readouterr().out.strip().splitlines()[-1])
    manifest = verify_package_contents(tuned)
    base, new = load_package(pkg), load_package(tuned)
    assert manifest["parent"] == base.version  # the imported package is the parent
    assert new.config == base.config and new.config.decoding == "oft" and new.config.chunk_size == K
    assert json.loads((tuned / "tokenizer.json").read_text()) == json.loads((pkg / "tokenizer.json").read_text())
    assert json.loads((tuned / "norm_stats.json").read_text()) == json.loads((pkg / "norm_stats.json").read_text())
    with safe_open(str(tuned / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # trained and saved in its dtype
    before, after = base.state_dict(), new.state_dict()
    assert not torch.equal(before["language_model.model.layers.0.mlp.up_proj.weight"],
                           after["language_model.model.layers.0.mlp.up_proj.weight"])
    assert wmpo(["train-policy", "--episodes", str(episodes), "--out", str(tmp_path / "run2"), "--init", str(pkg),
                 "--decoding", "parallel"]) == 2
    assert "--init keeps the package's own config" in capsys.readouterr().err


def bf16_package_and_bags(checkpoint_dir, keys, tmp_path):
    """The OFT miniature imported as a signed bf16 package (tmp_path/pkg) and 3 episode bags (tmp_path/bags)."""
    pkg, episodes = tmp_path / "pkg", tmp_path / "bags"
    assert wmpo(["import-openvla", str(checkpoint_dir), "--out", str(pkg), "--key", str(keys.private_key),
                 "--variant", "oft", "--dtype", "bfloat16"]) == 0
    _write_bags(episodes)
    return pkg, episodes


def _write_bags(root):
    from test_dataset_episodes import write_episode_bag

    rng = np.random.default_rng(0)
    for i in range(3):
        n = 10 + i
        actions = rng.uniform(-0.5, 0.5, (n, 7))
        actions[:, 6] = np.where(np.arange(n) > n // 2, 1.0, -1.0)
        write_episode_bag(root, f"ep_{i}", {"agentview": rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)},
                          actions, rng.normal(size=(n, 9)), success=True)


def test_loaded_weights_do_not_follow_later_changes_of_the_file(oft_checkpoints, keys, tmp_path):
    from wmpo_core.policy.loading import load_package

    d, _ = oft_checkpoints
    pkg = tmp_path / "pkg"
    assert wmpo(["import-openvla", str(d), "--out", str(pkg), "--key", str(keys.private_key), "--variant", "oft",
                 "--dtype", "bfloat16"]) == 0
    policy = load_package(pkg)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    size = (pkg / "model.safetensors").stat().st_size
    with open(pkg / "model.safetensors", "r+b") as f:  # a verified package rewritten in place after loading
        f.seek(size // 2)
        f.write(b"\x7f" * (size - size // 2))
    after = policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
