"""What the methods benchmark runs: regimes, every method's equal search space, the ablations.

The protocol is `bdkd tune`'s (docs/tune.md): every method gets the same budget, six
settings on the same validation split — its temperature over {1, 2, 4} times two values of
its one main knob (USKD, which has no temperature, six settings of its three weights; the
student from scratch has nothing to tune). Settings are chosen on seed 0's validation split,
by top-1 (the main tables) and by NLL (the second tables); the chosen settings are then
trained on seeds 1-5, which are the only runs reported. The spaces below are bdkd tune's
space entries (``--space`` YAML form), one per benchmark entry.
"""

from __future__ import annotations

from typing import Any

TEMPERATURES = [1.0, 2.0, 4.0]
SELECTION_SEED = 0
REPORT_SEEDS = (1, 2, 3, 4, 5)
BUDGET = 6

REGIMES = {
    1: {
        "title": "Regime 1 — the calibration regime: 2,000 training images, no augmentation, "
        "SGD + cosine, 40 epochs; cnn_medium teacher, cnn_small student (1/4)",
        "base": "regime1_base.yaml",
        "teacher": {"model": "cnn_medium"},
        "student": {"model": "cnn_small"},
        "dkd_warmup": 5,
    },
    2: {
        "title": "Regime 2 — full data, short schedule: 55,000 images, crop + flip, SGD + "
        "cosine, 3 epochs; cnn_small teacher, width-2 student (1/14)",
        "base": "regime2_base.yaml",
        "teacher": {"model": "cnn_small"},
        "student": {"model": "cnn", "kwargs": {"width": 2}},
        "dkd_warmup": 1,
    },
    3: {
        "title": "Regime 3 — the usual recipe: 3,000 images, crop + flip, SGD + cosine, "
        "30 epochs; cnn_medium teacher, cnn_small student (1/4)",
        "base": "regime3_base.yaml",
        "teacher": {"model": "cnn_medium"},
        "student": {"model": "cnn_small"},
        "dkd_warmup": 5,
    },
    4: {
        "title": "Regime 4 — AdamW at a constant learning rate, no augmentation: 3,000 images, "
        "30 epochs; cnn_medium teacher, cnn_small student (1/4)",
        "base": "regime4_base.yaml",
        "teacher": {"model": "cnn_medium"},
        "student": {"model": "cnn_small"},
        "dkd_warmup": 5,
    },
}

# name -> label, method, kind, main knob (for the tables), space (bdkd tune's axes)
METHODS: dict[str, dict[str, Any]] = {
    "scratch": {"label": "student from scratch", "method": "scratch", "kind": "scratch",
                "knob": "–", "space": {}},
    "kd": {"label": "KD", "method": "kd", "kind": "offline", "knob": "KD weight α (CE 1 − α)",
           "space": {"temperature": TEMPERATURES,
                     "ce_weight,distill_weight": [[0.5, 0.5], [0.1, 0.9]]}},
    "dkd": {"label": "DKD", "method": "dkd", "kind": "offline", "knob": "β (α = 1)",
            "space": {"temperature": TEMPERATURES, "alpha": [1.0], "beta": [2.0, 8.0]}},
    "nkd": {"label": "NKD", "method": "nkd", "kind": "offline", "knob": "γ",
            "space": {"temperature": TEMPERATURES, "gamma": [1.5, 3.5]}},
    "bdd": {"label": "BDD", "method": "bdd", "kind": "offline",
            "knob": "reverse weight w_r (w_f = 1)",
            "space": {"forward_temperature,reverse_temperature": [[t, t] for t in TEMPERATURES],
                      "forward_weight": [1.0], "reverse_weight": [0.5, 1.0]}},
    "abkd": {"label": "ABKD", "method": "abkd", "kind": "offline",
             "knob": "(α, β), loss weight 64 (reference)",
             "space": {"temperature": TEMPERATURES, "distill_weight": [64.0],
                       "alpha,beta": [[0.8, 0.3], [0.5, 0.5]]}},
    "dist": {"label": "DIST", "method": "dist", "kind": "offline", "knob": "β = γ",
             "space": {"temperature": TEMPERATURES, "beta,gamma": [[1.0, 1.0], [2.0, 2.0]]}},
    "uskd": {"label": "USKD", "method": "uskd", "kind": "self", "knob": "(α, β, μ); no temperature",
             "space": {"alpha": [0.1, 1.0],
                       "beta,mu": [[0.1, 0.1], [0.1, 0.005], [0.5, 0.1]]}},
    "dml": {"label": "DML", "method": "dml", "kind": "online", "knob": "KL weight",
            "space": {"temperature": TEMPERATURES, "kl_weight": [0.5, 1.0]}},
    "kdcl": {"label": "KDCL", "method": "kdcl", "kind": "online", "knob": "ensemble",
             "space": {"temperature": TEMPERATURES, "ensemble": ["mean", "min_logit"]}},
    "bdkd_hard": {"label": "BD-KD (hard)", "method": "bdkd", "kind": "online",
                  "knob": "high (low = 1)",
                  "space": {"temperature": TEMPERATURES, "rule": ["hard"], "low": [1.0],
                            "high": [2.0, 3.0]}},
    "bdkd_soft": {"label": "BD-KD (soft)", "method": "bdkd", "kind": "online",
                  "knob": "sharpness k (high 3, low 1)",
                  "space": {"temperature": TEMPERATURES, "rule": ["soft"], "high": [3.0],
                            "low": [1.0], "sharpness": [1.0, 4.0]}},
}  # fmt: skip

