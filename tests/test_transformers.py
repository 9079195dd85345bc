"""Vision transformers: attention heads and MLP units are cut exactly, the residual stream is pinned.

timm's ViT and DeiT (class token or mean pooling) and the zoo's small ``vit``, random weights: the graph,
extraction against the masked original (with heads dropped, and with a block left with no head), the
same on hypothesis-generated transformers, contribution attribution on real MNIST images, the part's
model file, and its ONNX export.
"""

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mdakit
from mdakit.artifacts import ModelCard, save
from mdakit.attention import NoHeads, SelfAttention, convert_attention
from mdakit.component_masks import LayerMask
from mdakit.errors import MdakitError
from mdakit.graph import trace
from mdakit.surgery import MaskedModel, keep_sets, rebuild
from mdakit.zoo import build_model

pytest.importorskip("timm")
SHAPE = (1, 28, 28)
SMALL = dict(img_size=28, patch_size=4, embed_dim=48, depth=2, num_heads=3)
TIMM = {"vit": ("timm:vit_tiny_patch16_224", SMALL),
        "deit-avg": ("timm:deit_tiny_patch16_224", {**SMALL, "global_pool": "avg"}),
        "zoo": ("vit", dict(width=48, depth=2, heads=3))}


def _model(key: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    arch, kwargs = TIMM[key]
    return build_model(arch, SHAPE, 10, **kwargs).eval()


def _masks(graph, seed: int, drop_heads: dict[str, list[int]] | None = None) -> dict[str, LayerMask]:
    """Random input masks; ``drop_heads``: for attention path -> heads whose every dim the output layer drops."""
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for layer in graph.layers:
        inputs = torch.rand(layer.in_size, generator=g) < 0.6
        for path, heads in (drop_heads or {}).items():
            site = graph.attention[path]
            if layer.name == site.proj:
                inputs[:] = True
                for head in heads:
                    inputs[head * site.head_dim:(head + 1) * site.head_dim] = False
        masks[layer.name] = LayerMask(torch.ones(layer.out_size, layer.in_size, dtype=torch.bool), inputs,
                                      torch.ones(layer.out_size, dtype=torch.bool))
    return masks


def _extract(model, masks, rows):
    graph = trace(model, SHAPE)
    keep = keep_sets(graph, masks, rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return graph, keep, rebuild(model, keep), MaskedModel(graph, keep)


@pytest.mark.parametrize("key", sorted(TIMM))
def test_graph_has_heads_and_mlp_units_and_pins_the_stream(key):
    graph = trace(_model(key), SHAPE)
    assert sorted(graph.attention) == ["net.blocks.0.attn", "net.blocks.1.attn"]
    site = graph.attention["net.blocks.0.attn"]
    assert (site.heads, site.head_dim) == (3, 16)
    qkv, fc1 = graph.layer(site.qkv), graph.layer("net.blocks.0.mlp.fc1")
    pinned = graph.pinned_mask()
    assert pinned[graph.groups(qkv.in_ids)].all()  # the LayerNorm'd residual stream
    assert not pinned[graph.groups(fc1.out_ids)].any()  # MLP units are free
    groups = graph.groups(qkv.out_ids)
    assert len(groups.unique()) == 3  # one group per head: its queries, keys and values
    assert len(set(groups[site.head_rows(1)].tolist())) == 1


@pytest.mark.parametrize("key", sorted(TIMM))
def test_extraction_with_heads_dropped_equals_masked_original(key, mnist_test):
    model = _model(key)
    graph = trace(model, SHAPE)
    masks = _masks(graph, 1, {"net.blocks.0.attn": [0, 2]})
    _, keep, part, masked = _extract(model, masks, [2, 5, 7])
    assert keep.heads == {"net.blocks.0.attn": 1, "net.blocks.1.attn": 3}
    assert part.net.blocks[0].attn.qkv.out_features == 48 and part.net.blocks[0].attn.proj.in_features == 16
    assert part.net.blocks[0].mlp.fc1.out_features < model.net.blocks[0].mlp.fc1.out_features
    images = torch.stack([mnist_test[0][i][0] for i in range(8)])
    with torch.no_grad():
        torch.testing.assert_close(part(images), masked(images), atol=1e-5, rtol=1e-4)
    assert mdakit.model_size(part, SHAPE)["params"] < mdakit.model_size(model, SHAPE)["params"]


def test_a_block_that_loses_every_head_keeps_its_residual_path(mnist_test):
    model = _model("vit")
    graph = trace(model, SHAPE)
    _, keep, part, masked = _extract(model, _masks(graph, 2, {"net.blocks.1.attn": [0, 1, 2]}), [0, 1])
    assert keep.heads["net.blocks.1.attn"] == 0 and isinstance(part.net.blocks[1].attn, NoHeads)
    images = torch.stack([mnist_test[0][i][0] for i in range(8)])
    with torch.no_grad():
        torch.testing.assert_close(part(images), masked(images), atol=1e-5, rtol=1e-4)
    trace(part, SHAPE)  # a part can be taken apart again


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(depth=st.integers(1, 3), heads=st.integers(1, 4), head_dim=st.sampled_from([4, 8]),
       mlp_ratio=st.sampled_from([1.0, 2.0, 3.0]), pool=st.sampled_from(["token", "avg"]),
       qkv_bias=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_extraction_equals_masked_original_on_generated_transformers(depth, heads, head_dim, mlp_ratio, pool,
                                                                     qkv_bias, seed):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    body = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=4, embed_dim=heads * head_dim,
                             depth=depth, num_heads=heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                             global_pool=pool, class_token=pool == "token").eval()
    model = torch.nn.Sequential(body).eval()
    graph = trace(model, (1, 8, 8))
    g = torch.Generator().manual_seed(seed)
    drop = {path: [h for h in range(heads) if torch.rand(1, generator=g).item() < 0.5] for path in graph.attention}
    keep = keep_sets(graph, _masks(graph, seed, drop), [0, 3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        part, masked = rebuild(model, keep), MaskedModel(graph, keep)
    x = torch.rand(3, 1, 8, 8, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(part(x), masked(x), atol=1e-5, rtol=1e-4)
    assert keep.heads == {path: heads - len(drop[path]) for path in graph.attention}


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory, mnist_train):
    """The zoo's small ViT, trained three short epochs on real MNIST images with AdamW, as a model file."""
    train_data, info = mnist_train
    torch.manual_seed(0)
    kwargs = dict(width=48, depth=2, heads=3)
    model = build_model("vit", info.input_shape, info.num_classes, info.mean, info.std, **kwargs)
    mdakit.train(model, train_data, mdakit.TrainConfig(epochs=3, train_subset=4000, batch_size=64, lr=3e-3,
                                                       weight_decay=0.05, optimizer="adamw"), show_progress=False)
    out = tmp_path_factory.mktemp("models") / "vit-mnist"
    save(model, out, ModelCard.for_dataset("vit", info, arch_kwargs=kwargs))
    return out


def test_contribution_parts_of_a_trained_vit_save_load_and_export(vit_dir, mnist_train, tmp_path):
    train_data, _ = mnist_train
    part = mdakit.disassemble(str(vit_dir), train_data, [0, 1], samples=20, latency=False)
    net = part.model.net
    assert [b.mlp.fc1.out_features for b in net.blocks] != [96, 96]  # MLP units were cut
    assert "heads" in part.card.edits[-1] and set(part.card.edits[-1]["heads"]) == {"net.blocks.0.attn",
                                                                                    "net.blocks.1.attn"}
    part.save(tmp_path / "part")
    loaded = mdakit.load(tmp_path / "part")
    x = torch.rand(4, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), part.model(x))
    report = mdakit.export(part, tmp_path / "part.onnx")
    assert report["max_abs_diff"] < 1e-4
    import onnxruntime

    session = onnxruntime.InferenceSession(report["out"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert abs(out - part.model(x).detach().numpy()).max() < 1e-4


def test_parallel_assembly_of_vit_parts_equals_their_outputs_and_padded_refuses(vit_dir, mnist_train, mnist_test):
    train_data, _ = mnist_train
    parts = [mdakit.disassemble(str(vit_dir), train_data, classes, samples=20, latency=False)
             for classes in ([0], [1])]
    assembled = mdakit.assemble(parts, layout="parallel")[0].eval()
    images = torch.stack([mnist_test[0][i][0] for i in range(8)])
    with torch.no_grad():
        torch.testing.assert_close(assembled(images), torch.cat([p.model(images) for p in parts], 1))
    with pytest.raises(MdakitError, match="the padded layout cannot merge node .*use the parallel layout"):
        mdakit.assemble(parts, layout="padded")


def test_unsupported_attention_is_one_clear_error():
    from timm.layers.attention import Attention

    class Gated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = Attention(8, num_heads=2, gated=True)
            self.head = torch.nn.Linear(8, 2)

        def forward(self, x):
            tokens = x.flatten(2).transpose(1, 2)
            return self.head(self.attn(tokens).mean(1))

    with pytest.raises(MdakitError, match=r"unsupported attention Attention \('1.attn'\).*gated"):
        trace(torch.nn.Sequential(torch.nn.Conv2d(1, 8, 2, 2), Gated()), (1, 4, 4))


def _torchvision_vit(seed: int = 0, **kwargs) -> torch.nn.Module:
    from torchvision.models import VisionTransformer

    torch.manual_seed(seed)
    net = VisionTransformer(**{"image_size": 16, "patch_size": 4, "num_layers": 2, "num_heads": 3, "hidden_dim": 48,
                               "mlp_dim": 96, "num_classes": 4, **kwargs}).eval()
    torch.nn.init.normal_(net.heads.head.weight, std=0.5)  # torchvision starts the head at zero
    return net


def test_multihead_attention_converts_exactly_and_unconverted_is_refused_with_the_fix():
    net = _torchvision_vit()
    converted, paths = convert_attention(net)
    assert paths == [f"encoder.layers.encoder_layer_{i}.self_attention" for i in range(2)]
    assert isinstance(converted.get_submodule(paths[0]), SelfAttention)
    assert isinstance(net.get_submodule(paths[0]), torch.nn.MultiheadAttention)  # the user's model is not touched
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), net(x), atol=1e-5, rtol=1e-4)
    with pytest.raises(MdakitError, match="unsupported module MultiheadAttention .*convert_attention"):
        trace(net, (3, 16, 16))


def test_torchvision_vit_extraction_with_heads_dropped_equals_masked_original():
    model, _ = convert_attention(_torchvision_vit(1))
    graph = trace(model, (3, 16, 16))
    paths = sorted(graph.attention)
    keep = keep_sets(graph, _masks(graph, 3, {paths[0]: [1], paths[1]: [0, 1, 2]}), [3, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        part, masked = rebuild(model, keep), MaskedModel(graph, keep)
    assert keep.heads == {paths[0]: 2, paths[1]: 0} and isinstance(part.get_submodule(paths[1]), NoHeads)
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(part(x), masked(x), atol=1e-5, rtol=1e-4)
    trace(part, (3, 16, 16))


def test_a_user_built_torchvision_vit_disassembles_records_the_conversion_and_exports(tmp_path):
    from mdakit.data import ImageTensorDataset

    net = _torchvision_vit(0)
    g = torch.Generator().manual_seed(2)
    images = torch.rand(400, 3, 16, 16, generator=g) * torch.rand(400, 1, 1, 1, generator=g)
    with torch.no_grad():
        labels = net(images).argmax(1)  # self-labelled: equivalence, not accuracy
    counts, classes = torch.bincount(labels, minlength=4).topk(2)
    assert counts.min() >= 20
    classes = classes.tolist()
    data = ImageTensorDataset((images * 255).to(torch.uint8), labels)
    part = mdakit.disassemble(net, data, classes, samples=10, latency=False)
    assert [edit["kind"] for edit in part.card.edits][-2:] == ["attention", "keep_sets"]
    part.save(tmp_path / "part")
    loaded = mdakit.load(tmp_path / "part", into=_torchvision_vit(0))
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), part.model(x))
    assert mdakit.export(part, tmp_path / "part.onnx")["max_abs_diff"] < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["torchvision:vit_b_16", "timm:vit_base_patch16_224", "timm:deit_small_patch16_224"])
def test_full_size_vits_extract_equal_to_the_masked_original_at_224(arch):
    torch.manual_seed(0)
    model, _ = convert_attention(build_model(arch, (3, 224, 224), 10).eval())
    graph = trace(model, (3, 224, 224))
    paths = sorted(graph.attention)
    keep = keep_sets(graph, _masks(graph, 4, {paths[0]: [0, 1], paths[-1]: [2]}), [1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        part, masked = rebuild(model, keep), MaskedModel(graph, keep)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        want = masked(x)
        assert (part(x) - want).abs().max() <= 1e-4 * max(1.0, float(want.abs().max()))


def test_gradient_baseline_cuts_the_same_units(vit_dir, mnist_train):
    train_data, _ = mnist_train
    part = mdakit.disassemble(str(vit_dir), train_data, [0, 1], method="gradient", samples=20, latency=False)
    widths = [b.mlp.fc1.out_features for b in part.model.net.blocks]
    assert widths != [96, 96] and all(w > 0 for w in widths)
    assert set(part.keep.heads) == {"net.blocks.0.attn", "net.blocks.1.attn"}


def test_ood_gate_reads_vit_features_pooled_over_tokens(vit_dir, mnist_train, mnist_test):
    from mdakit.graph.features import with_features

    model = mdakit.load(vit_dir)
    both, layers = with_features(model, SHAPE)
    logits, features = both(torch.zeros(2, *SHAPE))
    assert layers == ["net.patch_embed.proj", "net.blocks.0.mlp.fc1", "net.blocks.0.mlp.fc2", "net.blocks.1.mlp.fc1",
                      "net.blocks.1.mlp.fc2", "net.head"]
    assert [tuple(f.shape) for f in features] == [(2, 48), (2, 96), (2, 48), (2, 96), (2, 48), (2, 48)]
    train_data, _ = mnist_train
    parts = [mdakit.disassemble(str(vit_dir), train_data, classes, samples=20, latency=False)
             for classes in ([0], [1])]
    gated, _ = mdakit.assemble(parts, rescale="ood", data=[train_data, train_data])
    images = torch.stack([mnist_test[0][i][0] for i in range(4)])
    with torch.no_grad():
        out = gated.eval()(images)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(4))  # one log-probability per class
