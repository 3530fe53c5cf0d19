"""metrics.jsonl records, truncation on resume, and wandb in offline mode (no account, no network)."""
import json

from megaconcept.config.schema import LoggingSection
from megaconcept.train.metrics import MetricLogger, truncate_after

RECORD = {"step": 1, "tokens_seen": 10, "samples_seen": 1, "loss": 2.5, "lr": 1e-3, "grad_norm": 0.5,
          "tokens_per_sec": 100.0}


def test_jsonl_and_resume_truncation(tmp_path, capsys):
    logger = MetricLogger(str(tmp_path), True, LoggingSection(), {}, resume_step=0)
    for step in (1, 2, 3):
        logger.log({**RECORD, "step": step})
    (tmp_path / "metrics.jsonl").open("a").write('{"step": 4, "lo')  # cut short by a kill
    truncate_after(tmp_path / "metrics.jsonl", 2)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert set(RECORD) <= set(rows[0])
    assert "step      1 | loss 2.5000" in capsys.readouterr().out


def test_other_ranks_write_nothing(tmp_path):
    MetricLogger(str(tmp_path), False, LoggingSection(wandb=True), {}, resume_step=0).log(RECORD)
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "wandb").exists()


def test_wandb_offline_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = MetricLogger(str(tmp_path), True, LoggingSection(wandb=True), {"seed": 1}, resume_step=0)
    logger.log(RECORD)
    logger.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs and any(p.suffix == ".wandb" for p in runs[0].iterdir())
