"""DICOM folder in -> predictions CSV and attention overlays out.

Trains a small model on cxr1k (or loads one with --model), reads every DICOM file of a folder
(the bundled real DICOM radiographs by default; compressed ones need the [dicom] extra), and
writes predictions.csv plus one attention-overlay PNG per image.

    python examples/dicom_folder_predict.py --out dicom_predictions/
"""

import argparse
from pathlib import Path

import numpy as np

from dp_sklearn import ContrastivePretrainer, DeepPneumoniaClassifier, MaskAttentionClassifier
from dp_sklearn.cli import save_overlays
from dp_sklearn.data.io import read_images
from dp_sklearn.datasets import DICOM_DIR, load_cxr1k


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dicom-dir", default=str(DICOM_DIR))
    parser.add_argument("--out", default="dicom_predictions")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--subsample", type=int, default=None)
    args = parser.parse_args(argv)

    data = load_cxr1k(image_size=args.image_size)
    X, y, masks = data.images, data.target, data.masks
    if args.subsample:
        keep = np.random.RandomState(0).permutation(len(y))[: args.subsample]
        X, y, masks = X[keep], y[keep], masks[keep]
    clf = DeepPneumoniaClassifier(backbone="resnet10_half", image_size=args.image_size, batch_size=min(64, len(y)),
                                  pretrainer=ContrastivePretrainer(max_epochs=args.epochs, lr=2e-3),
                                  classifier=MaskAttentionClassifier(max_epochs=args.epochs, lr=2e-3),
                                  verbose=0, random_state=0)
    clf.fit(X, np.array(data.target_names)[y], masks=masks)

    paths = sorted(str(p) for p in Path(args.dicom_dir).glob("*.dcm"))
    # Non-radiographs (a CT slice is among the bundled files) are skipped and reported, not predicted.
    result = read_images(paths, image_size=args.image_size, on_error="skip", on_non_radiograph="raise")
    for err in result.errors:
        print(f"skipped {err.path}: {err.error}")
    read_paths = [paths[i] for i in result.indices]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    proba = clf.predict_proba(result.images)
    with open(out / "predictions.csv", "w") as f:
        f.write("path,prediction," + ",".join(f"p_{c}" for c in clf.classes_) + "\n")
        for p, row in zip(read_paths, proba):
            f.write(f"{Path(p).name},{clf.classes_[row.argmax()]}," + ",".join(f"{v:.4f}" for v in row) + "\n")
    save_overlays(read_paths, clf.attention_maps(result.images), out, images=result.images)
    print(f"wrote {out / 'predictions.csv'} and {len(read_paths)} overlays")


if __name__ == "__main__":
    main()
