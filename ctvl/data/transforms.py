"""Merlin's CT preprocessing as MONAI transforms, and a fast NumPy path proven equal to it.

Axis order (the one used everywhere in ctvl): volumes are RAS, i.e. array axis 0 (x) runs from
patient Left to Right, axis 1 (y) from Posterior to Anterior and axis 2 (z) from Inferior to
Superior. Channel-first tensors are ``(C, x, y, z)`` and batches ``(B, C, x, y, z)``; the voxel with
the largest indices is the most right, anterior and superior one.

Merlin's evaluation pipeline (``merlin/data/monai_transforms.py``) is::

    Orientation("RAS") -> Spacing((1.5, 1.5, 3), "bilinear") -> ScaleIntensityRange(-1000, 1000 -> 0, 1, clip)
    -> SpatialPad((224, 224, 160)) -> CenterSpatialCrop((224, 224, 160))

Padding comes after scaling, so padded voxels are 0 (air).

Entry points:
    * :func:`build_eval_transforms` - that pipeline from a :class:`~ctvl.config.PreprocessConfig`, on a dict
      ``{"image": MetaTensor (1, x, y, z) with its affine}``.
    * :func:`build_merlin_reference_transforms` - Merlin's published pipeline verbatim (from a file path); the
      reference that tests and ``scripts/bench_preprocess.py`` compare against.
    * :func:`preprocess_volume` - the fast path: same output (max abs difference <= 1e-3) from a
      :class:`~ctvl.data.io.CTVolume`, several times faster. It works in the stored voxel order (orientation
      flips and transposes are folded into index arrays, so nothing is copied to reorient), resamples with
      separable per-axis linear interpolation (MONAI's trilinear grid sample is separable for an
      axis-aligned spacing change), computes only the voxels that survive the centre crop, and fuses the HU
      window into the last step. MONAI's output grid is taken from MONAI's own helpers
      (``zoom_affine``, ``compute_shape_offset``), so both paths sample the same points.
    * :func:`load_and_preprocess` - read a file and run the fast path (what ``ctvl preprocess`` and the
      benchmark time). A plain integer NIfTI is resampled straight from its stored integers (no
      full-volume float32 copy, no reorientation copy); everything else goes through
      :func:`ctvl.data.io.load_volume`. Same result as ``preprocess_volume(load_volume(path), cfg)``.

Axis-aligned grids only take the fast path; a sheared voxel grid falls back to the MONAI pipeline.
Rotated (oblique) but orthogonal grids stay separable: MONAI's ``Spacing`` keeps the rotation, so the
voxel-to-voxel map is still diagonal. Note that MONAI's grid offset for such a volume depends on float
noise in the affine (``compute_shape_offset`` looks for an exact minimal corner with ``atol=1e-8``; a
float32 sform can shift the grid by a fraction of a voxel); the fast path reproduces that too.

Example:
    >>> import numpy as np
    >>> from ctvl.config import PreprocessConfig
    >>> from ctvl.data.io import CTVolume
    >>> vol = CTVolume(np.full((40, 36, 30), -1000.0, np.float32), np.diag([0.7, 0.8, 2.5, 1.0]))
    >>> out = preprocess_volume(vol, PreprocessConfig(roi_size=(32, 32, 24)))
    >>> out.shape, out.dtype, float(out.max())
    ((1, 32, 32, 24), dtype('float32'), 0.0)
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
from nibabel import orientations

from ctvl.config import PreprocessConfig

logger = logging.getLogger(__name__)

IMAGE_KEY = "image"
MERLIN_ROI_SIZE = (224, 224, 160)
MERLIN_SPACING = (1.5, 1.5, 3.0)
_MAX_IGNORED_SHIFT = 1e-4
"""Largest sampling shift (in input voxels) that the separable path may ignore: off-diagonal voxel-to-voxel
terms (float noise of a NIfTI sform stored as float32) times the extent must stay below this. An
intensity step of the whole window across one voxel then moves the output by at most 1e-4."""


# ------------------------------------------------------------------------------ MONAI pipelines


def build_eval_transforms(cfg: PreprocessConfig):
    """Merlin's evaluation preprocessing as MONAI dictionary transforms on key ``"image"``.

    Args:
        cfg: orientation, spacing, interpolation, HU window and ROI size.

    Returns:
        ``monai.transforms.Compose`` mapping ``{"image": MetaTensor (1, i, j, k)}`` (any dtype, with its
        voxel -> RAS affine) to ``{"image": MetaTensor (1, *cfg.roi_size) float32 in [0, 1]}`` in
        ``cfg.orientation`` (RAS by default), axes ``(C, x, y, z)``.
    """
    from monai.transforms import Compose

    steps = _spatial_intensity_transforms(
        cfg.orientation, cfg.spacing, cfg.interpolation, cfg.hu_window, cfg.roi_size
    )
    return Compose(steps)


def build_merlin_reference_transforms(
    roi_size: Sequence[int] = MERLIN_ROI_SIZE, spacing: Sequence[float] = MERLIN_SPACING
):
    """Merlin's published pipeline (``LoadImaged`` from a file path onwards), the reference for the fast path.

    Args:
        roi_size: output size (x, y, z); Merlin uses (224, 224, 160).
        spacing: target spacing in mm (x, y, z); Merlin uses (1.5, 1.5, 3).

    Returns:
        ``monai.transforms.Compose`` mapping ``{"image": path}`` to ``{"image": MetaTensor (1, *roi_size)}``.
    """
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    return Compose(
        [LoadImaged(keys=[IMAGE_KEY]), EnsureChannelFirstd(keys=[IMAGE_KEY])]
        + _spatial_intensity_transforms("RAS", spacing, "bilinear", (-1000.0, 1000.0), roi_size)
    )


def _spatial_intensity_transforms(orientation, spacing, mode, hu_window, roi_size) -> list:
    from monai.transforms import CenterSpatialCropd, Orientationd, ScaleIntensityRanged, Spacingd, SpatialPadd

    keys = [IMAGE_KEY]
    return [
        # labels=None: the labels of the MetaTensor's space (RAS -> L/R, P/A, I/S), which is also the
        # deprecated default; passing it only silences MONAI's FutureWarning.
        Orientationd(keys=keys, axcodes=orientation, labels=None),
        Spacingd(keys=keys, pixdim=tuple(spacing), mode=mode),
        ScaleIntensityRanged(
            keys=keys, a_min=hu_window[0], a_max=hu_window[1], b_min=0.0, b_max=1.0, clip=True
        ),
        SpatialPadd(keys=keys, spatial_size=tuple(roi_size)),
        CenterSpatialCropd(keys=keys, roi_size=tuple(roi_size)),
    ]


# ------------------------------------------------------------------------------------ fast path


def load_and_preprocess(path: str | os.PathLike, cfg: PreprocessConfig) -> np.ndarray:
    """Read a CT volume and run the fast path; equal to ``preprocess_volume(io.load_volume(path), cfg)``.

    An integer NIfTI file that :func:`ctvl.data.io.load_volume` would accept unchanged (3D, finite
    affine and scaling, values not in [0, 1]) is resampled straight from its stored integers, in stored
    order: the header's ``scl_slope``/``scl_inter`` are applied to the few output voxels (exact, the
    interpolation is linear) instead of converting and reorienting the whole volume to float32 HU,
    which costs as much as all the rest on CT-RATE-sized volumes. Every other input (DICOM, float
    data, unusual headers, unreadable files) goes through ``io.load_volume``, which stays the one place
    that validates volumes and raises :class:`~ctvl.data.io.VolumeError`.

    Args:
        path: NIfTI file, DICOM series folder or NRRD/MHA file.
        cfg: preprocessing config (``on_unit_range``, ``hu_window`` and ``max_voxels`` are passed on to
            the reader).

    Returns:
        np.ndarray, float32: shape (1, *cfg.roi_size), values in [0, 1], axes (C, x, y, z).
    """
    from ctvl.data.io import load_volume

    stored = _load_plain_integer_nifti(path, cfg.max_voxels)
    if stored is not None:
        array, affine, rescale = stored
        return _preprocess_array(array, affine, cfg, str(path), rescale)
    volume = load_volume(
        path, on_unit_range=cfg.on_unit_range, hu_window=cfg.hu_window, max_voxels=cfg.max_voxels
    )
    return preprocess_volume(volume, cfg)


def preprocess_volume(volume, cfg: PreprocessConfig) -> np.ndarray:
    """Fast path equal to :func:`build_eval_transforms` (max abs difference <= 1e-3).

    Args:
        volume: a :class:`~ctvl.data.io.CTVolume` (or any object with ``array`` (i, j, k) in HU, any real
            dtype and memory layout, and ``affine`` (4, 4) voxel -> RAS mm). A non-RAS volume is reoriented
            like MONAI's ``Orientation`` does, without copying it.
        cfg: preprocessing config.

    Returns:
        np.ndarray, float32, C-contiguous: shape (1, *cfg.roi_size), values in [0, 1], axes (C, x, y, z)
        in ``cfg.orientation``.

    Raises:
        ValueError: the array is not 3D or the affine is not 4x4.
    """
    source = getattr(volume, "source", "") or "<in-memory volume>"
    array, affine = np.asarray(volume.array), np.asarray(volume.affine, dtype=np.float64)
    return _preprocess_array(array, affine, cfg, source)


def _preprocess_array(array, affine, cfg: PreprocessConfig, source: str, rescale=(1.0, 0.0)) -> np.ndarray:
    """preprocess_volume on ``rescale[0] * array + rescale[1]`` (HU)."""
    if array.ndim != 3 or affine.shape != (4, 4):
        raise ValueError(
            f"{source}: expected a 3D array and a 4x4 affine, got shapes {array.shape} and {affine.shape}"
        )
    ornt = _orientation_transform(affine, cfg.orientation)
    shape = tuple(int(array.shape[int(np.flatnonzero(ornt[:, 0] == k)[0])]) for k in range(3))
    reoriented_affine = affine @ orientations.inv_ornt_aff(ornt, array.shape)
    scale, offset, out_shape = compute_spacing_grid(shape, reoriented_affine, cfg.spacing)
    if scale is None:  # sheared voxel grid: the resampling is not separable
        logger.info("%s: non-orthogonal voxel axes; using the MONAI pipeline", source)
        hu = array.astype(np.float32) * np.float32(rescale[0]) + np.float32(rescale[1])
        return _preprocess_with_monai(hu, affine, cfg)
    return _resample_window_crop(array, ornt, shape, scale, offset, out_shape, cfg, rescale)


def _load_plain_integer_nifti(
    path, max_voxels: int
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]] | None:
    """Stored integers, affine and (slope, intercept) of a NIfTI that io.load_volume would pass unchanged.

    Returns None (the caller then uses io.load_volume) for anything else: not a NIfTI file, unreadable,
    not 3D, non-integer storage, no sform (io checks the raw pixdim then), non-finite or singular
    affine or scaling, or values in [0, 1] (io refuses or converts those, per ``on_unit_range``).
    The voxels are read by ``io.load_nifti_unscaled``, which checks the header's size first.
    """
    import nibabel as nib

    from ctvl.data.io import load_nifti_unscaled

    if not str(path).lower().endswith((".nii", ".nii.gz")) or not os.path.isfile(path):
        return None
    try:
        img = nib.load(path)
        proxy, affine = img.dataobj, np.asarray(img.affine, dtype=np.float64)
        slope, inter = float(getattr(proxy, "slope", 1.0)), float(getattr(proxy, "inter", 0.0))
        shape = tuple(int(n) for n in img.shape)
        if (
            img.get_data_dtype().kind not in "iu"
            or int(img.header.get("sform_code", 0)) <= 0
            or len(shape) < 3
            or any(n != 1 for n in shape[3:])
            or min(shape[:3]) < 2
            or not np.all(np.isfinite(affine))
            or abs(np.linalg.det(affine[:3, :3])) < 1e-12
            or not (np.isfinite(slope) and np.isfinite(inter) and slope != 0.0)
        ):
            return None
        array = np.asarray(load_nifti_unscaled(img, path, max_voxels)).reshape(shape[:3], order="A")
    except Exception:  # noqa: BLE001 - io.load_volume re-reads the file and reports the problem
        return None
    lo, hi = sorted((slope * float(array.min()) + inter, slope * float(array.max()) + inter))
    if lo >= -0.01 and hi <= 1.01 and hi > lo:  # io.load_volume's "already scaled to [0, 1]" rule
        return None
    return array, affine, (slope, inter)


def compute_spacing_grid(shape: Sequence[int], affine: np.ndarray, spacing: Sequence[float]):
    """Output grid of MONAI's ``Spacing(pixdim=spacing)`` (``diagonal=False``, ``scale_extent=False``).

    Output voxel ``j`` along axis ``k`` samples input voxel coordinate ``scale[k] * j + offset[k]`` (voxel
    centres at integers); MONAI clamps coordinates outside ``[0, n - 1]`` (``padding_mode="border"``).

    Args:
        shape: input spatial shape (x, y, z).
        affine (np.ndarray, float64): shape (4, 4), voxel -> RAS mm of the (reoriented) input.
        spacing: target spacing in mm.

    Returns:
        ``(scale, offset, out_shape)``: two float64 arrays of shape (3,) and a tuple of 3 ints;
        ``scale`` and ``offset`` are None when the voxel-to-voxel map is not axis-aligned.
    """
    from monai.data.utils import AFFINE_TOL, affine_to_spacing, compute_shape_offset, zoom_affine

    in_spacing = affine_to_spacing(affine, 3, np.float64)
    target = np.asarray(spacing, dtype=np.float64)
    # Spacing keeps an input spacing within AFFINE_TOL of the target (monai Spacing.__call__).
    out_d = np.where(np.abs(in_spacing - target) <= AFFINE_TOL, in_spacing, target)
    new_affine = zoom_affine(affine, out_d, diagonal=False)
    out_shape, offset = compute_shape_offset(shape, affine, new_affine, scale_extent=False)
    new_affine[:3, 3] = offset[:3]
    xform = np.linalg.solve(affine, new_affine)  # output voxel -> input voxel
    out_shape = tuple(int(s) for s in out_shape)
    off_diagonal = np.abs(xform[:3, :3] - np.diag(np.diag(xform[:3, :3])))
    if (off_diagonal @ (np.asarray(out_shape, np.float64) - 1.0)).max() > _MAX_IGNORED_SHIFT:
        return None, None, out_shape
    return np.diag(xform)[:3].copy(), xform[:3, 3].copy(), out_shape


def compute_pad_crop(n: int, roi: int) -> tuple[int, int, int]:
    """How ``SpatialPad(roi)`` then ``CenterSpatialCrop(roi)`` map a length-``n`` axis into the output.

    SpatialPad puts ``(roi - n) // 2`` voxels before and the rest after; CenterSpatialCrop starts at
    ``n // 2 - roi // 2``.

    Returns:
        ``(dst_start, dst_stop, src_start)``: output voxels ``dst_start:dst_stop`` hold input voxels
        ``src_start:src_start + dst_stop - dst_start``; the other output voxels are padding.
    """
    before = max(roi - n, 0) // 2
    padded = max(roi, n)
    crop = max(padded // 2 - roi // 2, 0)
    dst_start, dst_stop = max(before - crop, 0), min(roi, n + before - crop)
    return dst_start, dst_stop, dst_start + crop - before


def _orientation_transform(affine: np.ndarray, axcodes: str) -> np.ndarray:
    """nibabel orientation transform from the affine's axes to ``axcodes`` (as MONAI's Orientation)."""
    src = orientations.io_orientation(affine)
    dst = orientations.axcodes2ornt(tuple(axcodes), labels=(("L", "R"), ("P", "A"), ("I", "S")))
    return orientations.ornt_transform(src, dst)


def _axis_samples(n: int, coords: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbours and weights for sampling a length-``n`` axis at ``coords`` (border clamping).

    Returns:
        ``(i0, i1, w)``: int arrays and float32 weights; the sample is ``(1 - w) * a[i0] + w * a[i1]``.
    """
    coords = np.clip(coords, 0.0, n - 1.0)
    if mode == "nearest":  # torch grid_sample rounds half to even, as np.rint does
        i0 = np.rint(coords).astype(np.intp)
        return i0, i0, np.zeros(len(i0), np.float32)
    i0 = np.minimum(np.floor(coords).astype(np.intp), max(n - 2, 0))
    return i0, np.minimum(i0 + 1, n - 1), (coords - i0).astype(np.float32)


