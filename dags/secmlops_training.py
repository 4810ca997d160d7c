"""Train and evaluate the pedestrian detector: data -> train -> evaluate.

Every task is one call into `secmlops.pipeline`; this file only wires them. Nothing heavy is
imported at parse time (torch is imported inside the task bodies), so the dag-processor parses
it in well under a second.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task

DOC = """
### Train and evaluate the pedestrian detector

1. **prepare_data**: the synthetic street-scene dataset for (images, seed), generated once and
   reused; or an existing dataset folder given as `data_dir`.
2. **train_model**: the compact CenterNet detector (or a torchvision architecture), seeded and
   checkpointed every epoch; a retried task resumes from its last checkpoint.
3. **evaluate_model**: COCO mAP@0.5 and mAP@[.5:.95] on the test split.

Outputs live under `$SECMLOPS_WORKDIR/runs/<run id>/`.
"""


@dag(
    dag_id="secmlops_training",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    tags=["secmlops", "training"],
    doc_md=DOC,
    default_args={"owner": "secmlops", "retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        "data_dir": Param(
            "", type="string", description="Existing dataset folder; empty = synthetic data."
        ),
        "images": Param(1000, type="integer", minimum=10, description="Synthetic scenes."),
        "seed": Param(0, type="integer", minimum=0, description="Data and training seed."),
        "architecture": Param(
            "compact_centernet",
            type="string",
            enum=["compact_centernet", "fasterrcnn_mobilenet_v3", "fcos_resnet50", "ssdlite320"],
        ),
        "epochs": Param(None, type=["null", "integer"], minimum=1, description="Empty = auto."),
        "input_size": Param(
            None,
            type=["null", "array"],
            items={"type": "integer"},
            description="[height, width]; empty = from the data.",
        ),
    },
)
def secmlops_training():
    @task(execution_timeout=timedelta(minutes=30))
    def prepare_data() -> dict:
        from secmlops.pipeline import default_workdir, prepare_synthetic_data

        params = get_current_context()["params"]
        if params["data_dir"]:
            return {"data_dir": params["data_dir"]}
        return prepare_synthetic_data(str(default_workdir()), params["images"], params["seed"])

    @task(execution_timeout=timedelta(hours=6))
    def train_model(data: dict) -> dict:
        from secmlops.pipeline import default_workdir, safe_name, train_model

        context = get_current_context()
        params = context["params"]
        run_dir = default_workdir() / "runs" / safe_name(context["run_id"])
        return train_model(
            data["data_dir"],
            str(run_dir / "model"),
            architecture=params["architecture"],
            epochs=params["epochs"],
            seed=params["seed"],
            input_size=params["input_size"],
        )

    @task(execution_timeout=timedelta(minutes=30))
    def evaluate_model(data: dict, trained: dict) -> dict:
        from secmlops.pipeline import evaluate_model

        return evaluate_model(trained["model_dir"], data["data_dir"], split="test")

    data = prepare_data()
    evaluate_model(data, train_model(data))


secmlops_training()
