"""real_data.models / checkpoints: official key compatibility, the WideResNet layouts and checkpoint containers
of the common AT codebases, the features/head contract, safe loading, input normalisation, Grad-CAM."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from real_data import cas
from real_data.checkpoints import (
    load_weights,
    model_from_checkpoint,
    parse_input_normalization,
    read_checkpoint,
)
from real_data.data import CIFAR10_MEAN, CIFAR10_STD, load_dataset
from real_data.device import resolve_device
from real_data.fixtures import write_cifar10
from real_data.models import ARCHS, PreActResNet18, WideResNet, arch_constructor, build_arch
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
    with pytest.raises(ValueError, match="holds pickled objects besides tensors \\(test_real_data_models._Payload\\)"):
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


@pytest.mark.parametrize("name, millions", [("wrn-34-10", 46.2), ("wrn-28-10", 36.5), ("wrn-16-8", 11.0),
                                            ("wrn-40-4", 8.9)])
def test_wide_resnet_sizes(name, millions):
    # parameter counts on CIFAR-10 reported by Zagoruyko & Komodakis (2016) and for WRN-34-10 by TRADES
    model = build_arch(name, n_classes=10, in_channels=3, mean=(0,) * 3, std=(1,) * 3)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(millions * 1e6, abs=0.05e6)


def test_wide_resnet_34_10_is_the_registered_default_and_any_depth_width_builds():
    model = WideResNet(10)
    assert (model.depth, model.widen) == (34, 10) and ARCHS["wrn-34-10"] is WideResNet
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
    for bad in ("wrn-12-2", "wrn-8-1", "wrn-16-0", "wrn-16", "vgg16"):
        with pytest.raises(ValueError, match="WideResNet depth must be 6n\\+4|unknown architecture"):
            arch_constructor(bad)


# -- WideResNet layouts of the TRADES repository and RobustBench, and the common checkpoint containers -----
class _ReferenceBlock(nn.Module):
    """The TRADES / RobustBench WideResNet block as those projects define it (learned from their model
    files): bn1 + in-place ReLU on the input, conv1 (3x3, stride), bn2 + ReLU, conv2 (3x3), no conv
    biases; where the channel count changes the input itself is replaced by ReLU(bn1(x)) and passed
    through convShortcut (1x1, stride); the sum is shortcut + residual."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = cin == cout
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x):
        if self.equal_in_out:
            out = self.relu1(self.bn1(x))
        else:
            x = self.relu1(self.bn1(x))
            out = x
        out = self.conv2(self.relu2(self.bn2(self.conv1(out))))
        return torch.add(x if self.equal_in_out else self.convShortcut(x), out)