def _resample_window_crop(array, ornt, shape, scale, offset, out_shape, cfg, rescale) -> np.ndarray:
    """Separable resampling of the cropped output voxels, rescale to HU, HU window, zero padding."""
    out = np.zeros((1, *cfg.roi_size), np.float32)
    plans = [compute_pad_crop(out_shape[k], cfg.roi_size[k]) for k in range(3)]
    if any(stop <= start for start, stop, _ in plans):
        return out
    samples = {}
    for axis in range(3):  # axes of the stored array
        k, flipped = int(ornt[axis, 0]), ornt[axis, 1] < 0
        start, stop, src = plans[k]
        j = np.arange(src, src + stop - start, dtype=np.float64)
        i0, i1, w = _axis_samples(shape[k], scale[k] * j + offset[k], cfg.interpolation)
        if flipped:  # index in the stored array of reoriented voxel i
            i0, i1 = shape[k] - 1 - i0, shape[k] - 1 - i1
        samples[axis] = (i0, i1, w)
    # Work in memory order (largest stride first): the first pass reads whole contiguous slabs and shrinks
    # the data most, and every later pass reads and writes C-contiguous arrays.
    order = sorted(range(3), key=lambda a: -abs(array.strides[a]))
    data = _lerp_slabs(array.transpose(order), *samples[order[0]])
    for pos in (1, 2):
        data = _lerp_take(data, pos, *samples[order[pos]])
    if tuple(rescale) != (1.0, 0.0):  # stored values -> HU; commutes with linear interpolation
        data *= np.float32(rescale[0])
        data += np.float32(rescale[1])
    _window_inplace(data, cfg.hu_window)
    stored_axis = [int(np.flatnonzero(ornt[:, 0] == k)[0]) for k in range(3)]  # output axis k <- stored axis
    out[(0, *(slice(p[0], p[1]) for p in plans))] = data.transpose([order.index(a) for a in stored_axis])
    return out


