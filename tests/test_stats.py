"""bdkd.stats (the paired statistics of bdkd tune and the benchmarks), against scipy and
hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bdkd.stats import holm, paired


def test_paired_t_matches_scipy_and_the_formula():
    from scipy import stats

    a = [85.7, 85.9, 85.6, 85.8, 86.1]
    b = [85.2, 85.4, 85.5, 84.9, 85.6]
    result = paired(a, b)
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(d) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 4)
    assert result.mean == pytest.approx(mean)
    assert result.p == pytest.approx(stats.ttest_rel(a, b).pvalue)
    half = stats.t.ppf(0.975, 4) * sd / math.sqrt(5)
    assert (result.low, result.high) == pytest.approx((mean - half, mean + half))
    assert "[+" in result.text() and "p 0.0" in result.text()


def test_identical_and_constant_differences():
    assert paired([1.0, 2.0], [1.0, 2.0]).p == 1.0
    shifted = paired([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert shifted.mean == 1.0 and shifted.p == 0.0
    with pytest.raises(ValueError, match="equal length"):
        paired([1.0], [1.0])


def test_holm_adjustment():
    # p sorted: 0.01 (x3 = 0.03), 0.02 (x2 = 0.04), 0.04 (x1 = 0.04), monotone
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def _llm_benchmark():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "llm" / "run.py"
    spec = importlib.util.spec_from_file_location("bdkd_llm_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_llm_benchmark_pairs_bdkd_with_every_objective_seed_by_seed():
    from scipy import stats

    bench = _llm_benchmark()
    names = ["forward_kl", "reverse_kl", "bdkd"]
    ppl = {"forward_kl": [120.0, 118.0, 121.0], "reverse_kl": [150.0, 149.0, 155.0]}
    ppl["bdkd"] = [115.0, 117.0, 116.0]

    def summary(p: float) -> dict:
        metrics = {"perplexity": p, "ece": 0.05, "nll": 4.8, "teacher_top1_agreement": 0.46}
        return {"results": {"student": metrics}}

    summaries = {n: [summary(p) for p in ppl[n]] for n in names}
    lines = bench.paired_lines(names, summaries, [0, 1, 2])
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ")}
    assert set(rows) == {"objective", "forward KL", "reverse KL"}
    p_fwd = stats.ttest_rel(ppl["bdkd"], ppl["forward_kl"]).pvalue
    p_rev = stats.ttest_rel(ppl["bdkd"], ppl["reverse_kl"]).pvalue
    # Holm over the two comparisons: the smaller p doubled, the larger at least that
    smaller, larger = sorted([p_fwd, p_rev])
    adjusted = {p_fwd: None, p_rev: None}
    adjusted[smaller] = min(1.0, 2 * smaller)
    adjusted[larger] = max(adjusted[smaller], larger)
    assert rows["forward KL"].split(" | ")[1].startswith("-3.7 [")
    assert f"p {adjusted[p_fwd]:.3f}" in rows["forward KL"]
    assert rows["reverse KL"].split(" | ")[1].startswith("-35.3 [")
    assert f"p {adjusted[p_rev]:.3f}" in rows["reverse KL"]
    # equal metrics on every seed: difference 0, p 1
    assert "+0.00 [+0.00, +0.00], p 1.000" in rows["forward KL"]
    assert bench.paired_lines(names, summaries, [0]) == []
    assert bench.paired_lines(["forward_kl", "reverse_kl"], summaries, [0, 1, 2]) == []


def test_llm_benchmark_sweep_table_marks_the_lowest_validation_perplexity():
    bench = _llm_benchmark()

    def val(ppl: float) -> dict[str, float]:
        return {"perplexity": ppl, "nll": 4.9, "ece": 0.0612, "teacher_top1_agreement": 0.405}

    sweep = {"forward_kl": [val(142.2), val(158.4)], "reverse_kl": [val(6.1e10), val(268.1)]}
    chosen = {name: bench.choose(rows) for name, rows in sweep.items()}
    assert chosen == {"forward_kl": 0, "reverse_kl": 1}
    assert bench.choose([val(3.0), val(2.0), val(2.0)]) == 1
    lines = bench.sweep_lines(sweep, chosen)
    rows = [line for line in lines if line.startswith("| forward KL") or line.startswith("| rev")]
    assert len(rows) == 4
    assert rows[0].startswith("| forward KL | temperature 1.0 ★ | 142.20 | 4.900 | 6.12 | 40.5 |")
    assert "★" not in rows[1] and "★" not in rows[2] and "★" in rows[3]


def test_llm_benchmark_runs_jobs_at_once_and_names_the_failed_logs(tmp_path):
    import sys

    bench = _llm_benchmark()
    # each job marks its start and waits (up to argv[3] s, else exit 3) until 3 jobs have
    # started in its folder: only jobs that run at once all finish
    wait = (
        "import os, sys, time; d, t = sys.argv[2], time.time()\n"
        "open(os.path.join(d, sys.argv[1] + '.go'), 'w').close()\n"
        "while len([f for f in os.listdir(d) if f.endswith('.go')]) < 3:\n"
        "    time.sleep(0.05)\n"
        "    if time.time() - t > float(sys.argv[3]): sys.exit(3)\n"
        "print('threads', os.environ['OMP_NUM_THREADS']); sys.exit(int(sys.argv[4]))"
    )

    def jobs(folder, codes, patience):
        folder.mkdir()
        return [
            (
                f"job {i}",
                [sys.executable, "-c", wait, str(i), str(folder), patience, str(code)],
                folder / "logs" / f"{i}.log",
            )
            for i, code in enumerate(codes)
        ]

    together = jobs(tmp_path / "together", [0, 1, 0], "30")
    assert bench.run_parallel(together, 3) == [tmp_path / "together" / "logs" / "1.log"]
    for _, _, log in together:
        assert log.read_text().startswith("threads ")
    # one at a time, the first job waits for the others in vain
    alone = jobs(tmp_path / "alone", [0, 0, 0], "1")
    assert bench.run_parallel(alone, 1) == [job[2] for job in alone[:2]]
