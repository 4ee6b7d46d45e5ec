"""A seeded DICOM fuzzer for :func:`dp_sklearn.data.io.read_image` (used by test_dicom_fuzz.py).

Each case mutates one of the real bundled DICOM files (a header value, a LUT, the transfer
syntax, the pixel stream, or the raw bytes of the file), writes it to disk, and reads it in a
forked child with a per-case timeout. The contract checked: the reader returns a finite float32
image in [0, 1], or raises one of the documented exceptions (a ``ValueError`` subclass naming the
file, ``MissingDecoderError``); nothing else, no NaN, no hang.

Run alone for a report: ``python tests/dicom_fuzz.py [n_cases] [seed]``.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import sys
import warnings
from collections import Counter
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence

DICOM_DIRS = [Path(__file__).resolve().parent.parent / "dp_sklearn" / "datasets" / "data" / "dicom",
              Path("/work/shared/data/dicom")]
# The fast files get most cases; the 1955x1841 JPEG 2000 ones take ~0.5-1 s a decode.
FAST = ["siim_cr_chest_jpeg_baseline.dcm", "cr_chest_monochrome1_jpeg_baseline.dcm",
        "ct_abdomen_explicit_big_endian.dcm"]
# 1955x1841: a 7 MB file to rewrite per case, or a JPEG 2000 decode of ~0.5-1 s.
SLOW = ["RG1_UNCR.dcm", "RG1_J2KI.dcm", "RG1_J2KR.dcm"]

BAD_DS = ["NaN", "nan", "inf", "-inf", "Infinity", "1e308", "-1e308", "1e400", "0", "-0", "abc", "", "1\\2"]
BAD_INT = [0, 1, 7, 12, 33, 64, 255, 4096, 65535]
SYNTAXES = ["1.2.3.4.5.6", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
            "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.1.99",
            "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", ""]


def dicom_files() -> list[Path]:
    """The bundled files, from every folder that exists (package data and the shared copy)."""
    out = []
    for d in DICOM_DIRS:
        out += [d / n for n in FAST + SLOW if (d / n).is_file()]
    return out


def _set(ds, keyword, vr, value):
    """Set an element, as raw bytes for text VRs so that invalid values reach the file unchanged."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    if vr in ("DS", "IS", "CS"):
        raw = str(value).encode("ascii")
        raw += b" " * (len(raw) % 2)
        ds[tag] = RawDataElement(tag, vr, len(raw), raw, 0, ds.original_encoding[0], ds.original_encoding[1])
    else:
        ds[tag] = DataElement(tag, vr, value)


def _lut_item(rng, kind):
    item = Dataset()
    n = rng.choice([0, 1, 4, 256, 4096])  # 0 means 65536 entries
    first = rng.choice([0, 65436, 100, 40000])  # 65436 reads as -100 where signed
    bits = rng.choice([0, 1, 8, 12, 16, 32])
    data_len = rng.choice([n, max(n - 1, 0), n + 3, 0])
    item.add_new(0x00283002, "US", [n, first, bits])  # LUTDescriptor
    values = [rng.randrange(0, 65536) for _ in range(min(data_len, 4096))]
    item.add_new(0x00283006, "US", values or [0])  # LUTData
    if kind == "modality":
        item.ModalityLUTType = rng.choice(["HU", "US", ""])
    return item