def _lerp_slabs(array: np.ndarray, i0, i1, w) -> np.ndarray:
    """Linear interpolation along axis 0, one output slab at a time (no full-volume float copy).

    Returns:
        np.ndarray, float32, C-contiguous: shape (len(i0), *array.shape[1:]).
    """
    out = np.empty((len(i0), *array.shape[1:]), np.float32)
    for j in range(len(i0)):
        slab = out[j]
        if w[j] == 0.0:
            slab[...] = array[i0[j]]
            continue
        np.subtract(array[i1[j]], array[i0[j]], out=slab, dtype=np.float32)
        slab *= w[j]
        np.add(slab, array[i0[j]], out=slab, dtype=np.float32)
    return out


def _lerp_take(data: np.ndarray, axis: int, i0, i1, w) -> np.ndarray:
    """Linear interpolation of float32 ``data`` along ``axis`` with gathered neighbours."""
    shape = [1, 1, 1]
    shape[axis] = -1
    lo = np.take(data, i0, axis=axis)
    if not w.any():
        return lo
    hi = np.take(data, i1, axis=axis)
    hi -= lo
    hi *= w.reshape(shape)
    hi += lo
    return hi


def _window_inplace(data: np.ndarray, hu_window) -> None:
    """ScaleIntensityRange(a_min, a_max -> 0, 1, clip=True), in place on float32 ``data``."""
    low, high = (float(v) for v in hu_window)
    data -= np.float32(low)
    data /= np.float32(high - low)
    np.clip(data, 0.0, 1.0, out=data)


def _preprocess_with_monai(array: np.ndarray, affine: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """General fallback (oblique/sheared voxel grids): the MONAI pipeline itself."""
    import torch
    from monai.data import MetaTensor

    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]  # (1, i, j, k)
    image = MetaTensor(tensor, affine=torch.as_tensor(affine))
    out = build_eval_transforms(cfg)({IMAGE_KEY: image})[IMAGE_KEY]
    return np.ascontiguousarray(out.numpy(), dtype=np.float32)
