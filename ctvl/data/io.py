"""CT volume I/O: NIfTI files, DICOM series folders and other ITK images -> one RAS volume in HU.

Axis convention (the only one in ctvl): a :class:`CTVolume` holds ``array`` of shape ``(x, y, z)``
whose axes point to patient Right, Anterior and Superior (RAS, nibabel's "canonical"
orientation), and ``affine``, the 4x4 voxel -> RAS-mm matrix. Reorientation only flips and
transposes axes (``nibabel.as_closest_canonical`` semantics): voxels are never resampled here.

* NIfTI (``.nii``, ``.nii.gz``) is read with nibabel; ``scl_slope``/``scl_inter`` are applied by nibabel.
* A DICOM series folder is read with SimpleITK (``ImageSeriesReader``): slices are ordered by their
  position along the slice normal, checked for gaps and duplicates, RescaleSlope/Intercept are
  applied, and ITK's LPS geometry is converted to a RAS affine.
* ``.nrrd``, ``.mha``, ``.mhd`` files are read with SimpleITK like DICOM.

A header is never trusted with an allocation: the shape it claims is checked against a voxel limit
(``max_voxels``, from :attr:`ctvl.config.PreprocessConfig.max_voxels`) before any voxel is read, and a
NIfTI file must hold the bytes its header promises: an uncompressed file is checked by its size, a
gzipped one is decompressed in chunks into a buffer of the promised size that fails as soon as the
stream ends early, so a corrupt header costs no more memory than the data actually present.

Every problem with an input raises :class:`VolumeError` (a ``ValueError``) whose message names the
file and the reason. Patient identifiers from DICOM headers are never read into a volume, a log
line or a message: only geometry and rescale tags are looked at.

Entry point: :func:`load_volume`.

Example:
    >>> import numpy as np
    >>> vol = CTVolume(np.zeros((4, 5, 6), np.float32), np.diag([0.7, 0.7, 2.5, 1.0]))
    >>> vol.spacing
    (0.7, 0.7, 2.5)
"""

from __future__ import annotations

import gzip
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import nibabel as nib
import numpy as np
from nibabel import orientations
from nibabel.volumeutils import apply_read_scaling

from ctvl.config import PreprocessConfig

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
GAP_FACTOR = 1.5
"""A step between consecutive DICOM slices larger than this times the median step means missing slices."""
DUPLICATE_TOL_MM = 1e-3
"""Slices closer than this (mm, along the slice normal) count as duplicated."""
DEFAULT_MAX_VOXELS = PreprocessConfig().max_voxels
"""Voxel limit of :func:`load_volume` when no config passes one (2**30, about 1.07e9 voxels)."""
_GZIP_CHUNK = 1 << 24  # decompressed bytes per read: memory grows with the data present, not the header
# DICOM tags read from each slice header: geometry and rescale only, never patient data.
_TAG_POSITION, _TAG_ORIENTATION = "0020|0032", "0020|0037"
_TAG_SLOPE, _TAG_INTERCEPT = "0028|1053", "0028|1052"


class VolumeError(ValueError):
    """An input volume that cannot be used; the message names the file and the reason."""


@dataclass
class CTVolume:
    """A CT volume in HU, RAS-oriented.

    Attributes:
        array (np.ndarray, float32): shape (x, y, z), Hounsfield units.
        affine (np.ndarray, float64): shape (4, 4), voxel index -> RAS millimetres.
        source: path the volume was read from ("" for in-memory volumes).
    """

    array: np.ndarray
    affine: np.ndarray
    source: str = ""

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the array axes (x, y, z): the lengths of the affine's columns."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)


