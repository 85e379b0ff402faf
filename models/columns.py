"""Column kinds: what each raw column of a real export is, and how it becomes network inputs.

A kind is inferred once, from the first accepted increment, and kept in the workspace
schema (lepton.yaml's ``data.columns`` overrides it). Each kind turns into a fixed block
of input columns, so the network's input width never changes after the first increment:

- ``numeric`` / ``boolean``: the value (standardised) and a missing indicator;
- ``datetime``: calendar parts (fractional year, month, day of week, hour) and a missing indicator;
  a date later than any seen reads as the latest seen (time only moves on: a trend the network saw
  over a few months must not be extrapolated years ahead);
- ``categorical``: one-hot over a vocabulary of ``capacity`` slots that fills as increments
  bring values; slot 0 is shared by unseen, rare and missing values;
- ``text``: word counts hashed into ``buckets`` slots;
- ``image``: encoded image bytes (PNG, JPEG, ...) of one size, decoded to their pixels (height x width x
  channels, in [0, 1], standardised like numbers) and a missing indicator; the size is the first
  increment's, and a network over images (``train.network: cnn``) reads the pixel block as an image;
- ``identifier`` / ``ignore``: nothing (an id or a free-text code predicts nothing that generalises).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import zlib
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from pandas.api import types

Kind = Literal["numeric", "boolean", "categorical", "text", "identifier", "datetime", "image", "ignore"]
KINDS: tuple[str, ...] = get_args(Kind)
DATETIME_PARTS = ("year", "month", "weekday", "hour")
_WORD = re.compile(r"\w+")
_DATE_LIKE = re.compile(r"^\s*\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?\s*(Z|[+-]\d{2}:?\d{2})?\s*$")
# Dates with the month in words, as exports and spreadsheets write them: "Jan 1 2000", "1 January 2000", "01-Jan-2000",
# "Sep 30, 2010 14:05", "Mar 2021".
_MONTH = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
_MONTH_DATE = re.compile(
    rf"^\s*(?:\d{{1,2}}[ \-/.])?{_MONTH}\.?(?:[ \-/.]\d{{1,2}}(?:st|nd|rd|th)?)?,?[ \-/.]\d{{2,4}}(?:[ T]\d{{1,2}}:\d{{2}}(?::\d{{2}})?)?\s*$",
    re.IGNORECASE,
)


# The first bytes of the image formats an image column may hold: PNG, JPEG, GIF, BMP, WebP (RIFF), TIFF.
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")


_BYTES = (bytes, bytearray, memoryview)
UNDECODABLE = "not a decodable image"  # what ``image_problem`` says of bytes that are no image


def is_image_bytes(value: Any) -> bool:
    """Bytes that start as an encoded image does."""
    return isinstance(value, _BYTES) and bytes(value[:8]).startswith(_IMAGE_MAGIC)


def looks_like_images(values: pd.Series) -> bool:
    """Nearly every non-empty value is encoded image bytes."""
    sample = values.dropna().head(200)
    return len(sample) > 0 and float(np.mean([is_image_bytes(v) for v in sample])) >= 0.95


_GREY = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def is_missing(value: Any) -> bool:
    """None, NaN or pandas' NA: a missing value, not bytes to decode."""
    return value is None or (not isinstance(value, _BYTES) and bool(pd.isna(value)))


