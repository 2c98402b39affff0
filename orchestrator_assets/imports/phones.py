"""Phone numbers to E.164 a column at a time: phonenumbers' own rules, run as Arrow regex kernels.

``phonenumbers.parse`` + ``is_valid_number`` costs ~200 µs a number in Python, which is over three
minutes for a million-row file. Nearly every number in a real export is one of a few shapes
(``+CC…``, ``00CC…``, a national number with or without its trunk prefix, RU's ``8…``/``7…``), and
for those the library's decision is a handful of regular expressions from its metadata: the
country code, the trunk prefix it strips, the length rule that keeps or undoes the strip, and the
number-type patterns that make a number valid. ``fast_e164`` replays exactly those steps over a
whole column with the metadata's own patterns, and answers only where the answer is a *valid*
number; every cell it leaves empty goes to ``phonenumbers`` itself (``normalise.normalise_phones``),
which also gives the reason a number is refused. ``tests/test_import_normalise.py`` checks that
both agree on thousands of generated numbers in several countries.

One deliberate difference: a leading ``00`` is read as the international prefix in every region,
as it is dialled almost everywhere; phonenumbers knows only RU's ``810`` there and would read
``0049 30 …`` as a (then invalid) Russian number.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, PhoneMetadata
from phonenumbers.tzdata import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX
from phonenumbers.phonenumberutil import PhoneNumberType, is_number_type_geographical

TEXT = pd.StringDtype("pyarrow")
# Python's whitespace, spelled out as characters: pandas runs any pattern with ``\s`` in Python's
# re, per cell, because RE2's ``\s`` is ASCII-only; with the characters themselves Arrow's RE2 runs it.
SPACES = " \t\n\r\f\v\x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Separators people type inside a number; anything else (letters, a second "+") is left to phonenumbers.
SEPARATORS = f"[{SPACES}()\\-./]+"
# ASCII digits only ([0-9], not \d): other scripts' digits go to phonenumbers, which reads them.
_SHAPE = r"\+?[0-9]+"
_MAX_NSN = 17  # phonenumbers._MAX_LENGTH_FOR_NSN
_SPECIAL_TYPES = ("premium_rate", "toll_free", "shared_cost", "voip", "personal_number", "pager", "uan", "voicemail")

# Number kinds as far as validity and time zones need them.
UNKNOWN, SPECIAL, FIXED_LINE, MOBILE, FIXED_OR_MOBILE = range(5)


def extract(series: pd.Series, pattern: str) -> pd.DataFrame:
    """``Series.str.extract`` on Arrow's RE2 (pandas runs it in Python, per cell): one text column
    per named group, NA where the pattern does not match."""
    found = pc.extract_regex(_arrow(series), pattern)
    names = [field.name for field in found.type]
    return pd.DataFrame({name: pd.Series(pc.struct_field(found, name), index=series.index, dtype=TEXT) for name in names})


def _arrow(series: pd.Series) -> pa.Array:
    array = pa.array(series.astype(TEXT))  # a ChunkedArray of the column's own buffers, no copy
    return (array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array).cast(pa.large_string())


def lookup(series: pd.Series, table: dict[str, str]) -> pd.Series:
    """``table[value]`` for each text, NA where absent, as one hash join (``isin``/``map`` with a
    dict convert every key on every call)."""
    keys = _keys(tuple(table))
    positions = pc.index_in(_arrow(series), value_set=keys)
    values = pa.array([table[key] for key in keys.to_pylist()], type=pa.large_string())
    return pd.Series(pc.take(values, positions), index=series.index, dtype=TEXT)


@cache
def _keys(keys: tuple[str, ...]) -> pa.Array:
    return pa.array(keys, type=pa.large_string())


@dataclass(frozen=True)
class _Desc:
    pattern: str | None
    lengths: tuple[int, ...]


@dataclass(frozen=True)
class _Region:
    leading_digits: str | None
    general: _Desc
    special: tuple[_Desc, ...]
    fixed_line: _Desc
    mobile: _Desc
    same_mobile_and_fixed_line: bool

    @property
    def any_special(self) -> str | None:
        """One pattern matching whatever any special type's pattern matches: a single pass rules
        out nearly every number before the types are tried one by one."""
        patterns = [desc.pattern for desc in self.special if desc.pattern is not None]
        return "|".join(f"(?:{pattern})" for pattern in patterns) or None


def _desc(desc) -> _Desc:
    if desc is None:
        return _Desc(None, ())
    return _Desc(desc.national_number_pattern, tuple(desc.possible_length))


@cache
def _region(region: str) -> _Region | None:
    meta = PhoneMetadata.metadata_for_region(region, None)
    if meta is None:
        return None
    return _Region(
        leading_digits=meta.leading_digits,
        general=_desc(meta.general_desc),
        special=tuple(_desc(getattr(meta, name)) for name in _SPECIAL_TYPES),
        fixed_line=_desc(meta.fixed_line),
        mobile=_desc(meta.mobile),
        same_mobile_and_fixed_line=bool(meta.same_mobile_and_fixed_line_pattern),
    )


def _matches(nsn: pd.Series, desc: _Desc) -> np.ndarray:
    """phonenumbers' ``_is_number_matching_desc``: a possible length and a full pattern match."""
    if desc.pattern is None:
        return np.zeros(len(nsn), dtype=bool)
    hit = nsn.str.fullmatch(desc.pattern).to_numpy(dtype=bool, na_value=False)
    if desc.lengths:
        hit &= nsn.str.len().isin(desc.lengths).to_numpy(dtype=bool)
    return hit