class _ReferenceStage(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[_ReferenceBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                     for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class _ReferenceWideResNet(nn.Module):
    """conv1 - block1 - block2 - block3 - bn1 - ReLU - avg_pool2d(8) - fc. TRADES' file always builds the
    unused sub_block1 (block1's shapes); RobustBench's builds it when asked (sub_block1=True) and drops
    fc's bias with bias_last=False. Inputs are raw [0, 1] pixels (32 x 32)."""

    def __init__(self, depth: int, widen: int, n_classes: int = 10, sub_block1: bool = True, bias_last: bool = True):
        super().__init__()
        n, channels = (depth - 4) // 6, [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.block1 = _ReferenceStage(n, channels[0], channels[1], 1)
        if sub_block1:
            self.sub_block1 = _ReferenceStage(n, channels[0], channels[1], 1)
        self.block2 = _ReferenceStage(n, channels[1], channels[2], 2)
        self.block3 = _ReferenceStage(n, channels[2], channels[3], 2)
        self.bn1, self.relu = nn.BatchNorm2d(channels[3]), nn.ReLU(inplace=True)
        self.fc = nn.Linear(channels[3], n_classes, bias=bias_last)
        self.width = channels[3]

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.avg_pool2d(self.relu(self.bn1(out)), 8)
        return self.fc(out.view(-1, self.width))


def _randomised(module: nn.Module, seed: int) -> nn.Module:
    """Random weights and batch-norm statistics, so eval-mode batch norm is no identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            values = torch.randn(tensor.shape, generator=gen) * (0.2 if tensor.dim() > 1 else 0.5)
            tensor.copy_(values.abs() + 0.5 if name.endswith("running_var") else values)
    return module.eval()


class _Normalizer(nn.Module):
    """MadryLab robustness' InputNormalize: (C, 1, 1) buffers new_mean / new_std, clamp to [0, 1] first."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("new_mean", torch.tensor(mean)[:, None, None])
        self.register_buffer("new_std", torch.tensor(std)[:, None, None])

    def forward(self, x):
        return (x.clamp(0, 1) - self.new_mean) / self.new_std


_MADRY_MEAN, _MADRY_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def _contain(container: str, net: nn.Module) -> tuple[object, nn.Module, str | None]:
    """(what is saved, the original module as it maps [0, 1] pixels to logits, --input-normalization)."""
    state = net.state_dict()
    if container == "bare":
        return state, net, "none"
    if container == "module-prefix":  # nn.DataParallel
        return {f"module.{k}": v for k, v in state.items()}, net, "none"
    if container == "compiled":  # torch.compile
        return {f"_orig_mod.{k}": v for k, v in state.items()}, net, "none"
    if container == "robust_overfitting":  # model_best.pth of a DataParallel model, CIFAR statistics outside
        saved = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "test_robust_acc": 0.5, "test_acc": 0.8}

        def normalised(x):
            return net((x - torch.tensor(CIFAR10_MEAN)[:, None, None]) / torch.tensor(CIFAR10_STD)[:, None, None])
        return saved, normalised, "cifar10"
    if container == "adversarial_robustness_pytorch":  # DataParallel(Sequential(backbone)) under model_state_dict
        return {"model_state_dict": {f"module.0.{k}": v for k, v in state.items()}}, net, "none"
    if container == "numpy-and-args":  # data-only extras read safely
        return ({"state_dict": state, "best_acc": np.float64(0.51), "accs": np.array([0.1, 0.2]),
                 "args": argparse.Namespace(arch="wrn", lr=0.1)}, net, "none")
    if container == "madrylab":  # AttackerModel: normalizer + model + attacker copy, DataParallel, extras
        normalizer = _Normalizer(_MADRY_MEAN, _MADRY_STD)
        model_state = {}
        for prefix, module in (("normalizer.", normalizer), ("model.", net), ("attacker.normalize.", normalizer),
                               ("attacker.model.", net)):
            model_state.update({f"module.{prefix}{k}": v for k, v in module.state_dict().items()})
        saved = {"model": model_state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "schedule": None,
                 "epoch": 7}
        return saved, lambda x: net(normalizer(x)), None
    raise AssertionError(container)


CONTAINERS = ("bare", "module-prefix", "compiled", "robust_overfitting", "adversarial_robustness_pytorch",
              "numpy-and-args", "madrylab")
LAYOUTS = {"trades": {"sub_block1": True, "bias_last": True}, "robustbench": {"sub_block1": False, "bias_last": True},
           "robustbench-bias_last=False": {"sub_block1": False, "bias_last": False}}


@pytest.fixture(scope="module")
def cifar_data(tmp_path_factory):
    return load_dataset(f"cifar10:{write_cifar10(tmp_path_factory.mktemp('c10') / 'c10', per_class=1)}")


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("container", CONTAINERS)
def test_wide_resnet_layouts_in_every_container_load_with_the_original_logits(tmp_path, cifar_data, layout,
                                                                               container):
    depth, widen = (10, 2) if layout != "trades" else (16, 1)
    net = _randomised(_ReferenceWideResNet(depth, widen, **LAYOUTS[layout]), seed=len(container))
    saved, original, normalization = _contain(container, net)
    torch.save(saved, tmp_path / "model.pt")
    model, blob = model_from_checkpoint(tmp_path / "model.pt", cifar_data, arch=f"wrn-{depth}-{widen}",
                                        normalization=None if normalization is None
                                        else parse_input_normalization(normalization))
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # same operations; global average pooling vs avg_pool2d(8) may round differently in float32
        torch.testing.assert_close(model(x), original(x), rtol=1e-5, atol=1e-5)
    assert (model.fc.bias is not None) == LAYOUTS[layout]["bias_last"]
    if layout == "trades":
        assert "unused sub_block1 keys dropped" in blob["container"]
    if container == "madrylab":
        assert blob["container"].startswith("MadryLab robustness") and blob["epoch"] == 7
        assert blob["input_normalization"] == "stored in the checkpoint"
        torch.testing.assert_close(model.input_std.flatten(), torch.tensor(_MADRY_STD))
    if container == "adversarial_robustness_pytorch":
        assert "prefix module. stripped, prefix 0. stripped" in blob["container"]


def test_a_checkpoint_of_another_depth_or_width_is_refused_naming_both(tmp_path, cifar_data, capsys):
    torch.save(_randomised(_ReferenceWideResNet(16, 2), seed=0).state_dict(), tmp_path / "wrn16.pt")
    for arch in ("wrn-10-2", "wrn-16-4"):
        with pytest.raises(ValueError, match=f"does not fit {arch} \\(the checkpoint holds a wrn-16-2: pass --arch "
                                             "wrn-16-2\\)"):
            model_from_checkpoint(tmp_path / "wrn16.pt", cifar_data, arch=arch)
    assert cas.main(["--checkpoint", str(tmp_path / "wrn16.pt"), "--dataset", cifar_data.name, "--arch", "wrn-10-2",
                     "--input-normalization", "none", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "unexpected keys" in err[0] and "wrn-16-2" in err[0]


def test_unknown_containers_are_refused_naming_their_keys(tmp_path, cifar_data, capsys):
    state = PreActResNet18(10).state_dict()
    for saved, message in (({"weights": state, "epoch": 3}, "unknown container \\(a dict with keys weights, epoch\\)"),
                           ([state], "unknown container \\(a list\\)"),
                           ({"state_dict": {"w": 1.0}}, "unknown container")):
        torch.save(saved, tmp_path / "odd.pt")
        with pytest.raises(ValueError, match=message):
            read_checkpoint(tmp_path / "odd.pt")
    assert cas.main(["--checkpoint", str(tmp_path / "odd.pt"), "--dataset", cifar_data.name, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown container" in err[0]


@pytest.mark.parametrize("text, mean, std", [("none", (0.0,) * 3, (1.0,) * 3), ("cifar10", CIFAR10_MEAN, CIFAR10_STD),
                                             ("0.5/0.25", (0.5,) * 3, (0.25,) * 3),
                                             ("0.1,0.2,0.3/1,2,3", (0.1, 0.2, 0.3), (1.0, 2.0, 3.0))])
def test_input_normalization_sets_the_models_statistics(tmp_path, cifar_data, text, mean, std):
    torch.save(PreActResNet18(10).state_dict(), tmp_path / "prn.pt")
    model, blob = model_from_checkpoint(tmp_path / "prn.pt", cifar_data,
                                        normalization=parse_input_normalization(text))
    torch.testing.assert_close(model.input_mean.flatten(), torch.tensor(mean))
    torch.testing.assert_close(model.input_std.flatten(), torch.tensor(std))
    default, blob = model_from_checkpoint(tmp_path / "prn.pt", cifar_data)
    assert blob["input_normalization"] == "dataset"  # the paper's: the data set's statistics inside the model
    torch.testing.assert_close(default.input_mean.flatten(), torch.tensor(CIFAR10_MEAN))


@pytest.mark.parametrize("text", ["0.5", "a/b", "0.5/0", "0.1,0.2/0.3", "nan/1", "0.5/-1", "cifar", "/", ""])
def test_a_normalisation_string_that_does_not_parse_is_one_error_line(tmp_path, cifar_data, capsys, text):
    with pytest.raises(ValueError, match="input normalisation must be one of none"):
        parse_input_normalization(text)
    with pytest.raises(SystemExit) as exit_status:  # argparse's error, before anything is read
        cas.main(["--checkpoint", str(tmp_path / "absent.pt"), "--dataset", cifar_data.name,
                  "--input-normalization", text])
    assert exit_status.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: argument --input-normalization")


def test_a_normalisation_with_the_wrong_channel_count_is_refused(tmp_path, cifar_data):
    torch.save(PreActResNet18(10).state_dict(), tmp_path / "prn.pt")
    with pytest.raises(ValueError, match="has 2 values, the images of .* have 3 channels"):
        model_from_checkpoint(tmp_path / "prn.pt", cifar_data, normalization=parse_input_normalization("0.1,0.2/1,1"))


def test_saliency_builds_foreign_checkpoints_with_the_given_normalisation(tmp_path, cifar_data, capsys):
    from real_data import saliency

    net = build_arch("small-cnn", n_classes=10, in_channels=3, mean=(0,) * 3, std=(1,) * 3, width=2, seed=0)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "cnn.pth")
    args = ["--checkpoint", str(tmp_path / "cnn.pth"), "--dataset", cifar_data.name, "--arch", "small-cnn", "--width",
            "2", "--indices", "0", "--out", str(tmp_path / "grid.png")]
    assert saliency.main([*args, "--input-normalization", "0.5/0.25"]) == 0
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit) as exit_status:
        saliency.main([*args, "--input-normalization", "0.5"])
    assert exit_status.value.code == 2 and "input normalisation must be" in capsys.readouterr().err
