"""Parallel-corpus readers: a TSV file (source TAB target) or a prefix of line-aligned files."""

from __future__ import annotations

import codecs
import gzip
import logging
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from seqformer.errors import DataError

log = logging.getLogger(__name__)


def open_binary(path: Path):
    """Open a plain or gzipped file for reading bytes."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a file")
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def decode_lines(raw: Iterable[bytes], name: str) -> Iterator[str]:
    """UTF-8 lines without their line endings; a bad byte is reported with its line and column.

    A byte-order mark (Windows editors) at the start is dropped, not glued to the first sentence.
    NUL bytes (a UTF-16 file reads as valid UTF-8 with one after every letter) and a carriage return
    inside a line (old Mac line endings would make the whole file one line) are errors too.
    """
    for lineno, line in enumerate(raw, start=1):
        if lineno == 1 and line.startswith(codecs.BOM_UTF8):
            line = line[len(codecs.BOM_UTF8):]
        try:
            text = line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as err:
            raise DataError(f"{name}:{lineno}: not valid UTF-8 ({err.reason} at byte {err.start + 1} of the line)"
                            ) from None
        if "\x00" in text:
            raise DataError(f"{name}:{lineno}: NUL byte at character {text.index(chr(0)) + 1} of the line "
                            "(a UTF-16 file? save it as UTF-8)")
        if "\r" in text:
            raise DataError(f"{name}:{lineno}: carriage return inside the line at character {text.index(chr(13)) + 1}"
                            " (lines must end with \\n or \\r\\n, not \\r alone)")
        yield text


def read_lines(path: Path) -> list[str]:
    """All lines of a plain or gzipped UTF-8 text file without their line endings."""
    return [line for chunk in read_line_chunks(path, 1 << 16) for line in chunk]


def read_line_chunks(path: Path, size: int) -> Iterator[list[str]]:
    """The lines of a plain or gzipped UTF-8 text file, ``size`` at a time, read as the chunks are asked for."""
    try:
        with open_binary(path) as f:
            chunk: list[str] = []
            for line in decode_lines(f, str(path)):
                chunk.append(line)
                if len(chunk) == size:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk
    except (OSError, EOFError, zlib.error) as err:  # zlib.error: corrupt compressed data
        raise DataError(f"{path}: cannot read ({err})") from None


def _find(prefix: str, lang: str) -> Path:
    for candidate in (Path(f"{prefix}.{lang}"), Path(f"{prefix}.{lang}.gz")):
        if candidate.is_file():
            return candidate
    raise DataError(f"{prefix}: neither {prefix}.{lang} nor {prefix}.{lang}.gz exists")


def is_tsv(spec: str) -> bool:
    return spec.endswith(".tsv") or spec.endswith(".tsv.gz")


def read_tsv(path: Path) -> list[tuple[str, str]]:
    """Read ``source<TAB>target`` lines; extra columns (e.g. attribution) are ignored, and so are blank lines
    (as line-aligned corpora drop empty pairs). A line with text in more columns than the first line has text
    in is an error: a tab inside a sentence would have cut it silently (the first line's empty trailing columns,
    as spreadsheets export them, do not count)."""
    pairs, width = [], 0
    for lineno, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 2:
            raise DataError(f"{path}:{lineno}: expected 'source<TAB>target', found {len(cols)} column(s)")
        width = width or max(2, 1 + max(i for i, c in enumerate(cols) if c.strip()))
        if len(cols) > width and any(c.strip() for c in cols[width:]):
            raise DataError(f"{path}:{lineno}: {len(cols)} tab-separated columns, the first line has {width} with "
                            "text: a tab inside a sentence? (the text after it would be lost)")
        pairs.append((cols[0].strip(), cols[1].strip()))
    return pairs


def read_pair_files(src_path: Path, tgt_path: Path) -> list[tuple[str, str]]:
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: files must be line-aligned")
    return [(s.strip(), t.strip()) for s, t in zip(src, tgt)]


def read_parallel(spec: str, src_lang: str = "en", tgt_lang: str = "fr") -> list[tuple[str, str]]:
    """Resolve DATA as a .tsv[.gz] file or a prefix P of P.<src>[.gz] / P.<tgt>[.gz]."""
    if is_tsv(spec):
        return read_tsv(Path(spec))
    return read_pair_files(_find(spec, src_lang), _find(spec, tgt_lang))


def drop_empty(pairs: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    """Training skips pairs with an empty side (they teach nothing but the end token), with a warning
    naming ``name`` and how many."""
    kept = [(s, t) for s, t in pairs if s and t]
    if len(kept) < len(pairs):
        log.warning("%s: skipped %d pair(s) with an empty source or target side", name, len(pairs) - len(kept))
    return kept