def _pixels(image: Any, channels: int | None) -> np.ndarray:
    """An opened image as uint8 (height, width, channels): grey as 1 channel and colour as 3 unless ``channels`` says
    which; deeper grey (16-bit, 32-bit, float) scaled into 0-255 rather than clipped."""
    grey = image.mode in _GREY
    if grey and image.mode not in ("1", "L", "LA"):
        values = np.asarray(image, dtype=np.float64)
        top = 1.0 if image.mode == "F" and values.max(initial=0.0) <= 1.0 else 65535.0 if image.mode.startswith("I;16") else max(values.max(initial=0.0), 255.0)
        values = np.clip(values / top * 255.0, 0, 255).round().astype(np.uint8)
        if channels == 3:
            values = np.repeat(values[:, :, None], 3, axis=2)
        return values[:, :, None] if values.ndim == 2 else values
    want = channels or (1 if grey else 3)
    pixels = np.asarray(image.convert("L" if want == 1 else "RGB"))
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def decode_image(value: Any, channels: int | None = None) -> np.ndarray | None:
    """Encoded image bytes as a uint8 array (height, width, channels), converted to ``channels`` (1 grey, 3 colour) when
    given, else as the image is; None when the bytes do not decode (corrupt, not an image, or a decompression bomb)."""
    from PIL import Image  # Pillow: only where images are decoded

    if isinstance(value, str):  # over HTTP, JSON carries bytes as base64 text
        try:
            value = base64.b64decode(value, validate=True)
        except (ValueError, binascii.Error):
            return None
    try:
        with Image.open(io.BytesIO(bytes(value))) as image:
            return _pixels(image, channels)
    except Exception:  # noqa: BLE001 - Pillow raises many kinds (and DecompressionBombError); each means: not an image to read
        return None


# Images a first increment's size and channels are judged from: the rest are checked against them.
SHAPE_SAMPLE = 200


def image_shape(series: pd.Series) -> list[int] | None:
    """(height, width, channels) of a column: the most common size among its first images that decode, 3 channels when
    any of them is colour (grey ones are read as colour too), else 1; None when none decodes."""
    decoded = [p for p in (decode_image(v) for v in series.dropna().head(SHAPE_SAMPLE)) if p is not None]
    if not decoded:
        return None
    sizes = pd.Series([p.shape[:2] for p in decoded]).value_counts()
    height, width = sizes.index[0]
    return [int(height), int(width), 3 if any(p.shape[2] == 3 for p in decoded) else 1]


def image_problem(value: Any, shape: list[int]) -> str | None:
    """Why one image value cannot be read as an image of ``shape`` (None: it can, or it is missing)."""
    return None if is_missing(value) else _read(value, shape)[1]


def _read(value: Any, shape: list[int]) -> tuple[np.ndarray | None, str | None]:
    pixels = decode_image(value, channels=shape[2])
    if pixels is None:
        return None, UNDECODABLE
    if list(pixels.shape[:2]) != list(shape[:2]):
        return None, f"{pixels.shape[0]}x{pixels.shape[1]}, not {shape[0]}x{shape[1]}"
    return pixels, None


def image_block(series: pd.Series, shape: list[int]) -> np.ndarray:
    """An image column's inputs: its pixels in [0, 1] (height, width, channels order; NaN where missing) and a missing indicator."""
    size = int(np.prod(shape))
    out = np.full((len(series), size + 1), np.nan)
    out[:, size] = 0.0
    for i, value in enumerate(series.tolist()):
        if is_missing(value):
            out[i, size] = 1.0
            continue
        pixels, problem = _read(value, shape)
        if problem is not None:
            raise ValueError(f"column {series.name!r}, row {i}: {problem}")
        out[i, :size] = pixels.reshape(-1) / 255.0  # type: ignore[union-attr]
    return out


def is_text_series(series: pd.Series) -> bool:
    """Strings (object or pandas string dtype), as opposed to numbers, booleans and timestamps."""
    return bool(types.is_object_dtype(series) or types.is_string_dtype(series)) and not types.is_bool_dtype(series)


def looks_like_dates(values: pd.Series) -> bool:
    """Nearly every non-empty value is an ISO-like date or timestamp string, or a date with its month in words."""
    sample = values.dropna().astype(str).head(200)
    return len(sample) > 0 and (sample.str.match(_DATE_LIKE) | sample.str.match(_MONTH_DATE)).mean() >= 0.95


# Rows of a first increment from which a string column with nearly one value per row (this share of its values
# distinct) is read as names or addresses (an identifier, or text), not as categories: 16 first names in 16 rows
# filled 16 category slots, and every later increment warned of as many new categories.
UNREPEATED_ROWS = 12
UNREPEATED_SHARE = 0.9


