"""Image files to uint8 tensors, naming every file that cannot be decoded.

:class:`ImageDecoder` turns one file into a (C, H, W) uint8 tensor; :func:`decode_files` decodes
many in threads into one (N, C, H, W) tensor and either stops with the list of every file that
failed (:class:`UnreadableImagesError`) or leaves them out with one warning listing them.

A JPEG whose data is corrupt often still decodes: libjpeg fills the broken part with grey and
only prints a warning ("Corrupt JPEG data: ...") on the process's C stderr, naming no file. Such
a warning fails the file here: while files decode, the C stderr is captured, and when it holds a
libjpeg warning the JPEG files are decoded once more, one at a time, to find which ones warn.
(PIL silences these warnings, so this needs torchvision's decoder, which is tried first.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from stn.ops._checks import Size2, check_size

from .base import DataMissingError

log = logging.getLogger(__name__)

try:  # torchvision's decoders are ~4x faster than PIL on small JPEGs; PIL takes over without them
    from torchvision.io import ImageReadMode, decode_image, read_file
except ImportError:  # pragma: no cover
    decode_image = None
# torchvision 0.29 deprecates its image codecs in favour of TorchCodec; they still work, and a
# failure (or this warning raised as an error) falls back to PIL.
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision",
    category=DeprecationWarning,
)

JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
# libjpeg's warnings (jerror.h JWRN_*) that mean the picture is damaged
_LIBJPEG_WARNING = re.compile(
    r"^(Corrupt JPEG data|Premature end of JPEG file|Invalid SOS parameters|"
    r"Inconsistent progression sequence|Application transferred too few scanlines)"
)
# how many unreadable files a message lists before "and N more"
_LISTED = 20


class UnreadableImagesError(DataMissingError):
    """Image files that cannot be decoded; ``failures`` maps each path to the reason."""

    def __init__(self, failures: Dict[str, str]) -> None:
        self.failures = dict(failures)
        RuntimeError.__init__(
            self,
            f"{len(failures)} image file(s) cannot be decoded: {describe(failures)}. Replace or delete "
            "them, or leave them out with `data.skip_unreadable=true`.",
        )


def describe(failures: Dict[str, str]) -> str:
    """``path (reason); ...`` for the first files, then how many more."""
    items = [f"{path} ({reason})" for path, reason in sorted(failures.items())]
    more = len(items) - _LISTED
    return "; ".join(items[:_LISTED]) + (f"; and {more} more" if more > 0 else "")


class ImageDecoder:
    """File path -> uint8 (C, H, W): decode, optionally resize, then fit to ``image_size``.

    Args:
        channels: 1 (grey) or 3 (RGB); other modes (palette, alpha, CMYK) are converted.
        image_size: final (H, W), reached by ``center_crop`` or by resizing; None keeps the size.
        resize: resize first: an int sets the shorter side (keeping the aspect ratio), a pair sets
            (H, W); None: no first resize.
        center_crop: reach ``image_size`` by a center crop instead of a resize.
    """

    def __init__(
        self,
        channels: int = 3,
        image_size: Optional[Size2] = None,
        resize: Optional[Size2] = None,
        center_crop: bool = False,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.channels = channels
        self.image_size = None if image_size is None else check_size(image_size, "image_size")
        self.resize = resize if resize is None or isinstance(resize, int) else check_size(resize, "resize")
        self.center_crop = center_crop

    def options(self) -> dict:
        return {
            "channels": self.channels,
            "image_size": self.image_size,
            "resize": self.resize,
            "center_crop": self.center_crop,
        }

    def decode(self, path: str) -> Tensor:
        """The file as uint8 (channels, H, W), without resizing."""
        if decode_image is not None:
            try:
                mode = ImageReadMode.RGB if self.channels == 3 else ImageReadMode.GRAY
                return decode_image(read_file(path), mode=mode)
            except Exception:  # a format torchvision does not decode (bmp, tiff, ppm...)
                pass
        from PIL import Image

        with Image.open(path) as im:
            arr = np.array(im.convert("RGB" if self.channels == 3 else "L"))
        img = torch.from_numpy(arr)
        return img.permute(2, 0, 1) if img.dim() == 3 else img[None]

    def __call__(self, path: str) -> Tensor:
        img = self.decode(path)
        if self.resize is not None:
            img = TF.resize(img, self.resize, antialias=True)
        if self.image_size is not None and tuple(img.shape[-2:]) != self.image_size:
            if self.center_crop:
                img = TF.center_crop(img, list(self.image_size))
            else:
                img = TF.resize(img, list(self.image_size), antialias=True)
        return img.contiguous()


@contextlib.contextmanager
def _c_stderr() -> Iterator[List[str]]:
    """Collect what is written to the process's stderr (file descriptor 2, where C libraries
    print) meanwhile; the list gets the lines when the block ends."""
    lines: List[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):  # no real stderr: nothing to capture
        yield lines
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines += tmp.read().decode(errors="replace").splitlines()


def _libjpeg_warning(path: str, decoder: Callable[[str], Tensor]) -> Optional[str]:
    """The first libjpeg warning that decoding the JPEG file ``path`` prints, if any."""
    with _c_stderr() as lines:
        decoder(path)
    return next((line.strip() for line in lines if _LIBJPEG_WARNING.match(line.strip())), None)


def decode_files(
    paths: Sequence[str],
    decoder: Callable[[str], Tensor],
    num_threads: int = 1,
    skip_unreadable: bool = False,
) -> Tuple[Tensor, List[int]]:
    """Decode image files in parallel threads into one uint8 tensor (N, C, H, W).

    Every file that raises, or that is a JPEG on which libjpeg warns of corrupt data, is
    unreadable. ``skip_unreadable`` False: raise :class:`UnreadableImagesError` listing all of
    them; True: leave them out with one warning listing them. Returns the images and the indices
    into ``paths`` of the files they come from (all of them, unless some were left out).
    """
    if not paths:
        raise ValueError("no image files to decode")
    failures: Dict[int, str] = {}

    def attempt(i: int) -> Optional[Tensor]:
        try:
            return decoder(paths[i])
        except Exception as err:
            failures[i] = f"{type(err).__name__}: {err}".strip().replace("\n", " ")
            return None

    def work(start: int) -> None:
        for i in range(start, min(start + chunk, len(paths))):
            img = attempt(i)
            if img is None:
                continue
            if img.shape != out.shape[1:]:
                raise ValueError(
                    f"{paths[i]} decodes to {tuple(img.shape)} but {paths[first]} to {tuple(out.shape[1:])}: "
                    "set image_size (with resize/center_crop) to bring all images to one size"
                )
            out[i] = img

    chunk = 256
    with _c_stderr() as printed:
        first, img = 0, attempt(0)
        while img is None and first + 1 < len(paths):  # the first decodable file sets the shape
            first += 1
            img = attempt(first)
        if img is not None:
            out = torch.empty((len(paths), *img.shape), dtype=torch.uint8)
            out[first] = img
            with ThreadPoolExecutor(max(1, num_threads)) as pool:
                list(pool.map(work, range(first + 1, len(paths), chunk)))  # list(): re-raise errors
    warned = [line for line in printed if _LIBJPEG_WARNING.match(line.strip())]
    for line in printed:  # give back what others printed meanwhile
        if line not in warned:
            print(line, file=sys.stderr)
    if warned:
        for i, path in enumerate(paths):
            if i not in failures and str(path).lower().endswith(JPEG_SUFFIXES):
                message = _libjpeg_warning(path, decoder)
                if message:
                    failures[i] = f"libjpeg: {message}"
    if failures:
        named = {str(paths[i]): reason for i, reason in failures.items()}
        if not skip_unreadable or len(failures) == len(paths):
            raise UnreadableImagesError(named)
        log.warning("leaving out %d image file(s) that cannot be decoded: %s", len(named), describe(named))
    kept = [i for i in range(len(paths)) if i not in failures]
    return (out if len(kept) == len(paths) else out[torch.tensor(kept)]), kept