def _kind(nsn: pd.Series, region: _Region) -> np.ndarray:
    """phonenumbers' ``_number_type_helper``, reduced to the kinds we need, for a column."""
    general = _matches(nsn, region.general)
    special = np.zeros(len(nsn), dtype=bool)
    maybe = _matches(nsn, _Desc(region.any_special, ())) & general
    if maybe.any():
        for desc in region.special:
            special[maybe] |= _matches(nsn[maybe], desc)
    fixed = _matches(nsn, region.fixed_line)
    mobile = fixed.copy() if region.same_mobile_and_fixed_line else _matches(nsn, region.mobile)
    return np.select(
        [~general, special, fixed & mobile, fixed, mobile],
        [UNKNOWN, SPECIAL, FIXED_OR_MOBILE, FIXED_LINE, MOBILE],
        default=UNKNOWN,
    )


def number_kinds(cc: str, nsn: pd.Series) -> np.ndarray:
    """Kind of each national significant number under country code ``cc``.

    A code shared by several regions (+7 RU/KZ, +1 NANP) is resolved as phonenumbers'
    ``region_code_for_number`` does: the first region whose leading digits match, or, for a
    region without them, under which the number has a type.
    """
    kinds = np.full(len(nsn), UNKNOWN)
    for _, positions, found in _claims(cc, nsn):
        kinds[positions] = found
    return kinds


def _claims(cc: str, nsn: pd.Series) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(region, positions in ``nsn``, their kinds) for each region of ``cc`` that claims numbers,
    in phonenumbers' order (``number_kinds``); a number no region claims is in none."""
    open_ = np.ones(len(nsn), dtype=bool)
    for code in COUNTRY_CODE_TO_REGION_CODE.get(int(cc), ()):
        region = _region(code)
        if region is None or not open_.any():
            continue
        part = nsn[open_]
        if region.leading_digits is not None:
            claimed = part.str.match(region.leading_digits).to_numpy(dtype=bool, na_value=False)
            found = np.full(len(part), UNKNOWN)
            if claimed.any():
                found[claimed] = _kind(part[claimed], region)
        else:
            found = _kind(part, region)
            claimed = found != UNKNOWN
        positions = np.flatnonzero(open_)[claimed]
        open_[positions] = False
        yield code, positions, found[claimed]


def countries(e164: pd.Series) -> pd.Series:
    """phonenumbers' ``region_code_for_number`` of each E.164 number (``RU``), NA where it names
    none, for a column: a code of one region is that region, a shared one (+7, +1) is resolved
    by ``_claims``. The import derives ``contacts.phone_country`` with it."""
    digits = e164.astype(TEXT).str.slice(1)
    cc, nsn = _split_country_code(digits)
    pieces = []
    for code in cc.dropna().unique():
        rows = (cc == code).to_numpy(dtype=bool, na_value=False)
        regions = COUNTRY_CODE_TO_REGION_CODE.get(int(code), ())
        index = digits.index[rows]
        if len(regions) == 1:
            pieces.append(pd.Series(regions[0], index=index, dtype=TEXT))
            continue
        for region, positions, _ in _claims(code, nsn[rows]):
            pieces.append(pd.Series(region, index=index[positions], dtype=TEXT))
    regions = _assemble(e164.index, pieces)
    return regions.where(regions != "001")