def infer_kind(series: pd.Series, *, max_categories: int) -> tuple[Kind, str]:
    """The kind of one feature column, and why, from the first increment's values."""
    present = series.dropna()
    if len(present) == 0:
        return "ignore", "empty in the first increment"
    if types.is_bool_dtype(series):
        return "boolean", "true/false values"
    if types.is_datetime64_any_dtype(series):
        return "datetime", "timestamps"
    if types.is_numeric_dtype(series):
        return "numeric", "numbers"
    if looks_like_images(present):
        shape = image_shape(present)
        if shape is not None:
            return "image", f"encoded images, {shape[0]}x{shape[1]} with {shape[2]} channel(s)"
    if not is_text_series(series):
        return "categorical", f"values of type {series.dtype}"
    if isinstance(present.iloc[0], _BYTES):
        return "ignore", "bytes that are not images"
    strings = present.astype(str)
    numbers = pd.to_numeric(strings.str.strip(), errors="coerce")
    if numbers.notna().mean() >= 0.9:
        # Numbers with a placeholder or two ('?', 'n/a'): those read as missing.
        return "numeric", f"numbers ({int(numbers.isna().sum())} placeholder value(s) read as missing)"
    if looks_like_dates(strings):
        return "datetime", "date strings, day first" if reads_day_first(series) else "date strings"
    distinct = strings.nunique()
    # A category repeats, in a small first increment too: nearly one value per row is names or addresses.
    unrepeated = len(strings) >= UNREPEATED_ROWS and distinct >= UNREPEATED_SHARE * len(strings)
    if not unrepeated and (distinct <= max_categories or distinct <= 0.5 * len(strings)):
        return "categorical", f"{distinct} distinct values in {len(strings)} rows"
    words = strings.map(lambda s: len(_WORD.findall(s))).mean()
    if words >= 3:
        return "text", f"{distinct} distinct values in {len(strings)} rows, {words:.1f} words each"
    return "identifier", f"{distinct} distinct values in {len(strings)} rows (nearly one per row)"


def width(kind: str, *, capacity: int, buckets: int, shape: list[int] | None = None) -> int:
    """Network inputs a column of ``kind`` takes (``shape``: an image column's height, width and channels)."""
    if kind == "image":
        return int(np.prod(shape)) + 1 if shape else 0
    return {"numeric": 2, "boolean": 2, "datetime": len(DATETIME_PARTS) + 1, "categorical": capacity, "text": buckets}.get(kind, 0)


def scaled(kind: str, *, capacity: int, buckets: int, shape: list[int] | None = None) -> list[bool]:
    """Which of a column's inputs are standardised (values, calendar parts and pixels; not indicators or one-hots)."""
    if kind in ("numeric", "boolean"):
        return [True, False]
    if kind == "datetime":
        return [True] * len(DATETIME_PARTS) + [False]
    if kind == "image":
        return [True] * (width(kind, capacity=capacity, buckets=buckets, shape=shape) - 1) + [False] if shape else []
    return [False] * width(kind, capacity=capacity, buckets=buckets)


def held_at_latest(kind: str, *, capacity: int, buckets: int, shape: list[int] | None = None) -> list[bool]:
    """Which of a column's inputs read as the latest value seen when they go beyond it: a datetime's fractional year."""
    if kind == "datetime":
        return [True] + [False] * len(DATETIME_PARTS)
    return [False] * width(kind, capacity=capacity, buckets=buckets, shape=shape)


def is_number_dtype(dtype: Any) -> bool:
    """A column dtype that holds only numbers, booleans or missing values: no text to parse."""
    return bool(types.is_bool_dtype(dtype) or types.is_numeric_dtype(dtype))


def number_block(values: np.ndarray) -> np.ndarray:
    """A numeric column's inputs: its values (NaN where missing) and a missing indicator."""
    return np.column_stack([values, np.isnan(values).astype(np.float64)])


