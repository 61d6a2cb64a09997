"""The CI-sized soak: 60 seconds of mixed conversations against the three processes (make soak runs 10 minutes)."""

from __future__ import annotations

import json

import pytest

from tests import soak


def test_rss_growth_uses_post_warmup_baseline() -> None:
    samples = [
        (0.0, 50_000),
        (5.0, 90_000),
        (10.0, 100_000),
        (12.0, 100_000),
        (14.0, 100_000),
        (60.0, 104_000),
    ]
    baseline, final, growth = soak.rss_growth(samples, warmup=10.0)
    assert baseline == 100_000 and final == 100_000 and growth == 0.0
    samples += [(62.0, 120_000), (64.0, 120_000)]
    assert soak.rss_growth(samples, warmup=10.0)[2] == pytest.approx(0.2)


def test_arguments_are_validated() -> None:
    with pytest.raises(SystemExit):
        soak.main(["--seconds", "0"])


@pytest.mark.slow
def test_soak_60_seconds(capsys: pytest.CaptureFixture[str]) -> None:
    code = soak.main(["--seconds", "60", "--rate", "5"])
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == {}, report
    assert report["turns"] >= 290, report
    for name, rss in report["rss_kib"].items():
        assert rss["growth_pct"] < 10.0, (name, rss)
    assert code == 0, report
