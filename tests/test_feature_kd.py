"""Feature and relational distillation: each loss against a float64 loop written from its
paper, feature taps on any network, connectors that train, resume and never export, every
method from the CLI on digits and on an import-path model, bad input as one line, and a
2-process CRD run equal to one process."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bdkd.cli import main
from bdkd.distillers import create_distiller
from bdkd.distillers.crd import draw_negatives
from bdkd.losses.feature import (
    at_loss,
    crd_nce_loss,
    hcl_loss,
    hint_loss,
    nd_loss,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    sp_loss,
)
from bdkd.models import create_model
from bdkd.models.taps import TapError, attach_taps, default_taps

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "digits"
METHODS = ["fitnet", "at", "sp", "rkd", "pkt", "crd", "nd", "reviewkd"]
FAST = ["train.epochs=1", "train.progress=false", "train.threads=1"]


# ---------------------------------------------------------------- float64 references


def huber(a: float, b: float) -> float:
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def ref_at(fs, ft, p=2.0, form="reference"):
    n = fs.shape[0]

    c_, h_, w_ = fs.shape[1:]

    def att(f):
        f = f.tolist()
        a = [[sum(abs(f[i][c][h][w]) ** p for c in range(c_)) / c_
              for h in range(h_) for w in range(w_)] for i in range(n)]  # fmt: skip
        return [[v / max(math.sqrt(sum(x * x for x in row)), 1e-12) for v in row] for row in a]

    qs, qt = att(fs), att(ft)
    if form == "paper":
        return sum(math.sqrt(sum((a - b) ** 2 for a, b in zip(rs, rt, strict=False))) for rs, rt in zip(qs, qt, strict=False)) / n / 2  # fmt: skip
    m = len(qs[0])
    return sum(
        (a - b) ** 2 for rs, rt in zip(qs, qt, strict=False) for a, b in zip(rs, rt, strict=False)
    ) / (n * m)


def ref_sp(fs, ft):
    n = fs.shape[0]
    a, b = fs.reshape(n, -1).tolist(), ft.reshape(n, -1).tolist()

    def gram(v):
        g = [
            [sum(x * y for x, y in zip(v[i], v[j], strict=False)) for j in range(n)]
            for i in range(n)
        ]
        return [[x / math.sqrt(sum(y * y for y in row)) for x in row] for row in g]

    gs, gt = gram(a), gram(b)
    return sum((gs[i][j] - gt[i][j]) ** 2 for i in range(n) for j in range(n)) / n**2


def ref_rkd(s, t):
    n = s.shape[0]
    s, t = s.tolist(), t.tolist()

    def dist(v, i, j):
        return math.sqrt(sum((a - b) ** 2 for a, b in zip(v[i], v[j], strict=False)))

    def dists(v):
        d = [[dist(v, i, j) if i != j else 0.0 for j in range(n)] for i in range(n)]
        mean = sum(x for row in d for x in row if x > 0) / sum(1 for row in d for x in row if x > 0)
        return [[x / mean for x in row] for row in d]

    ds, dt = dists(s), dists(t)
    distance = sum(huber(ds[i][j], dt[i][j]) for i in range(n) for j in range(n)) / n**2

    def cos(v, i, j, k):  # angle at i between j and k
        a = [x - y for x, y in zip(v[j], v[i], strict=False)]
        b = [x - y for x, y in zip(v[k], v[i], strict=False)]
        na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
        if na == 0 or nb == 0:
            return 0.0
        return sum(x * y for x, y in zip(a, b, strict=False)) / (max(na, 1e-12) * max(nb, 1e-12))

    angle = sum(huber(cos(s, i, j, k), cos(t, i, j, k))
                for i in range(n) for j in range(n) for k in range(n)) / n**3  # fmt: skip
    return distance, angle


def ref_pkt(s, t, eps=1e-7):
    n = s.shape[0]

    def probs(v):
        v = [[x / (math.sqrt(sum(y * y for y in row)) + eps) for x in row] for row in v.tolist()]
        k = [
            [(sum(a * b for a, b in zip(v[i], v[j], strict=False)) + 1) / 2 for j in range(n)]
            for i in range(n)
        ]
        return [[x / sum(row) for x in row] for row in k]

    ps, pt = probs(s), probs(t)
    return sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps))
               for i in range(n) for j in range(n)) / n**2  # fmt: skip


def ref_nd(s, t, centers, labels):
    total = 0.0
    for si, ti, y in zip(s.tolist(), t.tolist(), labels.tolist(), strict=False):
        c = centers[y].tolist()
        norm_c = math.sqrt(sum(x * x for x in c))
        e = [x / norm_c for x in c]
        scale = max(math.sqrt(sum(x * x for x in si)), math.sqrt(sum(x * x for x in ti)))
        total += 1 - sum(a * b for a, b in zip(si, e, strict=False)) / scale
    return total / len(labels)


def ref_crd(scores, n_data, eps=1e-7):
    k = scores.shape[1] - 1
    pn = 1.0 / n_data
    total = 0.0
    for row in scores.tolist():
        total += math.log(row[0] / (row[0] + k * pn + eps))
        total += sum(math.log(k * pn / (x + k * pn + eps)) for x in row[1:])
    return -total / scores.shape[0]


def ref_hcl(fs_list, ft_list, levels=(4, 2, 1)):
    total = 0.0
    for fs, ft in zip(fs_list, ft_list, strict=False):
        terms = [(1.0, F.mse_loss(fs, ft).item())]
        weight = 1.0
        for level in levels:
            if level >= fs.shape[-1]:
                continue
            weight /= 2
            h = fs.shape[-1] // level

            def pool(f, h=h, level=level):
                return f.reshape(f.shape[0], f.shape[1], level, h, level, h).mean(dim=(3, 5))

            terms.append((weight, ((pool(fs) - pool(ft)) ** 2).mean().item()))
        total += sum(w * v for w, v in terms) / sum(w for w, _ in terms)
    return total


@pytest.mark.parametrize("shape", [(3, 2, 4, 4), (5, 4, 2, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("form", ["reference", "paper"])
def test_at_matches_a_loop(shape, dtype, form):
    g = torch.Generator().manual_seed(1)
    fs, ft = (
        torch.randn(*shape, generator=g, dtype=dtype),
        torch.randn(*shape, generator=g, dtype=dtype),
    )
    got = at_loss(fs, ft, form=form).item()
    want = ref_at(fs.double(), ft.double(), form=form)
    assert got == pytest.approx(want, rel=1e-5)
    assert at_loss(fs, fs, form=form).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("shape", [(4, 3), (6, 2, 3, 3)])
def test_sp_rkd_pkt_match_loops(shape):
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
    assert sp_loss(s, t).item() == pytest.approx(ref_sp(s.double(), t.double()), rel=1e-5)
    flat_s, flat_t = s.flatten(1), t.flatten(1)
    distance, angle = ref_rkd(flat_s.double(), flat_t.double())
    assert rkd_distance_loss(s, t).item() == pytest.approx(distance, rel=1e-4)
    assert rkd_angle_loss(s, t).item() == pytest.approx(angle, rel=1e-4)
    assert pkt_loss(flat_s, flat_t).item() == pytest.approx(ref_pkt(flat_s.double(), flat_t.double()), rel=1e-4)  # fmt: skip
    # identities: each is zero between a feature and itself; SP and RKD are scale-free
    for fn in (sp_loss, rkd_distance_loss, rkd_angle_loss):
        assert fn(s, s).item() == pytest.approx(0.0, abs=1e-6)
        assert fn(3 * s, t).item() == pytest.approx(fn(s, t).item(), rel=1e-4)
    assert pkt_loss(flat_s, flat_s).item() == pytest.approx(0.0, abs=1e-6)


def test_hint_nd_crd_hcl_match_loops():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert hint_loss(s, t).item() == pytest.approx(((s - t) ** 2).mean().item(), rel=1e-6)
    centers, labels = torch.randn(3, 5, generator=g), torch.tensor([0, 1, 2, 2, 1, 0])
    assert nd_loss(s, t, centers, labels).item() == pytest.approx(ref_nd(s, t, centers, labels), rel=1e-5)  # fmt: skip
    # a student on its class-mean direction with the larger norm has zero ND loss
    on = F.normalize(centers[labels], dim=1) * 10
    assert nd_loss(on, t, centers, labels).item() == pytest.approx(0.0, abs=1e-6)
    scores = torch.rand(4, 9, generator=g) + 0.05
    assert crd_nce_loss(scores, 100).item() == pytest.approx(ref_crd(scores, 100), rel=1e-5)
    maps_s = [torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 4, 2, 2, generator=g)]
    maps_t = [torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 4, 2, 2, generator=g)]
    assert hcl_loss(maps_s, maps_t).item() == pytest.approx(ref_hcl(maps_s, maps_t), rel=1e-5)


def test_crd_negatives_do_not_depend_on_how_the_batch_is_split():
    index = torch.tensor([5, 17, 3, 99, 42, 0])
    whole = draw_negatives(index, step=7, k=32, n=100)
    halves = torch.cat([draw_negatives(index[::2], 7, 32, 100), draw_negatives(index[1::2], 7, 32, 100)])  # fmt: skip
    assert torch.equal(whole[::2], halves[:3]) and torch.equal(whole[1::2], halves[3:])
    assert whole.min() >= 0 and whole.max() < 100
    assert not torch.equal(whole, draw_negatives(index, 8, 32, 100))  # a new step, new draws
    counts = torch.bincount(draw_negatives(torch.arange(1000), 0, 50, 10).flatten(), minlength=10)
    assert counts.min() > 4000 and counts.max() < 6000  # uniform over the slots


# ---------------------------------------------------------------- taps and connectors


class UserNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1))  # fmt: skip
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.body(x).mean(dim=(2, 3)))


def test_taps_read_outputs_and_inputs_without_touching_the_model():
    net = UserNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    shapes = attach_taps(net, ["body.0", "body", "head:in"], torch.zeros(2, 1, 8, 8))
    assert shapes == [(4, 8, 8), (8, 8, 8), (8,)]
    x = torch.randn(3, 1, 8, 8)
    feats, logits = net.forward_with_taps(x)
    torch.testing.assert_close(logits, net(x))
    torch.testing.assert_close(feats[1], net.body(x))
    torch.testing.assert_close(feats[2], net.body(x).mean(dim=(2, 3)))
    assert net.state_dict().keys() == before.keys()
    with pytest.raises(TapError, match=r"'bodi' is not a module.*'body'"):
        attach_taps(UserNet(), ["bodi"], torch.zeros(2, 1, 8, 8))
    zoo = create_model("resnet20", 10)
    assert default_taps(zoo, "middle") == ["layer2"]
    assert default_taps(zoo, "review") == ["layer1", "layer2", "layer3", "classifier:in"]
    assert default_taps(UserNet(), "stages") == []


def _pair(method: str, **hparams):
    teacher, student = create_model("cnn_small", 10, in_channels=1), create_model("cnn_tiny", 10, in_channels=1)  # fmt: skip
    from bdkd.distillers import feature_use

    for net in (teacher, student):
        net.tap_shapes = attach_taps(net, default_taps(net, feature_use(method)), torch.zeros(2, 1, 8, 8))  # fmt: skip
    return create_distiller(method, {"teacher": teacher, "student": student}, num_samples=64, **hparams)  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_its_connectors_with_the_student(method):
    d = _pair(method, **({"nce_k": 16} if method == "crd" else {}))
    student_params = {id(p) for p in d.networks["student"].parameters()}
    group = d.parameter_groups()["student"]
    own = [p for p in group if id(p) not in student_params]
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    extra = {"index": torch.arange(8)} if d.uses_index else {}
    out = d(x, y, 0, None, **extra)
    assert set(out.losses["student"]) >= {"ce"} and all(torch.isfinite(v) for v in out.losses["student"].values())  # fmt: skip
    out.total().backward()
    if method in ("fitnet", "crd", "reviewkd"):
        assert own and all(p.grad is not None for p in own), method
    assert all(p.grad is None for p in d.networks["teacher"].parameters())


def test_fitnet_pairs_a_map_with_a_vector_through_a_linear_connector():
    """A teacher map against a student embedding: the map is pooled, the connector linear."""
    teacher, student = create_model("cnn_small", 10, in_channels=1), create_model("cnn_tiny", 10, in_channels=1)  # fmt: skip
    teacher.tap_shapes = attach_taps(teacher, ["stage2"], torch.zeros(2, 1, 8, 8))
    student.tap_shapes = attach_taps(student, ["classifier:in"], torch.zeros(2, 1, 8, 8))
    d = create_distiller("fitnet", {"teacher": teacher, "student": student})
    assert isinstance(d.connectors[0], nn.Linear)
    x = torch.randn(4, 1, 8, 8)
    out = d(x, torch.randint(0, 10, (4,)))
    with torch.no_grad():
        fs, _ = student.forward_with_taps(x)
        ft, _ = teacher.forward_with_taps(x)
        want = ((d.connectors[0](fs[0]) - ft[0].mean(dim=(2, 3))) ** 2).mean() * 100
    assert out.losses["student"]["fitnet"].item() == pytest.approx(want.item(), rel=1e-5)


def test_feature_method_with_a_logit_term_and_bad_settings():
    d = _pair("fitnet", logit="bdkd", logit_kwargs={"temperature": 2.0})
    out = d(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))
    assert set(out.losses["student"]) == {"ce", "fitnet", "bdkd_student"}
    with pytest.raises(ValueError, match="logit 'kdd' is not an image objective"):
        _pair("fitnet", logit="kdd")


def test_nd_class_means_are_the_teachers():
    d = _pair("nd")
    x, y = torch.randn(20, 1, 8, 8), torch.arange(20) % 10
    d.prepare([(x[:7], y[:7]), (x[7:], y[7:])])
    with torch.no_grad():
        feats, _ = d.networks["teacher"].forward_with_taps(x)
    want = torch.stack([feats[0][y == c].mean(0) for c in range(10)])
    torch.testing.assert_close(d.centers, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- from the CLI


@pytest.fixture(scope="module")
def cnn_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("cnn") / "teacher"
    assert main(["train", str(CONFIGS / "teacher_cnn.yaml"), "train.epochs=2", "train.progress=false", "--out", str(out)]) == 0  # fmt: skip
    return out


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_from_the_cli_on_digits(method, digits_teacher, cnn_teacher, tmp_path):
    config = CONFIGS / f"{method}.yaml"
    teacher = cnn_teacher if "teacher_cnn" in config.read_text() else digits_teacher
    out = tmp_path / method
    assert main(["train", str(config), *FAST, f"networks.teacher.checkpoint={teacher}", "--out", str(out)]) == 0  # fmt: skip
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert any(k.startswith("student/") and k != "student/ce" for k in line["train"]), line["train"]
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["results"]["student"]["accuracy"] > 0.1
    )  # 10 classes: above chance after one epoch


def test_connectors_resume_exactly_and_never_export(digits_teacher, tmp_path, monkeypatch):
    """CRD (heads, memory banks, Z, the step counter) interrupted inside its second epoch
    and resumed ends bit for bit like the run that was not; the export holds the student
    alone."""
    from bdkd.engine import loop

    config = str(CONFIGS / "crd.yaml")
    args = ["train.progress=false", "train.threads=1", "train.epochs=2", f"networks.teacher.checkpoint={digits_teacher}"]  # fmt: skip
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["train", config, *args, "--out", str(whole)]) == 0
    real = loop.Trainer.train_epoch

    def crash_in_second_epoch(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch)

    monkeypatch.setattr(loop.Trainer, "train_epoch", crash_in_second_epoch)
    assert main(["train", config, *args, "--out", str(part)]) == 130
    monkeypatch.undo()
    assert main(["train", "--resume", str(part)]) == 0
    a = torch.load(whole / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(part / "checkpoints" / "last.pt", weights_only=True)
    assert {"embed_s.linear.weight", "memory_s", "memory_t", "z", "steps"} <= set(a["extra"])
    for key, value in a["extra"].items():
        assert torch.equal(value, b["extra"][key]), key
    for key, value in a["networks"]["student"].items():
        assert torch.equal(value, b["networks"]["student"][key]), key
    out = tmp_path / "student.safetensors"
    assert main(["export", str(whole), "--format", "safetensors", "--out", str(out)]) == 0
    from safetensors.torch import load_file

    keys = set(load_file(str(out)))
    assert keys == set(a["networks"]["student"]), keys ^ set(a["networks"]["student"])


OWN = """
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, width=8):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.encoder(x)).flatten(1))