# How exports write a yes-or-no value: read as 1 or 0 in a boolean column, whatever the case.
TRUTHS = {"true": "1", "false": "0", "yes": "1", "no": "0", "y": "1", "n": "0", "t": "1", "f": "0"}


def as_truths(series: pd.Series) -> pd.Series | None:
    """A text column of yes/no values as ``TRUTHS`` spells them, as true and false as a CSV reader gives them (bool, or
    objects beside gaps); None when it holds anything else, or no text."""
    if not is_text_series(series):
        return None
    present = series.dropna()
    folded = present.astype("string").str.strip().str.lower()
    if not len(present) or not folded.isin(TRUTHS).all():
        return None
    truths = folded.map(lambda v: TRUTHS[v] == "1").reindex(series.index)
    return truths.astype(bool) if len(present) == len(series) else truths.astype(object).where(series.notna(), np.nan)


def as_numbers(series: pd.Series, *, boolean: bool = False) -> np.ndarray:
    """A numeric or boolean column as float64, missing as NaN (text that is not a number too). 'true' and 'false' read
    as 1 and 0; in a ``boolean`` column, 'yes'/'no', 'Y'/'N' and 'T'/'F' too (a true/false column exported as yes/no
    was rejected as one that now holds text)."""
    if is_number_dtype(series.dtype):
        return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    text = series.astype("string").str.strip()
    truths = TRUTHS if boolean else {k: v for k, v in TRUTHS.items() if k in ("true", "false")}
    folded = text.str.lower()
    text = text.mask(folded.isin(truths), folded.map(truths))
    return pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


# Cells that stand for a missing value beside pandas' own ('', 'NA', 'N/A', 'null', ...): a '?' class label was learnt as a
# class, and a '-' category took a slot of its own.
PLACEHOLDERS = ["?", "-", "--"]
# Every cell text a CSV file's reader takes for a missing value: pandas' default list and the placeholders. A consumer whose
# frame holds the rows as its own reader left them ('?' in a numeric column) means missing as training did.
MISSING_TEXT = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL",
    "NaN", "None", "n/a", "nan", "null", *PLACEHOLDERS,
})


def without_placeholders(series: pd.Series) -> pd.Series:
    """A text column with the cells a CSV reader takes for missing (``MISSING_TEXT``) missing; any other column as it is."""
    if not types.is_object_dtype(series) and not types.is_string_dtype(series):
        return series
    gaps = series.map(lambda v: isinstance(v, str) and v.strip() in MISSING_TEXT).astype(bool)
    return series.mask(gaps, np.nan) if gaps.any() else series


# Amounts and shares as spreadsheets write them: a currency sign before or after ("$1,200", "-$5", "12 €"), a percent sign
# after ("12%", "4.5 %"), digits grouped by three with spaces ("1 200", a no-break or a narrow no-break space too) or,
# unless the comma is the decimal mark, with commas.
_CURRENCY = r"[$€£¥]"
_SIGNS = ((re.compile(rf"^\s*([+-]?)\s*{_CURRENCY}\s*"), r"\1"), (re.compile(rf"\s*(?:{_CURRENCY}|%)\s*$"), ""))
_SPACE_GROUP = re.compile(r"(?<=\d)[ \u00a0\u202f](?=\d{3}(?!\d))")
_COMMA_GROUP = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_DOT_GROUP = re.compile(r"(?<=\d)\.(?=\d{3}(?!\d))")
_PLAIN_NUMBER = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*")


