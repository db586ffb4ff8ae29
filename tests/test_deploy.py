"""Trust on the device: int8 export that keeps its calibration, abstention and conformal
thresholds measured from the written file and carried in it, calibration under shift."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bdkd import calibration as cal
from bdkd.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "digits"
ort = pytest.importorskip("onnxruntime")


def fails(args, capsys, *expected):
    capsys.readouterr()
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for fragment in expected:
        assert fragment in err, (fragment, err)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deploy") / "bdkd"
    args = ["train", str(CONFIGS / "bdkd.yaml"), "train.epochs=8", "train.progress=false"]
    assert main([*args, "--out", str(out)]) == 0
    return out


def session(path: Path):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    props = s.get_modelmeta().custom_metadata_map.items()
    meta = {k[5:]: json.loads(v) for k, v in props if k.startswith("bdkd.")}
    return s, meta


def digits_split(run: Path, split: str):
    """The run's val or test images as the file takes them, with labels."""
    from bdkd.deploy.run import load_run

    dep = load_run(run)
    loader = dep.loaders.val if split == "val" else dep.loaders.test
    xs, ys = zip(*[(dep.transform(x), y) for x, y in loader], strict=True)
    return torch.cat(xs).numpy(), torch.cat(ys)


def test_every_run_reports_abstention_and_conformal_sets(run):
    summary = json.loads((run / "summary.json").read_text())
    m = summary["results"]["student"]
    assert 0 < m["aurc"] < 1 and m["e_aurc"] >= 0 and 0 < m["abstain_threshold"] <= 1
    assert m["lac_coverage"] >= 0.8 and m["aps_size"] >= 1 and m["temperature_reliable"]
    assert (run / "risk_coverage.png").stat().st_size > 1000
    assert "## Abstention and prediction sets" in (run / "report.md").read_text()


def test_int8_export_keeps_calibration_and_carries_its_thresholds(run, tmp_path, capsys):
    float_file, int8_file = tmp_path / "f.onnx", tmp_path / "q.onnx"
    assert main(["export", str(run), "--out", str(float_file), "--calibrated"]) == 0
    args = ["export", str(run), "--out", str(int8_file), "--calibrated", "--quantize", "int8"]
    assert main([*args, "--target-risk", "0.1", "--alpha", "0.2"]) == 0
    q, meta = session(int8_file)
    f, _ = session(float_file)
    x, y = digits_split(run, "test")
    qz = q.run(None, {q.get_inputs()[0].name: x})[0]
    fz = f.run(None, {f.get_inputs()[0].name: x})[0]
    assert (qz.argmax(1) == fz.argmax(1)).mean() >= 0.97
    assert any(
        n.op_type == "QuantizeLinear" for n in __import__("onnx").load(str(int8_file)).graph.node
    )
    assert meta["quantized"] == "int8" and meta["temperature_folded"]
    assert meta["target_risk"] == 0.1 and meta["conformal_alpha"] == 0.2
    # the thresholds are the file's own: recomputed here from its validation outputs
    vx, vy = digits_split(run, "val")
    vp = torch.softmax(torch.from_numpy(q.run(None, {q.get_inputs()[0].name: vx})[0]).double(), 1)
    conf, correct = vp.max(1).values, vp.argmax(1) == vy
    assert meta["abstain_threshold"] == pytest.approx(cal.threshold_for_risk(conf, correct, 0.1))
    scores = cal.conformal.conformal_scores(vp, vy, "lac")
    assert meta["lac_qhat"] == pytest.approx(cal.conformal_quantile(scores, 0.2))
    # the record: float and int8, before and after the refit, size, latency, from the files
    record = json.loads((run / "summary.json").read_text())["exports"][-1]
    assert record["size_bytes"] == int8_file.stat().st_size < record["float"]["size_bytes"]
    assert record["int8_before_refit"]["temperature"] == pytest.approx(record["temperature"])
    assert record["agreement_with_float"] >= 0.97
    assert set(record["latency_ms_per_image"]) == {"batch_1", "batch_64"}
    before, after = record["int8_before_refit"], record["test"]
    assert after["ece"] == pytest.approx(before["ece_after_ts"], abs=1e-6)
    assert "int8" in (run / "report.md").read_text().split("## Exported")[1]


def test_export_flags_are_checked_before_anything_is_written(run, tmp_path, capsys):
    out = tmp_path / "x.pt"
    fails(
        ["export", run, "--out", out, "--format", "torchscript", "--quantize", "int8"],
        capsys,
        "--quantize int8 needs --format onnx",
    )
    fails(
        ["export", run, "--out", tmp_path / "x.onnx", "--target-risk", "1.5"],
        capsys,
        "--target-risk",
    )
    fails(["export", run, "--out", tmp_path / "x.onnx", "--alpha", "0"], capsys, "--alpha")
    assert not list(tmp_path.iterdir())