# Every method in the calibration regime; outside it, the baselines people compare with
# (KD, DKD, NKD offline; DML, KDCL online) and BD-KD, to check the conclusion elsewhere.
CHECK = ["scratch", "kd", "dkd", "nkd", "dml", "kdcl", "bdkd_hard"]
REGIME_METHODS = {1: list(METHODS), 2: CHECK, 3: CHECK, 4: CHECK}

BDKD = "bdkd_hard"
# benchmark rule -> (bdkd tune --select, column name, direction)
SELECTIONS = {"accuracy": ("top1", "top-1", "max"), "nll": ("nll", "NLL", "min")}


def spaces(regime: int) -> dict[str, dict[str, Any]]:
    """The tune space entries of a regime's methods (DKD's warm-up as the regime has it)."""
    out = {}
    for name in REGIME_METHODS[regime]:
        m = METHODS[name]
        if m["kind"] == "scratch":
            continue
        space = dict(m["space"])
        if m["method"] == "dkd":
            space["warmup_epochs"] = [REGIMES[regime]["dkd_warmup"]]
        out[name] = {"method": m["method"], "label": m["label"], "space": space}
    return out


def ablations(chosen: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """BD-KD's parts, each at BD-KD (hard)'s chosen setting (``chosen``): one-setting tune
    space entries."""
    t = chosen["temperature"]
    high = chosen.get("high", 3.0)

    def one(method: str, label: str, setting: dict[str, Any]) -> dict[str, Any]:
        return {"method": method, "label": label, "space": {k: [v] for k, v in setting.items()}}

    return {
        "ablation_no_balance": one(
            "bdkd", "BD-KD, no balancing (w_f = w_r = 1)", {**chosen, "high": 1.0, "low": 1.0}
        ),
        "ablation_inverted": one(
            "bdkd",
            "BD-KD, inverted rule (high and low swapped)",
            {**chosen, "high": 1.0, "low": high},
        ),
        "ablation_teacher_reverse": one(
            "bdkd",
            "BD-KD, teacher term KL(p‖q) instead of KL(q‖p)",
            {**chosen, "teacher_divergence": "forward_kl"},
        ),
        "ablation_dml_same_t": one(
            "dml", f"DML at BD-KD's temperature (T = {t:g})", {"temperature": t, "kl_weight": 1.0}
        ),
        "ablation_offline_student_term": one(
            "bdkd_student",
            "BD-KD's student term offline, from the pre-trained teacher",
            {"temperature": t, "rule": chosen.get("rule", "hard"), "high": high,
             "low": chosen.get("low", 1.0)},
        ),
    }  # fmt: skip


def setting_label(spec: dict[str, Any]) -> str:
    """A short text of a setting (temperatures first)."""
    first = [k for k in spec if "temperature" in k]
    rest = [k for k in spec if k not in first and k != "name"]  # "name": the old runner's
    items = [f"{k} {spec[k]}" for k in [*first, *rest]]
    return ", ".join(items) or "–"
