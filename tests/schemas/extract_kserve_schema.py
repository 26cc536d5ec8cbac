"""Write kserve-inferenceservice-v1beta1.json from KServe's InferenceService CRD.

The tests check deploy/kserve/ against this schema offline. To move it to another KServe
release, take config/crd/full/serving.kserve.io_inferenceservices.yaml from the kserve/kserve
repository at that release's tag and run
    python tests/schemas/extract_kserve_schema.py CRD.yaml TAG COMMIT

What is kept: the v1beta1 openAPIV3Schema of apiVersion, kind, metadata and spec.predictor,
whole (pod fields, containers, volumes, autoscaling), descriptions dropped. What is not
checked (replaced by an open object): status, the explainer and transformer components, and
the predictor's framework-specific model specs (model, sklearn, triton, ...), which a custom
container does not use.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

OUT = Path(__file__).with_name("kserve-inferenceservice-v1beta1.json")
UNCHECKED = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
FRAMEWORK_SPECS = [
    *("model", "huggingface", "lightgbm", "onnx", "paddle", "pmml", "pytorch"),
    *("sklearn", "tensorflow", "triton", "xgboost", "workerSpec"),
]


def strip_descriptions(node: object) -> object:
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def main(crd_path: str, tag: str, commit: str) -> None:
    crd = yaml.safe_load(Path(crd_path).read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    schema = version["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    predictor = spec["properties"]["predictor"]
    for name in FRAMEWORK_SPECS:
        predictor["properties"][name] = UNCHECKED
    for name in spec["properties"]:
        if name != "predictor":
            spec["properties"][name] = UNCHECKED
    schema["properties"]["status"] = UNCHECKED
    out = strip_descriptions(schema)
    assert isinstance(out, dict)
    out = {
        "$comment": f"KServe {tag} ({commit}), {crd['metadata']['name']} v1beta1, "
        "subset made by tests/schemas/extract_kserve_schema.py",
        **out,
    }
    OUT.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
