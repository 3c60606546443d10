"""Shared pytest fixtures: small NIfTI files and DICOM series written on the fly.

Fixtures:
    tmp_nifti: factory ``(array, affine=None, name="volume.nii.gz", *, slope=None, inter=None, dtype=None)``
        -> Path.
    tmp_dicom_series: factory ``(array_hu, affine=None, name="dicom", *, slope=1.0, intercept=-1024.0)``
        -> Path of a folder
        writing one file per slice with SimpleITK and recognisable fake patient tags.
    fake_patient_tags: those fake ``{tag: value}`` identifiers, to assert they never leak.

Shared by the training and inference fixtures (``tests/train``, ``tests/infer``): the tiny sizes
``TINY_PREPROCESS`` and ``TINY_VISION``, :func:`tiny_model_config` and :func:`prepare_tiny_cohort`.
Shared by the tests of ``scripts/``: :func:`load_script`.
"""

from __future__ import annotations

import contextlib
import locale
import random
import socket
from pathlib import Path

import numpy as np
import pytest

from ctvl.config import (
    CTVLConfig,
    DecoderConfig,
    LoRAConfig,
    PreprocessConfig,
    SurvivalConfig,
    SyntheticCohortConfig,
    VisionConfig,
    replace,
)

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    """``scripts/<name>.py`` imported as a module (the scripts folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A free TCP port below the OS's ephemeral range, for a torchrun / gloo rendezvous.

    A port from ``bind(0)`` is ephemeral: between its release and torchrun binding it, a connection of a
    distributed test running alongside (pytest-xdist) can be given the same port. Ports below the range
    are only taken by explicit binds.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default; macOS's range starts at 49152
    draw = random.Random()  # seeded from the OS: parallel workers draw different ports
    for _ in range(100):
        port = draw.randrange(max(1024, low - 10000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port below {low}")


TINY_PREPROCESS = PreprocessConfig(spacing=(10.0, 10.0, 10.0), roi_size=(32, 32, 32))
TINY_VISION = VisionConfig(layers=(1, 1, 1, 1), base_width=8)


def tiny_model_config(encoder_checkpoint: str, **survival) -> CTVLConfig:
    """The tests' tiny model: ``TINY_VISION`` + ``encoder_checkpoint``, a 2-layer decoder, LoRA r=4."""
    return CTVLConfig(
        vision=replace(TINY_VISION, checkpoint=encoder_checkpoint),
        decoder=DecoderConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                              tokenizer_vocab_size=400),
        lora=LoRAConfig(r=4, alpha=8, dropout=0.0),
        survival=SurvivalConfig(adapter_hidden=16, adapter_dropout=0.0, **survival),
    )


def prepare_tiny_cohort(root: Path, n_cases: int, seed: int):
    """:class:`ctvl.workflows.demo.DemoData` of ``n_cases`` synthetic 32^3 volumes at 10 mm (caches, VQA, encoder)."""
    from ctvl.workflows.demo import prepare_demo_data

    cohort = SyntheticCohortConfig(n_cases=n_cases, shape=(32, 32, 32), spacing=(10.0, 10.0, 10.0), seed=seed)
    return prepare_demo_data(root, cohort, TINY_PREPROCESS, TINY_VISION, workers=0, progress=False)


@contextlib.contextmanager
def keep_locale():
    """SimpleITK's DICOM writer (GDCM) switches the whole process to the "C" locale, after which Python
    opens text files as ASCII and later tests reading UTF-8 files (a template with "°F") fail."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


# Recognisable fake identifiers written into every test DICOM slice.
FAKE_PATIENT_TAGS = {
    "0010|0010": "Quxley^Zebediah",  # PatientName
    "0010|0020": "PID-77310429",  # PatientID
    "0010|0030": "19230417",  # PatientBirthDate
    "0008|0050": "ACC-55120987",  # AccessionNumber
}


@pytest.fixture
def fake_patient_tags() -> dict[str, str]:
    return dict(FAKE_PATIENT_TAGS)


@pytest.fixture
def tmp_nifti(tmp_path):
    """Factory writing ``array`` (i, j, k[, ...]) as a NIfTI file under ``tmp_path``."""
    import nibabel as nib

    def write(array, affine=None, name="volume.nii.gz", *, slope=None, inter=None, dtype=None) -> Path:
        array = np.asarray(array if dtype is None else np.asarray(array).astype(dtype))
        img = nib.Nifti1Image(array, np.eye(4) if affine is None else np.asarray(affine, float))
        if slope is not None or inter is not None:
            img.header.set_slope_inter(1.0 if slope is None else slope, 0.0 if inter is None else inter)
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, path)
        return path

    return write


@pytest.fixture
def tmp_dicom_series(tmp_path):
    """Factory writing an integer HU array (i, j, k) with a RAS ``affine`` as a DICOM series folder.

    Stored values are ``(HU - intercept) / slope`` (SimpleITK's writer applies the inverse rescale), so
    pass HU values for which that is an integer. Slice files are named ``slice_000.dcm``, ... in k order.
    """
    import SimpleITK as sitk

    def write(array, affine=None, name="dicom", *, slope=1.0, intercept=-1024.0) -> Path:
        array = np.asarray(array)
        affine = np.diag([0.8, 0.7, 2.5, 1.0]) if affine is None else np.asarray(affine, float)
        lps = np.diag([-1.0, -1.0, 1.0])
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        direction = lps @ affine[:3, :3] / spacing
        image = sitk.GetImageFromArray(array.astype(np.int16).transpose(2, 1, 0))  # ITK numpy is (k, j, i)
        image.SetSpacing(spacing.tolist())
        image.SetOrigin((lps @ affine[:3, 3]).tolist())
        image.SetDirection(direction.flatten().tolist())
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        tags = {
            **FAKE_PATIENT_TAGS,
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",  # StudyInstanceUID
            "0020|000e": "1.2.826.0.1.3680043.2.1125.1.2",  # SeriesInstanceUID
            "0020|0037": "\\".join(f"{v:.6f}" for v in direction[:, 0].tolist() + direction[:, 1].tolist()),
            "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}",  # PixelSpacing: row (j), column (i)
            "0018|0050": f"{spacing[2]:.6f}",  # SliceThickness
            "0028|1053": f"{slope:g}",  # RescaleSlope
            "0028|1052": f"{intercept:g}",  # RescaleIntercept
        }
        with keep_locale():  # GDCM's writer switches the process locale to "C" too
            _write_slices(image, tags, folder, writer)
        return folder

    def _write_slices(image, tags, folder, writer):
        for k in range(image.GetSize()[2]):
            slice_k = image[:, :, k]
            for tag, value in tags.items():
                slice_k.SetMetaData(tag, value)
            position = image.TransformIndexToPhysicalPoint((0, 0, k))
            slice_k.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in position))
            slice_k.SetMetaData("0020|0013", str(k + 1))  # InstanceNumber
            writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
            writer.Execute(slice_k)

    return write