def geographical(cc: str, kinds: np.ndarray) -> np.ndarray:
    """phonenumbers' ``is_number_type_geographical``: where a number's prefix says where it rings."""
    geo = (kinds == FIXED_LINE) | (kinds == FIXED_OR_MOBILE)
    return geo | ((kinds == MOBILE) & is_number_type_geographical(PhoneNumberType.MOBILE, int(cc)))


@dataclass(frozen=True)
class _Parsing:
    """What ``parse`` needs of one region's metadata."""

    country_code: str
    trunk_prefix: str | None  # national_prefix_for_parsing, when it needs no transform rule
    has_transform: bool
    general: _Desc
    local_lengths: tuple[int, ...]


@cache
def _parsing(region: str) -> _Parsing | None:
    meta = PhoneMetadata.metadata_for_region(region, None)
    if meta is None:
        return None
    return _Parsing(
        country_code=str(meta.country_code),
        trunk_prefix=meta.national_prefix_for_parsing or None,
        has_transform=bool(meta.national_prefix_transform_rule),
        general=_desc(meta.general_desc),
        local_lengths=tuple(meta.general_desc.possible_length_local_only),
    )


def _viable(numbers: pd.Series, desc: _Desc) -> np.ndarray:
    return numbers.str.fullmatch(desc.pattern).to_numpy(dtype=bool, na_value=False) if desc.pattern else np.zeros(len(numbers), bool)


def _length_accepts(numbers: pd.Series, meta: _Parsing) -> np.ndarray:
    """``_test_number_length`` is neither TOO_SHORT, LOCAL_ONLY nor INVALID_LENGTH (TOO_LONG passes)."""
    size = numbers.str.len().to_numpy(dtype=np.int64, na_value=0)
    lengths = sorted(meta.general.lengths)
    possible = np.isin(size, lengths) | (size > lengths[-1])
    return possible & ~np.isin(size, meta.local_lengths)


def _strip_trunk(numbers: pd.Series, meta: _Parsing, *, check_length: bool = True) -> tuple[pd.Series, np.ndarray]:
    """``_maybe_strip_national_prefix_carrier_code``, and with ``check_length`` the length rule of
    ``parse`` that undoes a strip leaving too short or impossible a number.

    Returns the numbers and a mask of those this path cannot settle (a transform rule applies).
    """
    undecided = np.zeros(len(numbers), dtype=bool)
    if meta.trunk_prefix is None or numbers.empty:
        return numbers, undecided
    rest = extract(numbers, f"^(?:{meta.trunk_prefix})(?P<rest>.*)$")["rest"]
    matched = rest.notna().to_numpy()
    if meta.has_transform:
        return numbers, matched
    rest = rest.fillna("").astype(TEXT)
    keep_original = _viable(numbers, meta.general) & ~_viable(rest, meta.general)
    strip = matched & ~keep_original
    if check_length:
        strip &= _length_accepts(rest, meta)
    return numbers.where(~strip, rest), undecided


@cache
def _country_code_pattern() -> str:
    codes = sorted((str(code) for code in COUNTRY_CODE_TO_REGION_CODE), key=len, reverse=True)
    return f"^(?P<cc>{'|'.join(codes)})(?P<nsn>.*)$"