def build(num_classes, width=8):
    return Net(num_classes, width)
"""


OWN_FEATURES = {
    "fitnet": "[encoder.3]",
    "at": "[encoder.1, encoder.3]",
    "sp": "[encoder.3]",
    "rkd": "[fc:in]",
    "pkt": "[fc:in]",
    "crd": "[fc:in]",
    "nd": "[pool]",
    "reviewkd": "[encoder.1, encoder.3, fc:in]",
}


@pytest.fixture(scope="module")
def own_teacher(tmp_path_factory):
    """The user's network (an import path) trained as a teacher on digits."""
    root = tmp_path_factory.mktemp("own")
    (root / "own_kd_nets.py").write_text(textwrap.dedent(OWN))
    sys.path.insert(0, str(root))
    teacher = root / "teacher"
    t_args = ["networks.teacher.model=own_kd_nets:build", "networks.teacher.kwargs={width: 16}"]
    assert main(["train", str(CONFIGS / "teacher.yaml"), *FAST, *t_args, "--out", str(teacher)]) == 0  # fmt: skip
    yield teacher
    sys.path.remove(str(root))


@pytest.mark.parametrize("method", METHODS)
def test_an_import_path_model_by_module_names(method, own_teacher, tmp_path):
    features = OWN_FEATURES[method]
    args = [
        f"method={{name: {method}}}",
        "method.nce_k=64" if method == "crd" else "train.seed=0",
        *(f"networks.{n}.model=own_kd_nets:build" for n in ("teacher", "student")),
        "networks.teacher.kwargs={width: 16}",
        f"networks.teacher.checkpoint={own_teacher}",
        f"networks.teacher.features={features}",
        f"networks.student.features={features}",
    ]
    out = tmp_path / method
    assert main(["train", str(CONFIGS / "kd.yaml"), *FAST, *args, "--out", str(out)]) == 0
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert any(k.startswith(f"student/{method}") for k in line["train"]), line["train"]


