"""Fetching a dataset archive: download with an MD5 check, then a safe, atomic extraction."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

from tqdm.auto import tqdm

from poolkit.errors import DownloadError

__all__ = ["download_and_extract", "download_url", "extract_archive", "md5sum"]

_CHUNK = 1 << 20


def md5sum(path: Path) -> str:
    """Hex MD5 of a file's content."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download_url(url: str, dest: Path, md5: str, *, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` unless ``dest`` already has MD5 ``md5``; return ``dest``.

    The file is streamed to a temporary file next to ``dest`` and moved into place only once its
    MD5 matches, so ``dest`` is either absent or complete and correct.

    Raises:
        ConnectionError: the download failed (no network, HTTP error...).
        ValueError: the downloaded file's MD5 is not ``md5``.
    """
    dest = Path(dest)
    if dest.is_file() and md5sum(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None) as bar:
                        for block in iter(lambda: response.read(_CHUNK), b""):
                            out.write(block)
                            digest.update(block)
                            bar.update(len(block))
            except (urllib.error.URLError, OSError) as exc:
                raise DownloadError(
                    f"cannot download {url} ({exc}); check the network, or download the archive by hand "
                    f"into {dest.parent} and extract it there"
                ) from exc
        got = digest.hexdigest()
        if got != md5:
            raise ValueError(
                f"{url}: the download has MD5 {got} but {md5} was expected; it is corrupt or the file "
                "changed upstream: try again"
            )
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return dest


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    name = member.name
    parts = Path(name).parts
    if not (member.isfile() or member.isdir()):
        why = "a link or a special file"
    elif os.path.isabs(name) or name.startswith(("/", "\\")) or (parts and ":" in parts[0]):
        why = "an absolute path"
    elif ".." in parts:
        why = "a path that leaves the destination"
    else:
        return
    raise ValueError(f"{archive}: unsafe member {name!r} ({why}); refusing to extract the archive")


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:*")
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise ValueError(f"{archive}: cannot read the archive ({exc}); expected a .tar.gz file") from None


def extract_archive(archive: Path, dest_dir: Path) -> list[Path]:
    """Extract a (possibly compressed) tar archive into ``dest_dir``; return the top-level paths made.

    Safe: every member must be a regular file or folder with a relative path inside ``dest_dir``
    (no ``..``, no absolute path, no link), else nothing is extracted. Atomic per top-level entry:
    the archive is extracted into a temporary folder inside ``dest_dir`` and each top-level entry is
    then moved into place with :func:`os.replace`.

    Raises:
        ValueError: the archive is unreadable or holds an unsafe member.
        FileExistsError: a top-level entry already exists in ``dest_dir``.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    with _open_tar(archive) as tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise ValueError(f"{archive}: cannot read the archive ({exc}); expected a .tar.gz file") from None
        for member in members:
            _check_member(archive, member)
        tops = sorted({Path(m.name).parts[0] for m in members if Path(m.name).parts and m.name != "."})
        for top in tops:
            if (dest_dir / top).exists():
                raise FileExistsError(
                    f"{dest_dir / top} already exists; remove it to extract {archive.name} again"
                )
        staging = Path(tempfile.mkdtemp(dir=dest_dir, prefix=".extract-"))
        try:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, members=members, filter="data")
            else:  # Python without extraction filters: the member checks above are the guard
                tar.extractall(staging, members=members)
            for top in tops:
                os.replace(staging / top, dest_dir / top)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return [dest_dir / top for top in tops]


def download_and_extract(url: str, md5: str, dest_dir: Path) -> list[Path]:
    """Download ``url`` into ``dest_dir`` (MD5-checked), extract it there, and return the extracted paths.

    The archive is kept next to the extracted folder, so a second extraction needs no download.
    """
    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise ValueError(f"{url}: the URL names no file")
    archive = download_url(url, Path(dest_dir) / name, md5)
    return extract_archive(archive, dest_dir)
