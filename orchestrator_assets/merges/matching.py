"""Which of a tenant's contacts may be one person: pairs with a score 0-100 and a reason in words.

Evidence comes from three places, each found by blocking rather than by comparing every pair
(100k contacts are 5·10⁹ pairs):

- **Phones** one digit apart (a typo: same length, one digit changed, or two neighbours swapped)
  or equal. Blocked by the *deletion neighbourhood*: a number's keys are the number with one digit
  left out, and two numbers one substitution or one adjacent swap apart always share a key, while
  unrelated numbers almost never do.
- **E-mails** equal once normalised (case; ``+tags`` everywhere; dots in the local part for
  gmail.com/googlemail.com, which ignore them) or one edit apart. Blocked the same way: the
  normalised address and its one-deletion variants.
- **Names** (first + last, any order) by rapidfuzz's ``token_sort_ratio``. An address match is
  the strong evidence; names raise or lower it (a one-digit-apart phone of someone with a
  different name is a neighbour's number, not a typo). A name alone says little: at 100k contacts
  namesakes make tens of thousands of pairs. So a name is a candidate on its own only within one
  city, found by a *sorted neighbourhood* (contacts sorted by city and by the name's words in
  order, each compared with its next ``NAME_WINDOW``), so "Ivan Petrov" and "Petrov Ivan" of one
  city meet, and it scores low: it merges only at a threshold an operator chose on purpose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import combinations

from rapidfuzz import fuzz
from rapidfuzz.distance import Levenshtein

MIN_SCORE = 50  # pairs scoring less are not worth an operator's look
NAME_MATCH = 90  # token_sort_ratio at which two names count as the same
NAME_DIFFERENT = 60  # ... and below which they count as different people
NAME_ONLY_WEIGHT = 0.6  # a name alone: at most 60
NAME_WINDOW = 5  # sorted-neighbourhood window of name-only matching
MAX_BLOCK = 200  # a blocking key shared by more contacts is a placeholder (000…), not a person
GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})
_NOT_DIGITS = re.compile(r"\D")

# Evidence from addresses: base score and its words.
SAME_PHONE = (90, "same phone")
PHONE_TYPO = (70, "phone one digit apart")
PHONE_SWAP = (70, "phone digits swapped")
SAME_EMAIL = (95, "same e-mail")
SAME_EMAIL_NORMALISED = (90, "same e-mail without dots/+tag")
EMAIL_TYPO = (70, "e-mail one edit apart")


@dataclass(frozen=True)
class Person:
    """What matching reads of a contact (plaintext, in memory only)."""

    id: int
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None
    city: str | None = None


@dataclass(frozen=True)
class Candidate:
    contact_id: int  # the smaller id: the older contact, which survives a merge by score
    other_id: int
    score: int
    reason: str


def normalise_email(value: str) -> str:
    """The mailbox an address reaches: lower case, no ``+tag``, no dots in a Gmail local part."""
    local, _, domain = value.strip().lower().rpartition("@")
    local = local.split("+", 1)[0]
    if domain in GMAIL_DOMAINS:
        local, domain = local.replace(".", ""), "gmail.com"
    return f"{local}@{domain}"


def phone_digits(value: str) -> str:
    return _NOT_DIGITS.sub("", value)


def _deletion_neighbour_pairs(ids: list[int], texts: list[str]) -> set[tuple[int, int]]:
    """Pairs of ids whose texts are equal or share a one-character deletion (the deletion
    neighbourhood: one substitution, insertion, deletion or adjacent swap apart), ignoring keys
    shared by more than ``MAX_BLOCK`` ids."""
    blocks: dict[str, list[int]] = {}
    for person_id, text in zip(ids, texts, strict=True):
        for key in {text, *[text[:i] + text[i + 1 :] for i in range(len(text))]}:
            blocks.setdefault(key, []).append(person_id)
    pairs: set[tuple[int, int]] = set()
    for members in blocks.values():
        if 1 < len(members) <= MAX_BLOCK:
            pairs.update(combinations(sorted(members), 2))
    return pairs


def phone_evidence(a: str, b: str) -> tuple[int, str] | None:
    if a == b:
        return SAME_PHONE
    if len(a) != len(b):
        return None
    diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    if len(diff) == 1:
        return PHONE_TYPO
    if len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]:
        return PHONE_SWAP
    return None


def email_evidence(a: str, b: str) -> tuple[int, str] | None:
    if a.strip().lower() == b.strip().lower():
        return SAME_EMAIL
    na, nb = normalise_email(a), normalise_email(b)
    if na == nb:
        return SAME_EMAIL_NORMALISED
    if Levenshtein.distance(na, nb, score_cutoff=1) <= 1:
        return EMAIL_TYPO
    return None


def full_name(person: Person) -> str:
    return " ".join(part.strip().lower() for part in (person.first_name, person.last_name) if part and part.strip())


def _city(person: Person) -> str:
    return (person.city or "").strip().lower()


def _name_pairs(people: list[Person]) -> set[tuple[int, int]]:
    """Pairs of one city whose names match (token_sort_ratio ≥ NAME_MATCH), by sorted neighbourhood."""
    keyed = sorted((_city(p), " ".join(sorted(full_name(p).split())), p.id) for p in people if _city(p) and full_name(p))
    pairs: set[tuple[int, int]] = set()
    for i, (city, name, person_id) in enumerate(keyed):
        for other_city, other_name, other_id in keyed[i + 1 : i + 1 + NAME_WINDOW]:
            if other_city != city:
                break
            if fuzz.ratio(name, other_name, score_cutoff=NAME_MATCH):  # of the sorted words: token_sort_ratio
                pairs.add((min(person_id, other_id), max(person_id, other_id)))
    return pairs


def score_pair(a: Person, b: Person) -> tuple[int, str] | None:
    """The pair's score and reason, or None when nothing says they are one person."""
    evidence = []
    if a.phone and b.phone:
        evidence.append(phone_evidence(phone_digits(a.phone), phone_digits(b.phone)))
    if a.email and b.email:
        evidence.append(email_evidence(a.email, b.email))
    evidence = sorted((e for e in evidence if e), reverse=True)
    name_a, name_b = full_name(a), full_name(b)
    names = round(fuzz.token_sort_ratio(name_a, name_b)) if name_a and name_b else None
    if not evidence:
        if names is None or names < NAME_MATCH or not _city(a) or _city(a) != _city(b):
            return None
        return round(names * NAME_ONLY_WEIGHT), f"names match ({names}) in one city, nothing else"
    score = evidence[0][0] + 5 * (len(evidence) - 1)
    reasons = [reason for _, reason in evidence]
    if names is not None and names >= NAME_MATCH:
        score, reasons = score + 10, [*reasons, f"names match ({names})"]
    elif names is not None and names < NAME_DIFFERENT:
        score, reasons = score - 30, [*reasons, f"names differ ({names})"]
    return min(score, 100), "; ".join(reasons)


def find_candidates(people: list[Person], min_score: int = MIN_SCORE) -> list[Candidate]:
    """Pairs scoring at least ``min_score``, best first (ties by ids)."""
    by_id = {person.id: person for person in people}
    phones = [(p.id, digits) for p in people if p.phone and len(digits := phone_digits(p.phone)) >= 7]
    emails = [(p.id, normalise_email(p.email)) for p in people if p.email]
    pairs = set()
    for found in (phones, emails):
        if found:
            pairs |= _deletion_neighbour_pairs(*map(list, zip(*found, strict=True)))
    pairs |= _name_pairs(people)
    found = []
    for a, b in pairs:
        scored = score_pair(by_id[a], by_id[b])
        if scored is not None and scored[0] >= min_score:
            found.append(Candidate(a, b, *scored))
    return sorted(found, key=lambda c: (-c.score, c.contact_id, c.other_id))