def written_numbers(series: pd.Series, *, decimal_comma: bool = False) -> tuple[pd.Series, str, str] | None:
    """A text column whose every value is a number once a currency or percent sign and the separators grouping its
    digits are set aside (with ``decimal_comma``, a comma is the decimal mark, and where the column writes one, a dot
    then groups digits: "1.819,4"), at least one so written: as float64 (missing stays missing), an example as
    written, and how they were written (``grouped``: thousands separators alone, ``decimal_commas``: decimal commas,
    with or without dots grouping digits, ``written``: anything else). None for any other column. A share reads as
    written: "12%" is 12. Numbers among the text (a frame built by hand: [1234, '7,300']) read as themselves."""
    if not types.is_object_dtype(series) and not types.is_string_dtype(series):
        return None
    present = series.dropna()
    head = present.head(50)
    if not len(present) or not all(isinstance(v, str) or _is_plain_number(v) for v in head) or not any(isinstance(v, str) for v in head):
        return None
    text = present.astype("string").str.strip()
    signless = text
    for pattern, keep in _SIGNS:
        signless = signless.str.replace(pattern, keep, regex=True)
    spaceless = signless.str.replace(_SPACE_GROUP, "", regex=True)
    if decimal_comma:
        # A column that writes its decimals with a comma writes no decimal dot: a dot before three digits groups them.
        ungrouped = spaceless.str.replace(_DOT_GROUP, "", regex=True) if spaceless.str.contains(",", regex=False).any() else spaceless
        bare = ungrouped.str.replace(",", ".", regex=False)
    else:
        bare = spaceless.str.replace(_COMMA_GROUP, "", regex=True)
    written = bare != text
    if not written.any() or not bare.str.fullmatch(_PLAIN_NUMBER).all():
        return None
    numbers = pd.to_numeric(bare, errors="coerce").astype("float64").reindex(series.index)
    commas_alone = (spaceless == text).all()
    how = ("decimal_commas" if decimal_comma else "grouped") if commas_alone else "written"
    return numbers, str(text[written].iloc[0]), how


def _is_plain_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


# A date written as numbers with the year last (31/01/2000, 01-31-2000, 31.01.2000 14:05): which of the first two
# fields is the day, the values alone can tell only where one of them is above 12.
_NUMERIC_DATE = r"^\s*(\d{1,2})([/.-])(\d{1,2})\2(\d{2}|\d{4})(?!\d)"


_NUMERIC_DATE_MATCH = re.compile(_NUMERIC_DATE).match


def _numeric_dates(series: pd.Series) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A column's values as strings, and the first and second fields of those written as numbers with the year last
    (NaN for the others). Python's ``re`` value by value: a consumer's one-row call took 1.1 ms through pandas'
    ``str.extract``, 0.15 ms so, and a 100,000-row column 150 ms against 60."""
    if types.is_datetime64_any_dtype(series) or not is_text_series(series):
        return [], np.zeros(0), np.zeros(0)
    strings = [str(v) for v in series.dropna().tolist()]
    matches = [_NUMERIC_DATE_MATCH(v) for v in strings]
    first = np.array([float(m.group(1)) if m else np.nan for m in matches])
    second = np.array([float(m.group(3)) if m else np.nan for m in matches])
    return strings, first, second


def _example(strings: list[str], where: np.ndarray) -> str | None:
    hits = np.flatnonzero(where)
    return strings[hits[0]] if len(hits) else None


def _one_way(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which dates can only be read day first, and which only month first."""
    return (first > 12) & (first <= 31) & (second <= 12), (second > 12) & (second <= 31) & (first <= 12)


def date_order(series: pd.Series) -> tuple[str | None, str | None]:
    """Among a column's dates written as numbers with the year last: one that can only be read day first (13/05/2015)
    and one that can only be read month first (05/13/2015), None where there is none."""
    strings, first, second = _numeric_dates(series)
    day_only, month_only = _one_way(first, second)
    return _example(strings, day_only), _example(strings, month_only)


def either_way(series: pd.Series) -> str | None:
    """A numeric date of the column that reads both ways (01/05/2015), where none of them tells the order; else None."""
    strings, first, second = _numeric_dates(series)
    day_only, month_only = _one_way(first, second)
    return None if (day_only | month_only).any() else _example(strings, (first <= 12) & (second <= 12) & (first != second))


