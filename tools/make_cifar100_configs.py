"""Write configs/cifar100/: the CIFAR-100 protocol (METHODS.md section 6) for six pairs.

    python tools/make_cifar100_configs.py

Teachers first (configs/cifar100/teachers/<model>.yaml), then each pair's methods
(configs/cifar100/<teacher>-<student>/<method>.yaml), which read the teacher's run directory.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "configs" / "cifar100"
PAIRS = [
    ("wrn_40_2", "wrn_16_2"),
    ("wrn_40_2", "wrn_40_1"),
    ("resnet56", "resnet20"),
    ("resnet110", "resnet32"),
    ("resnet32x4", "resnet8x4"),
    ("vgg13", "vgg8"),
]
OFFLINE = {
    "kd": "{name: kd, temperature: 4.0, ce_weight: 0.1, distill_weight: 0.9}",
    "dkd": "{name: dkd, alpha: 1.0, beta: BETA, temperature: 4.0, warmup_epochs: 20}",
    "nkd": "{name: nkd, temperature: 3.0, gamma: 3.5}",
    "bdd": "{name: bdd, forward_temperature: 4.0, reverse_temperature: 4.0, forward_weight: 1.0, reverse_weight: 1.0}",
    # the reference's loss weight (CE + 64 D_AB), METHODS.md section 7
    "abkd": "{name: abkd, alpha: 0.8, beta: 0.3, temperature: 4.0, distill_weight: 64.0}",
    "dist": "{name: dist, beta: 1.0, gamma: 1.0, temperature: 4.0}",
    "bdkd_student": "{name: bdkd_student, temperature: 1.0, rule: hard, high: 3.0, low: 1.0}",
}
ONLINE = {
    "dml": "{name: dml, temperature: 1.0}",
    "kdcl": "{name: kdcl, temperature: 2.0, ensemble: mean}",
    "bdkd": "{name: bdkd, temperature: 1.0, rule: hard, high: 3.0, low: 1.0}",
}

BASE = """# CIFAR-100, the CRD protocol (METHODS.md section 6): SGD momentum 0.9, batch 64, 240 epochs,
# lr 0.05 x0.1 at 150/180/210, weight decay 5e-4, RandomCrop(32, pad 4) + flip. As in the
# protocol, all 50,000 training images train and the last epoch is evaluated on test, so the
# numbers compare with the published tables. There is no validation split (val_size 0), so
# temperature scaling is off: nothing is ever fitted or chosen on test. For ECE after
# temperature scaling, hold images out with data.val_size=5000 eval.temperature_scaling=true
# (the run then trains on 45,000 and is not comparable with the tables).
# Set data.root to the directory holding cifar-100-python/.
data:
  dataset: cifar100
  root: data/cifar100
  val_size: 0
  batch_size: 64
  eval_batch_size: 1000
optim: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4}
schedule: {name: multistep, milestones: [150, 180, 210], gamma: 0.1}
train: {epochs: 240, seed: 0, device: auto}
eval: {bins: 15, temperature_scaling: false}
"""


def main() -> None:
    (ROOT / "teachers").mkdir(parents=True, exist_ok=True)
    (ROOT / "base.yaml").write_text(BASE)
    for teacher in sorted({t for t, _ in PAIRS}):
        (ROOT / "teachers" / f"{teacher}.yaml").write_text(
            f"# Teacher {teacher} trained alone.\nbase: ../base.yaml\nmethod: {{name: scratch}}\n"
            f"networks:\n  teacher: {{model: {teacher}}}\noutput: {{name: cifar100-teacher-{teacher}}}\n"
        )
    for teacher, student in PAIRS:
        pair = ROOT / f"{teacher}-{student}"
        pair.mkdir(exist_ok=True)
        (pair / "scratch.yaml").write_text(
            f"# Student {student} alone (the baseline).\nbase: ../base.yaml\nmethod: {{name: scratch}}\n"
            f"networks:\n  student: {{model: {student}}}\noutput: {{name: cifar100-{student}-scratch}}\n"
        )
        for method, spec in OFFLINE.items():
            spec = spec.replace(
                "BETA", "6.0" if (teacher, student) == ("wrn_40_2", "wrn_16_2") else "8.0"
            )
            (pair / f"{method}.yaml").write_text(
                f"# Offline {method.upper().replace('_STUDENT', ' student term')}: {teacher} (train teachers/{teacher}.yaml first) -> {student}.\n"
                f"base: ../base.yaml\nmethod: {spec}\nnetworks:\n"
                f"  teacher: {{model: {teacher}, checkpoint: runs/cifar100-teacher-{teacher}}}\n"
                f"  student: {{model: {student}}}\noutput: {{name: cifar100-{teacher}-{student}-{method}}}\n"
            )
        for method, spec in ONLINE.items():
            (pair / f"{method}.yaml").write_text(
                f"# Online {method.upper()}: {teacher} and {student} train together from scratch.\n"
                f"base: ../base.yaml\nmethod: {spec}\nnetworks:\n"
                f"  teacher: {{model: {teacher}}}\n  student: {{model: {student}}}\n"
                f"output: {{name: cifar100-{teacher}-{student}-{method}}}\n"
            )


if __name__ == "__main__":
    main()
