"""Robustness judged as a pedestrian detection system is: one table per camera, measured in one run.

For each model (undefended, the lifecycle's defended one, the new defences), the policy's
robustness suite (`secmlops evaluate --attacks`) on one held-out split, and a table of the
figures a PDS is judged by, at each model's signed operating point: recall (people found),
MR^-2 (log-average miss rate) and mAP@0.5, for clean images, TOG-vanishing, PGD on the training
losses, the universal patch, the person-worn patch (and its random control) and the per-image
worst case, at the suite's largest eps; then the sanity section's eps sweep to 64/255 (recall
under vanishing and under the worst case), which shows whether an attack is masked; then each
model's gate verdict under the policy.

    python benchmarks/pedestrian_robustness.py --data runs/data --split test --policy policy.yaml \
        --model undefended=runs/model --model defended=runs/model-defended \
        --baseline runs/model --out runs/pedestrian

`--report NAME=FILE` reuses a report an earlier run wrote instead of attacking that model again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from named_paths import name_path_pairs

from secmlops.evaluation.gate_checks import evaluate_gate
from secmlops.evaluation.robustness import evaluate_robustness
from secmlops.fsutil import atomic_write_json
from secmlops.policy import load_policy

COLUMNS = ("clean", "vanishing", "pgd", "patch", "person_patch", "person_patch_random", "worst")


def figures(report: dict[str, Any], column: str) -> dict[str, float] | None:
    """The figures of one table column of a report (None: the report lacks that attack)."""
    level = max(report["suite"]["linf_eps_levels"])
    name = {
        "clean": None,
        "vanishing": f"vanishing_linf_{level}",
        "pgd": f"pgd_linf_{level}",
        "worst": f"worst_case_linf_{level}",
    }.get(column, column)
    entry = report["clean"] if name is None else report["attacks"].get(name)
    return entry if entry and "recall" in entry else None


def table(reports: dict[str, dict[str, Any]]) -> str:
    """The markdown table: one row per model, recall / MR^-2 / mAP@0.5 per column."""
    level = max(next(iter(reports.values()))["suite"]["linf_eps_levels"])
    heads = {"vanishing": f"vanishing {level}/255", "pgd": f"loss PGD {level}/255",
             "worst": f"worst case {level}/255", "person_patch_random": "random person patch",
             "person_patch": "person patch", "patch": "RobustDPatch", "clean": "clean"}  # fmt: skip
    lines = [
        "| model | " + " | ".join(heads[c] for c in COLUMNS) + " |",
        "| --- |" + " --- |" * len(COLUMNS),
    ]
    for name, report in reports.items():
        cells = []
        for column in COLUMNS:
            f = figures(report, column)
            cells.append(f"{f['recall']:.3f} / {f['mr2']:.3f} / {f['mAP50']:.3f}" if f else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_table(reports: dict[str, dict[str, Any]]) -> str:
    """Recall under vanishing | worst case per eps level of each report's sanity section."""
    first = next(r for r in reports.values() if r.get("sanity"))
    levels = [row["eps"] for row in first["sanity"]["sweep"]]
    lines = [
        "| model | " + " | ".join(f"{k}/255" for k in levels) + " | 4x steps | 4x restarts "
        "| transfer |",
        "| --- |" + " --- |" * (len(levels) + 3),
    ]
    for name, report in reports.items():
        sanity = report.get("sanity")
        if not sanity:
            continue
        cells = [f"{row['vanishing']:.2f} / {row['worst_case']:.2f}" for row in sanity["sweep"]]
        effort, transfer = sanity["effort"], sanity["transfer"]
        cells += [f"{effort[k]['recall']:.2f}" for k in ("more_steps", "more_restarts")]
        moved = transfer["transfer_recall"]
        cells.append(f"{moved:.2f}" if moved is not None else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--policy", type=Path, required=True)
    parser.add_argument("--model", action="append", default=[], help="NAME=MODEL_DIR to attack")
    parser.add_argument("--report", action="append", default=[], help="NAME=REPORT to reuse")
    parser.add_argument("--baseline", type=Path, help="the undefended model (transfer, cost)")
    parser.add_argument("--out", type=Path, help="folder for the reports and the tables")
    parser.add_argument("--max-images", type=int)
    args = parser.parse_args()

    policy = load_policy(args.policy)
    reports: dict[str, dict[str, Any]] = {}
    for name, path in name_path_pairs(args.report, "report"):
        reports[name] = json.loads(path.read_text())
    for name, model_dir in name_path_pairs(args.model, "model"):
        baseline = args.baseline if args.baseline and args.baseline != model_dir else None
        print(f"attacking {name} ({model_dir}) ...", flush=True)
        reports[name] = evaluate_robustness(
            model_dir, args.data, args.split, policy.gate.attacks, baseline_dir=baseline,
            max_images=args.max_images,
        )  # fmt: skip
        if args.out:
            atomic_write_json(args.out / f"robustness-{name}.json", reports[name])
    if not reports:
        raise SystemExit("give at least one --model or --report")
    text = [
        f"recall at the operating point / MR^-2 / mAP@0.5 on {args.data} ({args.split}):",
        table(reports),
        "",
        "eps sweep on the sanity subset, recall under vanishing / worst case:",
        sweep_table(reports),
        "",
        "gate under " + str(args.policy) + ":",
    ]
    for name, report in reports.items():
        text.append(f"- {name}: {evaluate_gate(report, policy.gate).message()}")
    output = "\n".join(text)
    print(output)
    if args.out:
        (args.out / "pedestrian_robustness.md").write_text(output + "\n")


if __name__ == "__main__":
    main()