def reads_day_first(series: pd.Series) -> bool:
    """Whether a column's numeric dates (year last) say day first: one can only be read so (31/01/2000), and none
    only month first. Where none can be read one way only (01/05/2015), nothing says so: a weekly US export of
    early January (01/02, 01/05, 01/09) looks just like monthly dates written day first, so neither is guessed."""
    day_first, month_first = date_order(series)
    return day_first is not None and month_first is None


def as_datetimes(series: pd.Series, dayfirst: bool = False) -> pd.Series:
    """A datetime column as naive UTC timestamps, unparseable values as NaT.

    Dates written as numbers with the year last read month first (01/05/2015 is 5 January), or day first
    where ``dayfirst`` (1 May), whatever the value: left to itself, the parser reads 13/05/2015 day first
    and 01/05/2015 month first in one column. ``dayfirst`` touches no other form (2015-05-01 stays 1 May).
    """
    if types.is_datetime64_any_dtype(series):
        parsed = series
    else:
        strings = series.astype("string")
        if dayfirst:
            strings = strings.str.replace(_NUMERIC_DATE, lambda m: f"{m.group(3)}{m.group(2)}{m.group(1)}{m.group(2)}{m.group(4)}", regex=True)
        parsed = pd.to_datetime(strings, errors="coerce", utc=True, format="mixed")
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return parsed


def datetime_parts(series: pd.Series, dayfirst: bool = False) -> np.ndarray:
    """Calendar parts of a datetime column, one row per value, NaN where missing (``dayfirst``: see ``as_datetimes``)."""
    stamps = as_datetimes(series, dayfirst)
    year = stamps.dt.year + (stamps.dt.dayofyear - 1) / 366.0
    parts = [year, stamps.dt.month, stamps.dt.dayofweek, stamps.dt.hour]
    return np.column_stack([p.to_numpy(dtype=np.float64, na_value=np.nan) for p in parts])


def as_strings(series: pd.Series) -> pd.Series:
    """Category values as strings (numbers that arrive as codes compare as their text), missing as NA."""
    out = series.astype("string")
    return out.str.strip().replace("", pd.NA)


def folded(value: Any) -> str:
    """A value as compared regardless of case and spacing."""
    return " ".join(str(value).split()).casefold()


def known_spellings(series: pd.Series, known: set[str]) -> dict[str, str]:
    """Of the text values of ``series`` not in ``known``, those that differ from exactly one known value only in case or
    spacing, each with that value."""
    lookup: dict[str, list[str]] = {}
    for value in known:
        lookup.setdefault(folded(value), []).append(value)
    out = {}
    for value in pd.unique(series.dropna()):
        if isinstance(value, str) and value not in known and len(hits := lookup.get(folded(value), [])) == 1:
            out[value] = hits[0]
    return out


def one_hot(series: pd.Series, vocabulary: list[str], capacity: int) -> np.ndarray:
    """One-hot rows over ``capacity`` slots; slot 0 for values not in the vocabulary (or missing). A value that differs
    from one in the vocabulary only in case or spacing takes its slot, as training read it (``DataSchema.respelled``)."""
    values = as_strings(series)
    slots = {value: slot for slot, value in enumerate(vocabulary, start=1)}  # a value not in it (or missing): 0
    codes = values.map(slots).fillna(0).to_numpy(dtype=np.int64)
    if (codes == 0).any() and vocabulary:
        unknown = values[codes == 0]
        mapping = known_spellings(unknown, set(vocabulary))
        if mapping:
            codes[codes == 0] = unknown.map(lambda v: slots.get(mapping.get(v, v), 0) if isinstance(v, str) else 0).to_numpy(dtype=np.int64)
    out = np.zeros((len(series), capacity), dtype=np.float64)
    out[np.arange(len(series)), codes] = 1.0
    return out