# ---------------------------------------------------------------- bad input


def _fails(args, capsys, *fragments):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    for fragment in fragments:
        assert fragment in err[-1], err[-1]


def test_bad_feature_input_is_one_line(digits_teacher, tmp_path, capsys):
    kd = str(CONFIGS / "kd.yaml")
    t = f"networks.teacher.checkpoint={digits_teacher}"
    out = ["--out", str(tmp_path / "x")]
    _fails(["train", kd, "method={name: at}", t, *FAST, *out], capsys, "'networks.student.features'", "needs (N, C, H, W)")  # fmt: skip
    _fails(["train", kd, "method={name: crd}", t, *FAST, *out], capsys, "'method.nce_k'", "number of training samples")  # fmt: skip
    _fails(["train", kd, "method={name: fitnet}", "networks.student.features=[fc9]", t, *FAST, *out], capsys, "'networks.student.features'", "closest")  # fmt: skip
    _fails(["train", kd, "method={name: fitnet}", "networks.student.features=[fc1, fc2]", t, *FAST, *out], capsys, "pairs them one to one")  # fmt: skip
    _fails(["train", kd, "method={name: pkt}", f"train.teacher_cache={tmp_path / 'cache'}", t, *FAST, *out], capsys, "'train.teacher_cache'", "features")  # fmt: skip
    assert not (tmp_path / "x").exists()


