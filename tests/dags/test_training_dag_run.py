"""An end-to-end `dag.test()` run of the training DAG on a small config."""

import json


def test_training_dag_runs_data_train_evaluate(dagbag, tmp_path, monkeypatch):
    monkeypatch.setenv("SECMLOPS_WORKDIR", str(tmp_path))
    dag = dagbag.get_dag("secmlops_training")
    run = dag.test(
        run_conf={"images": 24, "seed": 3, "epochs": 1, "input_size": [128, 160]},
    )
    assert run.state == "success"
    data_dir = tmp_path / "data" / "synthetic-n24-seed3"
    assert (data_dir / "annotations.json").exists()
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "model" / "model.safetensors").exists()
    report = json.loads((run_dir / "evaluation-test.json").read_text())
    assert report["split"] == "test" and 0.0 <= report["mAP50"] <= 1.0
    card = json.loads((run_dir / "model" / "model.json").read_text())
    assert card["training"]["epochs"] == 1 and card["input_size"] == [128, 160]
