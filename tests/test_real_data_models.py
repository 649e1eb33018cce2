"""real_data.models / runtime: official key compatibility, the features/head contract, safe loading, Grad-CAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from real_data.device import resolve_device
from real_data.models import ARCHS, PreActResNet18, WideResNet, build_arch, load_weights
from real_data.runtime import model_from_checkpoint, read_checkpoint
from real_data.saliency import grad_cam
from synthmodel.attribution import attribution


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,), f"{prefix}.running_mean": (channels,),
            f"{prefix}.running_var": (channels,), f"{prefix}.num_batches_tracked": ()}


def official_preact_resnet18_keys(n_classes: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official PreActResNet-18, built from the architecture's definition.

    Stem ``conv1`` (64, 3x3); stages ``layer1..4`` of two pre-activation blocks with 64/128/256/512
    channels (stride 2 at the start of stages 2-4), each block ``bn1`` (over its input), ``conv1``
    (3x3), ``bn2``, ``conv2`` (3x3) and, where the shape changes, a 1x1 projection ``shortcut.0``
    (no bias: convolutions are followed by batch norm); final ``bn`` (512) and ``linear`` (K x 512).
    """
    keys = {"conv1.weight": (64, 3, 3, 3)}
    in_planes = 64
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"layer{stage}.{block}"
            keys.update(_bn(f"{p}.bn1", in_planes))
            keys[f"{p}.conv1.weight"] = (width, in_planes, 3, 3)
            keys.update(_bn(f"{p}.bn2", width))
            keys[f"{p}.conv2.weight"] = (width, width, 3, 3)
            if in_planes != width:
                keys[f"{p}.shortcut.0.weight"] = (width, in_planes, 1, 1)
            in_planes = width
    keys.update(_bn("bn", 512))
    keys.update({"linear.weight": (n_classes, 512), "linear.bias": (n_classes,)})
    return keys


def test_preact_resnet18_has_the_official_keys_and_shapes():
    for n_classes in (10, 100):
        ours = {k: tuple(v.shape) for k, v in PreActResNet18(n_classes).state_dict().items()}
        assert ours == official_preact_resnet18_keys(n_classes)


def test_official_style_checkpoint_loads_unchanged_also_from_dataparallel(tmp_path):
    from real_data.data import CIFAR10_MEAN, CIFAR10_STD, load_dataset
    from real_data.fixtures import write_cifar10

    data = load_dataset(f"cifar10:{write_cifar10(tmp_path / 'c10', per_class=1)}")
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.randint(0, 100, s, generator=gen) if k.endswith("num_batches_tracked")
                 else torch.randn(s, generator=gen)) for k, s in official_preact_resnet18_keys(10).items()}
    for name, saved in (("plain.pth", state), ("dp.pth", {f"module.{k}": v for k, v in state.items()})):
        torch.save(saved, tmp_path / name)
        model, blob = model_from_checkpoint(tmp_path / name, data)
        assert blob["format"] == "state_dict" and not model.training
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key]), key
        # normalisation uses the CIFAR-10 constants and lives outside the state_dict
        assert torch.allclose(model.input_mean.flatten(), torch.tensor(CIFAR10_MEAN))
        assert torch.allclose(model.input_std.flatten(), torch.tensor(CIFAR10_STD))


def test_checkpoint_of_another_architecture_names_the_mismatching_keys(tmp_path):
    other = build_arch("resnet18", n_classes=10, in_channels=3, mean=(0,) * 3, std=(1,) * 3)
    with pytest.raises(ValueError, match=r"missing keys .*bn\..*unexpected keys .*bn1"):
        load_weights(PreActResNet18(10), other.state_dict(), source="x.pth")
    with pytest.raises(ValueError, match=r"shape mismatches linear.weight \(100, 512\) vs \(10, 512\)"):
        load_weights(PreActResNet18(10), PreActResNet18(100).state_dict())


class _Payload:
    pass


def test_checkpoints_are_loaded_with_weights_only(tmp_path):
    torch.save({"format": "state_dict", "object": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a safe, readable torch file"):
        read_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a safe, readable"):
        read_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="does not exist"):
        read_checkpoint(tmp_path / "absent.pt")


@pytest.mark.parametrize("name, options, size", [
    ("preact-resnet18", {}, 8), ("resnet18", {}, 8), ("small-cnn", {"width": 4}, 8),
])
def test_forward_is_head_of_features_and_normalisation_is_not_in_state(name, options, size):
    model = build_arch(name, n_classes=3, in_channels=2, mean=(0.3, 0.6), std=(0.2, 0.4), seed=1, **options).eval()
    x = torch.rand(6, 2, size, size, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        features = model.features(x)
        assert features.dim() == 2 and features.shape[0] == 6
        assert torch.equal(model(x), model.head(features))
        assert features.min() >= 0  # after the last ReLU and average pooling
        assert torch.allclose(features, model.feature_map(x).mean(dim=(2, 3)))
    assert isinstance(model.head, torch.nn.Linear)
    assert not any("input_" in k for k in model.state_dict())
    # synthmodel's attribution runs on it unchanged; C is the cosine matrix of the class-mean attributions
    result = attribution(model, x, y, batch_size=4)
    vectors = np.stack([features[y == i].double().mean(0).numpy() * model.head.weight[i].double().detach().numpy()
                        for i in range(3)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(result.matrix, vectors @ vectors.T, atol=1e-6)  # float32 features, float64 sums


def test_wide_resnet_34_10_size():
    # Zagoruyko & Komodakis report 46.2M parameters for WRN-34-10 on CIFAR-10
    model = WideResNet(10)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(46.2e6, rel=2e-3)
    small = WideResNet(3, in_channels=1, mean=(0.5,), std=(0.5,), depth=10, widen=1).eval()
    assert small(torch.rand(2, 1, 8, 8)).shape == (2, 3)
    with pytest.raises(ValueError, match="6n\\+4"):
        WideResNet(10, depth=12)


def test_grad_cam_equals_class_activation_map():
    # for a GAP + linear head, d score / d A_c = W[t, c] / (h w): Grad-CAM is CAM up to a positive factor
    model = build_arch("small-cnn", n_classes=4, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3, seed=0,
                       width=4).eval()
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    target = torch.tensor([0, 1, 2, 3, 1])
    maps = grad_cam(model, x, target)
    with torch.no_grad():
        fmap = model.feature_map(x)
        cam = torch.relu(torch.einsum("nchw,nc->nhw", fmap, model.head.weight[target]))
        cam = torch.nn.functional.interpolate(cam[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
        cam = cam / cam.flatten(1).max(1).values.clamp_min(1e-12)[:, None, None]
    torch.testing.assert_close(maps, cam, atol=1e-5, rtol=1e-5)  # float32 rounding of two summation orders
    assert maps.min() >= 0 and maps.max() <= 1


def test_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"
    assert set(ARCHS) == {"preact-resnet18", "resnet18", "wrn-34-10", "small-cnn"}