def test_an_untrustworthy_temperature_is_not_folded_silently(run, tmp_path, capsys):
    copy = shutil.copytree(run, tmp_path / "r")
    summary = json.loads((copy / "summary.json").read_text())
    summary["results"]["student"]["temperature_reliable"] = False
    summary["results"]["student"]["temperature_note"] = "the validation split has 2 errors"
    (copy / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "s.onnx"
    fails(
        ["export", copy, "--out", out, "--calibrated"],
        capsys,
        "not to be trusted",
        "--force-temperature",
    )
    assert not out.exists()
    assert (
        main(["export", str(copy), "--out", str(out), "--calibrated", "--force-temperature"]) == 0
    )


def test_a_nearly_perfect_validation_split_flags_its_temperature(tmp_path, capsys):
    run = tmp_path / "teacher"
    args = ["train", str(CONFIGS / "teacher.yaml"), "train.epochs=30", "train.progress=false"]
    assert main([*args, "--out", str(run)]) == 0
    m = json.loads((run / "summary.json").read_text())["results"]["teacher"]
    saved = np.load(run / "predictions" / "teacher.npz")
    errors = int((saved["val_logits"].argmax(1) != saved["val_labels"]).sum())
    warned = "warning: teacher's fitted temperature" in capsys.readouterr().err
    assert (
        m["temperature_reliable"] == (errors >= cal.MIN_ERRORS)
        and warned != m["temperature_reliable"]
    )
    assert errors < cal.MIN_ERRORS  # 30 epochs on digits: almost no validation errors
    assert "too few" in m["temperature_note"]


def test_shift_suite_on_the_run_and_on_an_int8_file(run, tmp_path, capsys):
    int8_file = tmp_path / "q.onnx"
    assert main(["export", str(run), "--out", str(int8_file), "--quantize", "int8"]) == 0
    out = tmp_path / "shift" / "net"
    args = ["eval", str(run), "--shift", "--corruptions", "gaussian_noise,rotation"]
    assert main([*args, "--severities", "1,5", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert set(result["corruptions"]) == {"gaussian_noise", "rotation"}
    r = result["corruptions"]["rotation"]
    assert r["5"]["accuracy"] < r["1"]["accuracy"] <= result["clean"]["accuracy"] + 0.02
    assert "| rotation |" in out.with_suffix(".md").read_text()
    again = tmp_path / "again"
    assert main([*args, "--severities", "1,5", "--out", str(again)]) == 0
    assert json.loads(again.with_suffix(".json").read_text()) == result  # deterministic
    assert (
        main([*args, "--severities", "1", "--file", str(int8_file), "--out", str(tmp_path / "q")])
        == 0
    )
    assert json.loads((tmp_path / "q.json").read_text())["clean"]["accuracy"] > 0.5
    fails(["eval", run, "--shift", "--corruptions", "fog"], capsys, "unknown ['fog']")
    fails(["eval", run, "--shift", "--severities", "7"], capsys, "--severities")
    fails(["eval", run, "--shift", "--out", out], capsys, "exists")  # never overwritten


def test_shift_on_a_users_own_folder(run, tmp_path, capsys):
    from PIL import Image

    from bdkd.data import load_dataset

    test = load_dataset("digits", val_size=0.1).test
    folder = tmp_path / "mine"
    for i in range(40):
        label = int(test.labels[i])
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.images[i, 0].numpy()).save(folder / str(label) / f"{i}.png")
    for c in range(10):
        (folder / str(c)).mkdir(exist_ok=True)
    out = tmp_path / "mine_shift"
    assert main(["eval", str(run), "--shift", str(folder), "--out", str(out)]) == 0
    shifted = json.loads(out.with_suffix(".json").read_text())["shifted"]
    assert shifted["accuracy"] > 0.5
    wrong = tmp_path / "wrong"
    (wrong / "cat").mkdir(parents=True)
    fails(["eval", run, "--shift", wrong, "--out", tmp_path / "w"], capsys, "not the run's classes")
    assert not (tmp_path / "w.json").exists()


def test_corruptions_are_deterministic_and_change_images():
    from bdkd.data.corrupt import CORRUPTIONS, corrupt

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 1, 16, 16, generator=g) * 255).to(torch.uint8)
    x[:, :, 4:12, 4:12] = 255
    for name in CORRUPTIONS:
        a, b, c = corrupt(x, name, 3, 1), corrupt(x, name, 3, 1), corrupt(x, name, 5, 1)
        assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == x.shape, name
        assert not torch.equal(a, x) and not torch.equal(a, c), name
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "fog", 1, 0)
    jpeg = corrupt(torch.full((1, 1, 16, 16), 77, dtype=torch.uint8), "jpeg", 5, 0)
    # a flat image stays flat: only its DC coefficient is rounded (step 20 at quality 40)
    assert jpeg.unique().numel() == 1 and abs(int(jpeg[0, 0, 0, 0]) - 77) <= 20 // 8 + 1
    assert np.isclose(
        float(corrupt(x, "contrast", 5, 0).float().mean()), float(x.float().mean()), atol=1.5
    )