def _header_mutation(ds, rng) -> str:
    what = rng.choice(["rescale", "rescale", "window", "window", "voi_function", "bits", "geometry",
                       "photometric", "frames", "modality_lut", "voi_lut", "delete"])
    if what == "rescale":
        key = rng.choice(["RescaleSlope", "RescaleIntercept"])
        value = rng.choice(BAD_DS)
        _set(ds, key, "DS", value)
        if key == "RescaleSlope" and "RescaleIntercept" not in ds:
            _set(ds, "RescaleIntercept", "DS", "0")
        if key == "RescaleIntercept" and "RescaleSlope" not in ds:
            _set(ds, "RescaleSlope", "DS", "1")
        return f"{key}={value!r}"
    if what == "window":
        center, width = rng.choice(BAD_DS + ["100"]), rng.choice(BAD_DS + ["100", "-5", "0.5"])
        _set(ds, "WindowCenter", "DS", center)
        _set(ds, "WindowWidth", "DS", width)
        return f"Window={center!r}/{width!r}"
    if what == "voi_function":
        value = rng.choice(["SIGMOID", "LINEAR_EXACT", "BOGUS", ""])
        _set(ds, "WindowCenter", "DS", rng.choice(["100", "NaN", "1e308"]))
        _set(ds, "WindowWidth", "DS", rng.choice(["200", "0", "inf"]))
        _set(ds, "VOILUTFunction", "CS", value)
        return f"VOILUTFunction={value!r}"
    if what == "bits":
        key = rng.choice(["BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"])
        value = rng.choice(BAD_INT + [2, 3])
        _set(ds, key, "US", value)
        return f"{key}={value}"
    if what == "geometry":
        key = rng.choice(["Rows", "Columns"])
        value = rng.choice([0, 1, 2, int(ds.get(key, 8)) // 2, int(ds.get(key, 8)) * 2, 65535])
        _set(ds, key, "US", value)
        return f"{key}={value}"
    if what == "photometric":
        if rng.random() < 0.5:
            value = rng.choice(["RGB", "MONOCHROME3", "", "PALETTE COLOR", "YBR_FULL"])
            _set(ds, "PhotometricInterpretation", "CS", value)
            return f"PhotometricInterpretation={value!r}"
        value = rng.choice([0, 2, 3, 65535])
        _set(ds, "SamplesPerPixel", "US", value)
        return f"SamplesPerPixel={value}"
    if what == "frames":
        value = rng.choice(["0", "-1", "2", "abc", "1e9", ""])
        _set(ds, "NumberOfFrames", "IS", value)
        return f"NumberOfFrames={value!r}"
    if what == "modality_lut":
        for k in ("RescaleSlope", "RescaleIntercept"):
            if k in ds:
                del ds[k]
        ds.ModalityLUTSequence = Sequence([_lut_item(rng, "modality")])
        return f"ModalityLUTSequence={list(ds.ModalityLUTSequence[0].LUTDescriptor)}"
    if what == "voi_lut":
        ds.VOILUTSequence = Sequence([_lut_item(rng, "voi")])
        return f"VOILUTSequence={list(ds.VOILUTSequence[0].LUTDescriptor)}"
    if what == "delete":
        key = rng.choice(["Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation",
                          "PhotometricInterpretation", "PixelData", "SamplesPerPixel"])
        if key in ds:
            del ds[key]
        return f"delete {key}"
    raise AssertionError(what)


def _syntax_mutation(raw: bytes, rng) -> tuple[bytes, str]:
    """Replace the file meta's TransferSyntaxUID in place, NUL-padded to the original length."""
    ds = pydicom.dcmread(BytesIO(raw), stop_before_pixels=True)
    old = str(ds.file_meta.TransferSyntaxUID).encode("ascii")
    old_len = len(old) + len(old) % 2
    uid = rng.choice([u for u in SYNTAXES if len(u) <= old_len])
    start = raw.index(old, 128)
    new = uid.encode("ascii").ljust(old_len, b"\x00")
    return raw[:start] + new + raw[start + old_len:], f"TransferSyntaxUID={uid!r}"


def _pixel_mutation(ds, rng) -> str:
    data = bytes(ds.PixelData)
    encapsulated = ds.file_meta.TransferSyntaxUID.is_encapsulated
    frame = next(generate_frames(data, number_of_frames=1)) if encapsulated else data
    what = rng.choice(["truncate", "truncate", "flip", "zero", "garbage"])
    if what == "truncate":
        keep = rng.choice([0.05, 0.3, 0.5, 0.7, 0.9, 0.99])
        new = frame[: max(2, int(len(frame) * keep)) // 2 * 2]
    elif what == "flip":
        buf = bytearray(frame)
        for _ in range(rng.choice([1, 10, 100])):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        new = bytes(buf)
    elif what == "zero":
        start = rng.randrange(len(frame))
        new = frame[:start] + bytes(len(frame) - start)
    else:
        new = bytes(rng.randrange(256) for _ in range(rng.choice([2, 64, 1024])))
    if encapsulated:
        if len(new) % 2:
            new += b"\x00"
        ds.PixelData = encapsulate([new])
    else:
        ds.PixelData = new
    return f"PixelData {what} ({len(frame)} -> {len(new)} bytes)"


def make_case(path: Path, rng: random.Random) -> tuple[bytes, str]:
    """Return the bytes of a mutated file and a one-line description."""
    raw = path.read_bytes()
    kind = rng.choice(["header", "header", "header", "pixels", "pixels", "bytes", "syntax"])
    if kind == "syntax":
        return _syntax_mutation(raw, rng)
    if kind == "bytes":
        buf = bytearray(raw)
        if rng.random() < 0.5:
            cut = rng.randrange(1, len(buf))
            return bytes(buf[:cut]), f"file truncated at {cut} of {len(buf)} bytes"
        # Flip bytes in the header region, where the tags and lengths live.
        n = rng.choice([1, 4, 16])
        for _ in range(n):
            i = rng.randrange(min(len(buf), 4096))
            buf[i] = rng.randrange(256)
        return bytes(buf), f"{n} random header bytes"
    ds = pydicom.dcmread(path)
    desc = _header_mutation(ds, rng) if kind == "header" else _pixel_mutation(ds, rng)
    out = BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pydicom.config.disable_value_validation():
            ds.save_as(out, enforce_file_format=False)
    return out.getvalue(), desc


def _child(path, conn):
    import warnings as w

    from dp_sklearn.data.io import MissingDecoderError, read_image

    w.simplefilter("ignore")
    try:
        img = read_image(path, image_size=None, on_non_radiograph="ignore")
    except (ValueError, MissingDecoderError) as exc:
        named = str(path) in str(exc)
        conn.send(("clear", type(exc).__name__, named, str(exc)[:300]))
    except BaseException as exc:  # noqa: BLE001 - the point is to catch what should not happen
        conn.send(("other", type(exc).__name__, False, str(exc)[:300]))
    else:
        finite = bool(np.isfinite(img).all())
        ok = finite and img.dtype == np.float32 and img.ndim == 2 and img.min() >= 0 and img.max() <= 1
        conn.send(("image" if ok else "nan", str(img.dtype), finite, f"shape {img.shape}"))
    conn.close()


def run_case(path: Path, timeout: float) -> tuple:
    """Read ``path`` in a forked child; ``("hang", ...)`` when it takes longer than ``timeout`` s."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(str(path), child))
    proc.start()
    child.close()
    if parent.poll(timeout):
        try:
            result = parent.recv()
        except EOFError:
            result = ("other", "crash", False, f"child exited with {proc.exitcode}")
    else:
        proc.kill()
        result = ("hang", "timeout", False, f"no answer in {timeout} s")
    proc.join(5)
    if result[0] == "other" and proc.exitcode not in (0, None):
        result = ("other", f"crash (exit {proc.exitcode})", False, result[3])
    return result


def fuzz(out_dir: Path, n_cases: int = 300, seed: int = 0, timeout: float = 60.0, slow_share: float = 0.05):
    """Run ``n_cases`` seeded mutations; return ``(Counter of outcomes, list of case records)``."""
    import dp_sklearn.data.io  # noqa: F401 - imported once here, inherited by every forked child

    rng = random.Random(seed)
    files = dicom_files()
    fast = [f for f in files if f.name in FAST]
    slow = [f for f in files if f.name in SLOW]
    records = []
    for i in range(n_cases):
        source = rng.choice(slow if slow and rng.random() < slow_share else fast)
        data, desc = make_case(source, rng)
        path = out_dir / f"case{i:04d}_{source.stem}.dcm"
        path.write_bytes(data)
        outcome = run_case(path, timeout)
        records.append((i, source.name, desc, *outcome))
        path.unlink()
    return Counter(r[3] for r in records), records


if __name__ == "__main__":
    import tempfile
    import time

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        counts, records = fuzz(Path(tmp), n, seed)
    print(f"{n} cases in {time.time() - t0:.1f} s: {dict(counts)}")
    print("clear error types:", dict(Counter(r[4] for r in records if r[3] == "clear")))
    print("clear errors not naming the file:", sum(1 for r in records if r[3] == "clear" and not r[5]))
    for r in records:
        if r[3] not in ("clear", "image"):
            print(r)