def test_embedding_methods_refuse_segmentation(tmp_path, capsys):
    scenes = Path(__file__).resolve().parents[1] / "configs" / "scenes" / "kd.yaml"
    if not Path("/usr/share/datasets/fashion-mnist").exists():
        pytest.skip("Fashion-MNIST (apt install dataset-fashion-mnist) builds the scenes")
    _fails(
        ["train", str(scenes), "method={name: rkd}", "networks.teacher.checkpoint=null",
         "networks.teacher.weights=null", "networks.teacher.features=[enc3]",
         "networks.student.features=[enc3]", *FAST, "--out", str(tmp_path / "x")],
        capsys,
        "not defined for a segmentation task",
    )  # fmt: skip


# ---------------------------------------------------------------- DDP


def test_two_process_crd_matches_one_process(digits_teacher, tmp_path):
    config = str(CONFIGS / "crd.yaml")
    same = [
        "train.epochs=2", "train.progress=false", "data.train_size=1280", "data.batch_size=128",
        "train.threads=1", f"networks.teacher.checkpoint={digits_teacher}",
    ]  # fmt: skip
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main(["train", config, *same, "--out", str(single)]) == 0
    done = subprocess.run(
        [sys.executable, "-m", "bdkd", "train", config, *same, "--out", str(ddp), "--nproc", "2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    a = torch.load(single / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(ddp / "checkpoints" / "last.pt", weights_only=True)
    for key, value in a["extra"].items():
        torch.testing.assert_close(value, b["extra"][key], rtol=1e-4, atol=1e-5, msg=key)
    for key, value in a["networks"]["student"].items():
        torch.testing.assert_close(value, b["networks"]["student"][key], rtol=1e-4, atol=1e-5, msg=key)  # fmt: skip


def test_tune_gives_feature_methods_the_live_teacher(tmp_path):
    """bdkd tune shares a teacher-logit cache among offline trials; a feature method reads
    the teacher's features, so its trials get none (they failed before)."""
    from bdkd.config import read_yaml
    from bdkd.tune.spaces import default_space
    from bdkd.tune.trials import method_trial

    config = read_yaml(CONFIGS / "kd.yaml")
    trials = {
        m: method_trial(
            tmp_path, config, default_space(m), {}, 0, "sweep", teacher=None, cache=True
        )
        for m in ("kd", "fitnet", "crd")
    }
    assert "teacher_cache" in trials["kd"].config["train"] and trials["kd"].offline
    for m in ("fitnet", "crd"):
        assert "teacher_cache" not in trials[m].config["train"] and not trials[m].offline