def load_volume(
    path: str | os.PathLike,
    *,
    rescale: Optional[tuple[float, float]] = None,
    spacing: Optional[tuple[float, float, float]] = None,
    on_unit_range: Literal["error", "convert"] = "error",
    hu_window: tuple[float, float] = (-1000.0, 1000.0),
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> CTVolume:
    """Read a CT volume (NIfTI file, DICOM series folder, NRRD/MHA file) as RAS, HU, float32.

    Args:
        path: ``.nii``/``.nii.gz`` file, folder holding one DICOM series, or ``.nrrd``/``.mha``/``.mhd`` file.
        rescale: ``(slope, intercept)`` mapping the stored values to HU. For NIfTI it *replaces* the
            header's ``scl_slope``/``scl_inter`` (stored values are read unscaled), so scaling is never
            applied twice. For DICOM it is refused when the slices carry RescaleSlope/Intercept tags.
        spacing: voxel size in mm along the *stored* array axes (i, j, k), replacing the lengths of the
            header affine's columns (directions kept). Used for CT-RATE's original release.
        on_unit_range: a volume already scaled to [0, 1] (min >= -0.01, max <= 1.01, not constant) is
            refused ("error") or mapped linearly from [0, 1] to ``hu_window`` ("convert").
        hu_window: HU range that [0, 1] corresponds to, for ``on_unit_range="convert"``.
        max_voxels: largest volume accepted, checked against the header before any voxel is read
            (:attr:`ctvl.config.PreprocessConfig.max_voxels`).

    Returns:
        CTVolume with ``array`` float32 (x, y, z) in HU and a RAS ``affine``.

    Raises:
        VolumeError: unreadable/corrupt file, a header claiming more voxels than ``max_voxels`` or more
            bytes than the file holds, not 3D, NaN/inf voxels, zero/negative spacing, DICOM gaps
            or duplicated slices, values in [0, 1] with ``on_unit_range="error"``.
    """
    if on_unit_range not in ("error", "convert"):
        raise ValueError(f"`on_unit_range` must be 'error' or 'convert', got {on_unit_range!r}")
    if max_voxels < 1:
        raise ValueError(f"`max_voxels` must be >= 1, got {max_voxels}")
    path = Path(path)
    array, affine = _read_any(path, rescale, max_voxels)
    array = _to_3d(array, path)
    if spacing is not None:
        affine = _override_spacing(affine, spacing, path)
    _check_affine(affine, path)
    if rescale is not None:
        slope, intercept = (float(v) for v in rescale)
        array = array * np.float32(slope) + np.float32(intercept)
    array = _check_values(array, path, on_unit_range, hu_window)
    array, affine = reorient_to_ras(array, affine)
    return CTVolume(array=array, affine=affine, source=str(path))


def reorient_to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip/transpose ``array`` (i, j, k) to the closest RAS orientation; no resampling.

    Same result as ``nibabel.as_closest_canonical`` (``io_orientation`` -> ``apply_orientation``).

    Args:
        array (np.ndarray): shape (i, j, k), any dtype.
        affine (np.ndarray): shape (4, 4), voxel -> RAS mm.

    Returns:
        ``(array, affine)``: array (x, y, z), C-contiguous; affine for the reoriented array.
    """
    ornt = orientations.io_orientation(affine)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return np.ascontiguousarray(array), affine
    out = np.ascontiguousarray(orientations.apply_orientation(array, ornt))
    return out, affine @ orientations.inv_ornt_aff(ornt, array.shape)


def itk_to_ras_affine(image) -> np.ndarray:
    """4x4 RAS affine of a 3D SimpleITK image (ITK stores LPS direction/origin; index order (i, j, k))."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = LPS_TO_RAS @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return affine


# ----------------------------------------------------------------------------- readers


def _read_any(path: Path, rescale, max_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    """Dispatch on the path type; wraps library exceptions into VolumeError naming the file."""
    if not path.exists():
        raise VolumeError(f"{path}: no such file or folder")
    name = path.name.lower()
    try:
        if path.is_dir():
            return _read_dicom_series(path, rescale, max_voxels)
        if name.endswith(NIFTI_SUFFIXES):
            return _read_nifti(path, raw=rescale is not None, max_voxels=max_voxels)
        if name.endswith(ITK_SUFFIXES):
            return _read_itk_file(path, max_voxels)
    except VolumeError:
        raise
    except Exception as exc:  # nibabel/zlib/ITK raise many types for corrupt files
        raise VolumeError(f"{path}: cannot read ({type(exc).__name__}: {_short(exc)})") from exc
    raise VolumeError(
        f"{path}: unsupported format; expected {NIFTI_SUFFIXES + ITK_SUFFIXES} or a DICOM series folder"
    )


def _read_nifti(path: Path, raw: bool, max_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)  # reads the header only
    _check_ndim(img.shape, path)
    _check_pixdim(img, path)
    stored = load_nifti_unscaled(img, path, max_voxels)
    if raw:  # caller's rescale replaces the header scaling
        if img.dataobj.slope != 1.0 or img.dataobj.inter != 0.0:
            logger.warning("%s: `rescale` replaces the header's scl_slope/scl_inter", path)
        data = np.asarray(stored, dtype=np.float32)
    else:
        data = _scale_like_nibabel(stored, img.dataobj)
    return data, np.asarray(img.affine, dtype=np.float64)


def load_nifti_unscaled(img, path: str | os.PathLike, max_voxels: int = DEFAULT_MAX_VOXELS) -> np.ndarray:
    """Stored (unscaled) voxels of a NIfTI image opened with ``nib.load``, never trusting the header's size.

    The claimed shape must be within ``max_voxels``; an uncompressed file must then hold ``vox_offset +
    voxels x itemsize`` bytes (and is memory-mapped by nibabel, as before); a gzipped file (one or several
    gzip members) is decompressed in chunks into an uninitialised buffer of the claimed size, whose pages
    are only committed as data arrives, and refused as soon as the stream ends early.

    Args:
        img: ``nibabel.Nifti1Image``/``Nifti2Image`` from ``nib.load(path)`` (its data not read yet).
        path: the file ``img`` was loaded from.
        max_voxels: largest number of voxels accepted.

    Returns:
        np.ndarray of the header's dtype and shape (Fortran order), like ``img.dataobj.get_unscaled()``.

    Raises:
        VolumeError: the claimed shape is over ``max_voxels`` or the file holds fewer bytes than claimed.
    """
    path, proxy = Path(path), img.dataobj
    shape, dtype, offset = tuple(int(n) for n in proxy.shape), np.dtype(proxy.dtype), int(proxy.offset)
    _check_voxel_limit(shape, dtype.name, path, max_voxels)
    n_bytes = math.prod(shape) * dtype.itemsize
    claim = f"{path}: header claims shape {shape} of {dtype.name} ({n_bytes:,} bytes of voxels"
    if not path.name.lower().endswith(".gz"):
        size = path.stat().st_size
        if offset + n_bytes > size:
            raise VolumeError(f"{claim} from offset {offset}), but the file holds only {size:,} bytes")
        return proxy.get_unscaled()
    buffer = np.empty(n_bytes, dtype=np.uint8)
    n_read = _read_gzip_into(path, offset, memoryview(buffer))
    if n_read < n_bytes:
        raise VolumeError(f"{claim}), but the decompressed data ends after {n_read:,} bytes of voxels")
    return buffer.view(dtype).reshape(shape, order=proxy.order)


def _read_gzip_into(path: Path, offset: int, out: memoryview) -> int:
    """Fill ``out`` with decompressed bytes from ``offset`` on, chunk by chunk; returns the bytes read."""
    n_read = 0
    with gzip.open(path, "rb") as fh:  # reads multi-member files as one stream
        fh.seek(offset)
        while n_read < len(out):
            n = fh.readinto(out[n_read : n_read + _GZIP_CHUNK])
            if not n:
                break
            n_read += n
    return n_read


def _scale_like_nibabel(stored: np.ndarray, proxy) -> np.ndarray:
    """``img.get_fdata(dtype=np.float32)`` from already read stored values (nibabel's ArrayProxy rules)."""
    f32 = np.dtype(np.float32)
    slope, inter = (np.asanyarray(v) for v in (proxy.slope, proxy.inter))
    slope, inter = (v.astype(f32) if np.can_cast(v, f32) else v for v in (slope, inter))
    return apply_read_scaling(stored, slope, inter).astype(f32, copy=False)


def _check_voxel_limit(shape, dtype: str, path: Path, max_voxels: int) -> None:
    """Refuse a header whose claimed shape holds more than ``max_voxels`` voxels, before reading them."""
    shape = tuple(int(n) for n in shape)
    n_voxels = math.prod(shape)
    if n_voxels > max_voxels:
        raise VolumeError(
            f"{path}: header claims shape {shape} of {dtype} ({n_voxels:,} voxels), over the limit of "
            f"{max_voxels:,} voxels (`max_voxels`); raise the limit if the volume is real"
        )


def _check_pixdim(img, path: Path) -> None:
    """Refuse zero/negative pixdim when the affine is built from it (nibabel silently "fixes" it)."""
    if int(img.header.get("sform_code", 0)) > 0:
        return
    from nibabel.openers import ImageOpener

    with ImageOpener(path) as fh:
        raw = type(img.header).from_fileobj(fh, check=False)
    pixdim = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
    if not np.all(pixdim > 0):
        raise VolumeError(f"{path}: zero or negative voxel spacing in the header (pixdim {pixdim.tolist()})")


def _read_itk_file(path: Path, max_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()  # header only: check the size before the pixels are allocated
    _check_voxel_limit(reader.GetSize(), sitk.GetPixelIDValueAsString(reader.GetPixelID()), path, max_voxels)
    reader.SetOutputPixelType(sitk.sitkFloat32)
    image = reader.Execute()
    _check_ndim(image.GetSize(), path)
    if image.GetDimension() != 3:
        raise VolumeError(f"{path}: expected a 3D image, got {image.GetDimension()}D")
    return _itk_array(image), itk_to_ras_affine(image)


def _itk_array(image) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # ITK numpy view is (k, j, i)


def _read_dicom_series(folder: Path, rescale, max_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    """Read the single DICOM series in ``folder``, ordered by slice position, as float32 (i, j, k)."""
    import SimpleITK as sitk

    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise VolumeError(f"{folder}: no DICOM series found in the folder")
    if len(series) > 1:
        sizes = sorted(len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s)) for s in series)
        raise VolumeError(
            f"{folder}: folder holds {len(series)} DICOM series ({sizes} slices); give one series per folder"
        )
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    files, has_rescale_tags = _order_slices(folder, files)
    if rescale is not None and has_rescale_tags:
        raise VolumeError(
            f"{folder}: `rescale` given but the slices carry RescaleSlope/Intercept tags (applied already)"
        )
    _check_series_size(folder, files, max_voxels)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.SetOutputPixelType(sitk.sitkFloat32)
    image = reader.Execute()
    return _itk_array(image), itk_to_ras_affine(image)


def _check_series_size(folder: Path, files: list[str], max_voxels: int) -> None:
    """Voxel limit for a series: the first slice's size (ITK allocates from it) times the slice count."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    reader.ReadImageInformation()
    size = reader.GetSize()  # (columns, rows[, frames])
    shape = (size[0], size[1], len(files) * math.prod(size[2:]))
    _check_voxel_limit(shape, sitk.GetPixelIDValueAsString(reader.GetPixelID()), folder, max_voxels)


def _order_slices(folder: Path, files) -> tuple[list[str], bool]:
    """Sort slice files by position along the slice normal; refuse gaps and duplicates.

    Returns:
        ``(files, has_rescale_tags)``.
    """
    import SimpleITK as sitk

    if len(files) < 2:
        raise VolumeError(f"{folder}: expected a 3D volume, got {len(files)} DICOM slice(s)")
    positions, orients, rescale_tags = [], [], False
    reader = sitk.ImageFileReader()
    for f in files:
        reader.SetFileName(f)
        reader.ReadImageInformation()
        if not (reader.HasMetaDataKey(_TAG_POSITION) and reader.HasMetaDataKey(_TAG_ORIENTATION)):
            raise VolumeError(
                f"{folder}: slice {Path(f).name} lacks ImagePositionPatient/ImageOrientationPatient"
            )
        positions.append(_dicom_floats(reader.GetMetaData(_TAG_POSITION)))
        orients.append(_dicom_floats(reader.GetMetaData(_TAG_ORIENTATION)))
        rescale_tags |= reader.HasMetaDataKey(_TAG_SLOPE) or reader.HasMetaDataKey(_TAG_INTERCEPT)
    orients = np.asarray(orients)
    if orients.shape[1] != 6 or np.abs(orients - orients[0]).max() > 1e-4:
        raise VolumeError(f"{folder}: slices have different ImageOrientationPatient values")
    normal = np.cross(orients[0, :3], orients[0, 3:])
    along = np.asarray(positions) @ normal  # (n,) slice position along the normal, mm
    order = np.argsort(along, kind="stable")
    _check_slice_steps(np.diff(along[order]), folder)
    return [files[i] for i in order], rescale_tags


def _check_slice_steps(steps: np.ndarray, folder: Path) -> None:
    """Duplicated slices (step ~ 0) or missing slices (step > GAP_FACTOR x median) -> VolumeError."""
    n_dup = int(np.sum(steps < DUPLICATE_TOL_MM))
    if n_dup:
        raise VolumeError(
            f"{folder}: {n_dup} duplicated slice(s) (same ImagePositionPatient along the slice normal)"
        )
    median = float(np.median(steps))
    gaps = steps[steps > GAP_FACTOR * median]
    if gaps.size:
        raise VolumeError(
            f"{folder}: missing slices: {gaps.size} gap(s) up to {gaps.max():.3g} mm between slices, "
            f"more than {GAP_FACTOR}x the median step {median:.3g} mm"
        )


def _dicom_floats(value: str) -> list[float]:
    return [float(v) for v in value.strip().split("\\")]


# --------------------------------------------------------------------------- checks


def _check_ndim(shape, path: Path) -> None:
    """3D, or 4D+ whose extra dims are all 1 (squeezed later); every spatial axis >= 2 voxels."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 3 or any(s != 1 for s in shape[3:]):
        raise VolumeError(f"{path}: expected a 3D volume, got an array of shape {shape}")
    if min(shape[:3]) < 2:
        raise VolumeError(f"{path}: expected a 3D volume, got shape {shape} (a single slice)")


def _to_3d(array: np.ndarray, path: Path) -> np.ndarray:
    _check_ndim(array.shape, path)
    return array.reshape(array.shape[:3])


def _override_spacing(affine: np.ndarray, spacing, path: Path) -> np.ndarray:
    """Replace the column lengths of ``affine`` by ``spacing`` (mm along the stored axes)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or not np.all(spacing > 0):
        raise VolumeError(f"{path}: zero, negative or invalid spacing override {spacing.tolist()}")
    cols = affine[:3, :3]
    norms = np.linalg.norm(cols, axis=0)
    directions = np.where(norms > 0, cols / np.where(norms > 0, norms, 1.0), np.eye(3))
    out = affine.copy()
    out[:3, :3] = directions * spacing
    return out


def _check_affine(affine: np.ndarray, path: Path) -> None:
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.all(np.isfinite(affine)) or not np.all(spacing > 0):
        shown = np.round(spacing, 6).tolist()
        raise VolumeError(f"{path}: zero, negative or invalid voxel spacing {shown} mm")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise VolumeError(f"{path}: singular affine (voxel axes are not independent)")


def _check_values(array: np.ndarray, path: Path, on_unit_range: str, hu_window) -> np.ndarray:
    """Refuse NaN/inf; refuse or convert volumes already scaled to [0, 1]."""
    lo, hi = float(array.min()), float(array.max())  # NaN propagates through min/max
    if not (np.isfinite(lo) and np.isfinite(hi)):
        n_bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise VolumeError(f"{path}: {n_bad} NaN/inf voxel(s)")
    if lo >= -0.01 and hi <= 1.01 and hi > lo:
        if on_unit_range == "error":
            raise VolumeError(
                f"{path}: values lie in [{lo:.3g}, {hi:.3g}]: already scaled to [0, 1], not HU; "
                f"pass on_unit_range='convert' to map [0, 1] to the HU window {tuple(hu_window)}"
            )
        low, high = (np.float32(v) for v in hu_window)
        logger.info("%s: values in [0, 1]; mapped linearly to HU %s", path, tuple(hu_window))
        array = low + np.clip(array, 0.0, 1.0) * (high - low)
    return array.astype(np.float32, copy=False)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