def grown_vocabulary(series: pd.Series, vocabulary: list[str], capacity: int, min_rows: int) -> list[str]:
    """The vocabulary with this increment's new values appended, most frequent first, while slots last.

    Values seen in fewer than ``min_rows`` rows stay in the shared slot: a value seen once
    teaches nothing, and would take a slot for good.
    """
    counts = as_strings(series).dropna().value_counts()
    known = set(vocabulary)
    new = [str(v) for v, n in counts.items() if n >= min_rows and str(v) not in known]
    new.sort(key=lambda v: (-int(counts[v]), v))
    room = max(capacity - 1 - len(vocabulary), 0)
    return [*vocabulary, *new[:room]]


def _bucket(word: str, buckets: int) -> int:
    # crc32, not hash(): Python salts string hashes per process, and a model must hash alike everywhere.
    return zlib.crc32(word.encode()) % buckets


def hashed_words(series: pd.Series, buckets: int) -> np.ndarray:
    """Word counts of each text value hashed into ``buckets`` slots, as shares of its words."""
    out = np.zeros((len(series), buckets), dtype=np.float64)
    for i, text in enumerate(as_strings(series).tolist()):
        if text is pd.NA or text is None:
            continue
        words = _WORD.findall(text.lower())
        for word in words:
            out[i, _bucket(word, buckets)] += 1.0
        if words:
            out[i] /= len(words)
    return out


def encode_column(
    series: pd.Series, kind: str, *, vocabulary: list[str], capacity: int, buckets: int, shape: list[int] | None = None, dayfirst: bool = False,
) -> np.ndarray:
    """One raw column as its block of network inputs (float64; NaN marks a missing value to impute)."""
    n = len(series)
    if kind == "image":
        return image_block(series, shape) if shape else np.zeros((n, 0), dtype=np.float64)
    if kind in ("numeric", "boolean"):
        return number_block(as_numbers(series, boolean=kind == "boolean"))
    if kind == "datetime":
        parts = datetime_parts(series, dayfirst)
        return np.column_stack([parts, np.isnan(parts[:, 0]).astype(np.float64)])
    if kind == "categorical":
        return one_hot(series, vocabulary, capacity)
    if kind == "text":
        return hashed_words(series, buckets)
    return np.zeros((n, 0), dtype=np.float64)


def native(value: Any) -> Any:
    """A JSON-friendly Python scalar for a NumPy/pandas value."""
    return value.item() if isinstance(value, np.generic) else value


def task_of(labels: pd.Series) -> str:
    """auto: a float label with many distinct values, or numbers with about one row each, is a number to predict;
    anything else is classes.

    Whole numbers in a float column are often class ids with gaps (NaN makes a column float),
    so they need more distinct values (a fuel consumption of 18.0, 15.0, ... still counts).
    """
    values = labels.dropna()
    if types.is_float_dtype(values) and len(values):
        whole = bool(np.all(np.mod(values.to_numpy(dtype=np.float64), 1.0) == 0))
        if values.nunique() > (20 if whole else 10):
            return "regression"
    if (types.is_float_dtype(values) or types.is_integer_dtype(values)) and values.nunique() > 10 and values.nunique() >= 0.5 * len(values):
        # Whole numbers with about one row each (13 in 13 rows: megawatt-hours, grams) cannot be classes to learn: every
        # class would be new to the model that predicts it, and no candidate would ever clear the accuracy floor.
        return "regression"
    if types.is_integer_dtype(values) and values.nunique() > MANY_WHOLE and not _like_class_ids(values):
        # Many whole numbers that are no run of ids from 0 or 1 (a chick's weight in grams, 35 to 373): amounts. Read as
        # classes, a growing table brought dozens of new ones per increment and never got a champion.
        return "regression"
    return "classification"


# More distinct whole numbers than this, not numbered like class ids, are amounts to predict.
MANY_WHOLE = 20


def _like_class_ids(values: pd.Series) -> bool:
    """Numbered as classes are: from 0 or 1, with at most as many gaps as values (0-99 for a hundred classes)."""
    low, high = int(values.min()), int(values.max())
    return low in (0, 1) and high - low + 1 <= 2 * values.nunique()
