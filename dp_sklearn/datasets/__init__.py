"""The bundled real chest X-ray data: :func:`load_cxr1k` and the DICOM sample files."""

from ._cxr1k import CXR1K_DIR, DICOM_DIR, load_cxr1k

__all__ = ["CXR1K_DIR", "DICOM_DIR", "load_cxr1k"]