def _split_country_code(digits: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The 1–3 digit country calling code each number starts with (codes are prefix-free) and the
    rest; NA where no code is known."""
    parts = extract(digits, _country_code_pattern())
    return parts["cc"], parts["nsn"]


def _assemble(index: pd.Index, pieces: list[pd.Series]) -> pd.Series:
    """Text column over ``index`` from pieces covering some of its labels; NA elsewhere (one
    concat instead of an Arrow setitem per piece, which pandas does row by row)."""
    if not pieces:
        return pd.Series(pd.NA, index=index, dtype=TEXT)
    return pd.concat(pieces).astype(TEXT).reindex(index)


def _main_region(code: str) -> _Parsing | None:
    regions = COUNTRY_CODE_TO_REGION_CODE.get(int(code), ())
    return _parsing(regions[0]) if regions else None


def fast_e164(text: pd.Series, region: str) -> pd.Series:
    """E.164 of each cell where it is a valid number of a common shape; NA where undecided.

    ``text`` is stripped phone text without extension; ``region`` is the tenant's default region.
    """
    squeezed = text.astype(TEXT).str.replace(SEPARATORS, "", regex=True)
    shaped = squeezed.str.fullmatch(_SHAPE).to_numpy(dtype=bool, na_value=False)
    plus = squeezed.str.startswith("+").to_numpy(dtype=bool, na_value=False)
    # "00" then a country code (codes never start with 0, phonenumbers' rule after an IDD).
    idd = ~plus & squeezed.str.match(r"00[1-9]").to_numpy(dtype=bool, na_value=False)
    international = shaped & (plus | idd)
    digits = squeezed[international].str.replace(r"^(?:\+|00)", "", regex=True)
    cc, nsn = _split_country_code(digits[digits.str.len() > 2])
    # (country code, significant digits, the metadata parse reads them with) per group of rows
    groups = [(code, nsn[cc == code], _main_region(code)) for code in cc.dropna().unique()]
    home = _parsing(region)
    national = squeezed[shaped & ~international]
    if home is not None and not national.empty:
        groups.append((home.country_code, *_national(national, home)))

    pieces = []
    for code, numbers, meta in groups:
        if meta is None:  # non-geographic codes (+800, +882 …) are rare: phonenumbers decides
            continue
        numbers, undecided = _strip_trunk(numbers, meta)
        size = numbers.str.len().to_numpy(dtype=np.int64)
        valid = (number_kinds(code, numbers) != UNKNOWN) & ~undecided & (size >= 2) & (size <= _MAX_NSN)
        pieces.append("+" + code + numbers[valid])
    return _assemble(text.index, pieces)


def _national(numbers: pd.Series, home: _Parsing) -> tuple[pd.Series, _Parsing]:
    """Significant digits of numbers written without ``+``/``00`` in the home region.

    phonenumbers first tries the home country code at the start (RU's ``7916…``): it is taken when
    the whole digit string does not fit the region's pattern but the rest, trunk prefix stripped,
    does, or when the whole is too long. The trunk prefix is then stripped like any number's.
    """
    starts = numbers.str.startswith(home.country_code).to_numpy(dtype=bool)
    if not starts.any():
        return numbers, home
    rest, undecided = _strip_trunk(numbers.str.slice(len(home.country_code)), home, check_length=False)
    too_long = numbers.str.len().to_numpy(dtype=np.int64) > max(home.general.lengths)
    take = starts & ((~_viable(numbers, home.general) & _viable(rest, home.general)) | too_long)
    numbers = numbers.where(~take, rest)
    return numbers[~(starts & undecided)], home


@cache
def _zone_by_prefix() -> dict[str, str]:
    """phonenumbers' time-zone prefixes → the zone where there is exactly one, ``""`` where several."""
    return {prefix: zones[0] if len(zones) == 1 else "" for prefix, zones in TIMEZONE_DATA.items()}


def single_time_zones(e164: pd.Series) -> pd.Series:
    """The one time zone phonenumbers gives each valid E.164 number; NA where it gives several or none.

    As ``phonenumbers.timezone.time_zones_for_number``: a geographical number (fixed line, or
    mobile where mobiles have area codes) by its longest known prefix, any other number by its
    country code (RU mobiles, spanning eleven zones, get none).
    """
    zones_of = _zone_by_prefix()
    digits = e164.astype(TEXT).str.slice(1)
    cc, nsn = _split_country_code(digits)
    pieces = []
    for code in cc.dropna().unique():
        rows = (cc == code).to_numpy(dtype=bool, na_value=False)
        geo = geographical(code, number_kinds(code, nsn[rows]))
        pieces.append(pd.Series(zones_of.get(code, ""), index=digits[rows].index[~geo], dtype=TEXT))
        looked_up = digits[rows][geo]
        for size in range(TIMEZONE_LONGEST_PREFIX, 0, -1):
            zone = lookup(looked_up.str.slice(0, size), zones_of)
            found = zone.notna().to_numpy(dtype=bool)
            pieces.append(zone[found])
            looked_up = looked_up[~found]
    zones = _assemble(e164.index, pieces)
    return zones.where(zones != "")
